"""Figures of calibration diagnostics: SBC rank histograms and expected-coverage curves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from torch import Tensor

__all__ = ["coverage_figure", "sbc_rank_figure"]


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure without pyplot (no global state, no GUI backend)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - matplotlib is an optional dependency
        raise ImportError(
            "the diagnostic figures need matplotlib (pip install matplotlib)"
        ) from error
    return Figure(figsize=(width, height), layout="constrained")


def sbc_rank_figure(
    ranks: Tensor,
    num_posterior_samples: int,
    *,
    bins: int | None = None,
    names: Sequence[str] | None = None,
) -> Any:
    r"""Histograms of SBC ranks, one panel per parameter entry, with the band that 99% of
    the bins of a uniform histogram fall in.

    Uniform ranks mean a calibrated posterior; a U shape an overconfident one, a hump an
    underconfident one, a slope a bias (Talts et al. 2018). The grey band is the central 99%
    interval of a bin's count under uniformity, :math:`\mathrm{Binomial}(N, 1/\text{bins})`.

    Args:
        ranks: ``(N, d)`` ranks in ``0..L`` (:func:`~hybridflow.sbi.sbc_ranks`, or
            ``sbc(...).ranks``).
        num_posterior_samples: :math:`L`, the number of posterior samples behind each rank.
        bins: histogram bins (default: about ``N / 20``, at most 20, dividing ``L + 1``
            ranks evenly when possible).
        names: a title per entry (default ``theta[i]``).

    Returns:
        A :class:`matplotlib.figure.Figure`; ``fig.savefig("sbc.png")`` writes it.

    References:
        Talts et al., "Validating Bayesian inference algorithms with simulation-based
        calibration", 2018.
    """
    values = np.asarray(ranks.detach().cpu() if isinstance(ranks, Tensor) else ranks)
    if values.ndim != 2 or values.shape[0] < 1:
        raise ValueError(f"sbc_rank_figure: ranks must be (N, d), got shape {values.shape}")
    n, d = values.shape
    bins = bins if bins is not None else int(max(2, min(20, n // 20)))
    names = list(names) if names is not None else [f"theta[{i}]" for i in range(d)]
    figure = _figure(2.6 * d, 2.4)
    axes = figure.subplots(1, d, squeeze=False)[0]
    edges = np.linspace(-0.5, num_posterior_samples + 0.5, bins + 1)
    low, high = stats.binom.ppf([0.005, 0.995], n, 1 / bins)
    for i, ax in enumerate(axes):
        ax.axhspan(low, high, color="0.85", zorder=0)
        ax.axhline(n / bins, color="0.5", lw=1, zorder=1)
        ax.hist(values[:, i], bins=edges, color="tab:blue", zorder=2)
        ax.set_title(names[i])
        ax.set_xlabel(f"rank (of {num_posterior_samples} samples)")
        ax.set_yticks([])
    axes[0].set_ylabel(f"count (N = {n})")
    figure.suptitle("SBC ranks: uniform if calibrated (band: 99% of uniform bins)")
    return figure


def coverage_figure(levels: Tensor, coverage: Tensor | dict[str, Tensor], title: str = "") -> Any:
    r"""Expected coverage against the credibility level: the diagonal for a calibrated
    posterior, below it for an overconfident one, above for a conservative one.

    Args:
        levels: credibility levels :math:`\alpha`, ``(k,)``.
        coverage: the coverage at each level ``(k,)``, or several curves by label (e.g.
            ``{"HPD": expected_coverage(...).coverage, "TARP": tarp(...).coverage}``).
        title: the figure's title.

    Returns:
        A :class:`matplotlib.figure.Figure`.

    References:
        Hermans et al., "A trust crisis in simulation-based inference?", 2022; Lemos et al.,
        "Sampling-based accuracy testing of posterior estimators", 2023.
    """
    curves = coverage if isinstance(coverage, dict) else {"expected coverage": coverage}
    x = np.asarray(levels.detach().cpu() if isinstance(levels, Tensor) else levels)
    figure = _figure(3.4, 3.2)
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="calibrated")
    for label, values in curves.items():
        y = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values)
        if y.shape != x.shape:
            raise ValueError(
                f"coverage_figure: curve {label!r} has shape {y.shape}, the levels {x.shape}"
            )
        ax.plot(x, y, marker="o", ms=3, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("credibility level")
    ax.set_ylabel("expected coverage")
    ax.set_title(title or "expected coverage")
    ax.legend(loc="upper left", fontsize="small")
    return figure
