"""Calibration of amortized posteriors: simulation-based calibration and expected coverage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

if TYPE_CHECKING:
    from hybridflow.sbi.metrics.tarp import TARPResult

__all__ = ["CoverageResult", "SBCResult", "expected_coverage", "sbc", "sbc_ranks"]


def _pairs(theta: Tensor, x: Tensor | Sequence[Tensor], where: str) -> tuple[Tensor, ...]:
    parts = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    if not isinstance(theta, Tensor) or theta.dim() < 2 or theta.shape[0] == 0:
        raise ValueError(f"{where}: theta must be a non-empty batch (N, ...)")
    for part in parts:
        if not isinstance(part, Tensor) or part.shape[0] != theta.shape[0]:
            raise ValueError(f"{where}: each observation tensor needs {theta.shape[0]} rows")
    return parts


def _posterior_draws(
    flow: nn.Module, parts: tuple[Tensor, ...], num: int
) -> tuple[Any, Tensor, Tensor]:
    """The distribution for a batch, ``num`` samples ``(num, b, ...)`` and their log densities."""
    dist = flow(*parts)
    if hasattr(dist, "sample_and_log_prob"):
        samples, log_prob = dist.sample_and_log_prob((num,))
    else:
        samples = dist.sample((num,))
        log_prob = dist.log_prob(samples)
    return dist, samples, log_prob


def sbc_ranks(
    flow: nn.Module,
    theta: Tensor,
    x: Tensor | Sequence[Tensor],
    num_posterior_samples: int = 100,
    batch_size: int = 64,
) -> Tensor:
    r"""Simulation-based calibration ranks: for each pair :math:`(\theta^*, x)` drawn from the
    joint, the number of posterior samples :math:`\theta_l \sim q(\cdot \mid x)`,
    :math:`l = 1..L`, below :math:`\theta^*`, per entry.

    If :math:`q` is the true posterior the ranks are uniform on :math:`\{0, \dots, L\}`
    (Talts et al. 2018); a U-shaped histogram means an overconfident :math:`q`, a hump an
    underconfident one, a slope a bias.

    Args:
        flow: ``flow(*x_parts)`` returns a distribution with ``batch_shape == (B,)``.
        theta: true parameters ``(N, *event)``, drawn from the prior.
        x: their simulations ``(N, ...)`` (or a tuple of tensors).
        num_posterior_samples: :math:`L`.
        batch_size: pairs per call of the flow.

    Returns:
        Ranks ``(N, d)`` (int64), ``d`` the number of entries of a parameter.

    References:
        Talts et al., "Validating Bayesian inference algorithms with simulation-based
        calibration", 2018.
    """
    parts = _pairs(theta, x, "sbc_ranks")
    ranks = []
    with torch.no_grad():
        for start in range(0, theta.shape[0], batch_size):
            stop = start + batch_size
            truth = theta[start:stop]
            batch = tuple(p[start:stop] for p in parts)
            samples = flow(*batch).sample((num_posterior_samples,))
            below = samples.to(truth.device) < truth.unsqueeze(0)
            ranks.append(below.reshape(num_posterior_samples, truth.shape[0], -1).sum(0))
    return torch.cat(ranks).cpu()


class SBCResult(NamedTuple):
    """Simulation-based calibration of a posterior approximation.

    Attributes:
        ranks: ``(N, d)`` ranks in ``0..L`` (:func:`sbc_ranks`).
        ks_pvalues: ``(d,)`` p-values of a Kolmogorov-Smirnov test of uniformity per entry.
        min_pvalue: the smallest p-value times ``d`` (Bonferroni), capped at 1: below 0.05
            the ranks are not uniform at the 5% level.
    """

    ranks: Tensor
    ks_pvalues: Tensor
    min_pvalue: float


def sbc(
    flow: nn.Module,
    theta: Tensor,
    x: Tensor | Sequence[Tensor],
    num_posterior_samples: int = 100,
    batch_size: int = 64,
    seed: int = 0,
) -> SBCResult:
    """Ranks (:func:`sbc_ranks`) and their uniformity tests.

    The discrete ranks :math:`r \\in \\{0..L\\}` are spread to :math:`(r + u) / (L + 1)`,
    :math:`u \\sim U(0, 1)` (seeded), which is uniform on (0, 1) exactly when the ranks are
    uniform; a Kolmogorov-Smirnov test then gives one p-value per entry.
    """
    ranks = sbc_ranks(flow, theta, x, num_posterior_samples, batch_size)
    rng = np.random.default_rng(seed)
    spread = (ranks.numpy() + rng.random(ranks.shape)) / (num_posterior_samples + 1)
    pvalues = torch.tensor([stats.kstest(column, "uniform").pvalue for column in spread.T])
    return SBCResult(ranks, pvalues, float(min(1.0, float(pvalues.min()) * len(pvalues))))


def _largest_coverage_gap(result: CoverageResult | TARPResult) -> float:
    """The largest :math:`|\\text{coverage} - \\alpha|`."""
    return float((result.coverage - result.levels).abs().max())


coverage_max_error = property(_largest_coverage_gap)
"""The ``max_error`` property of the coverage results (:class:`CoverageResult`,
:class:`~hybridflow.sbi.metrics.tarp.TARPResult`): the largest
:math:`|\\text{coverage} - \\alpha|`."""


class CoverageResult(NamedTuple):
    """Expected coverage of highest-density credible regions.

    Attributes:
        levels: credibility levels :math:`\\alpha`, ``(k,)``.
        coverage: share of true parameters inside the level-:math:`\\alpha` region, ``(k,)``;
            equal to ``levels`` for a calibrated posterior, below for an overconfident one.
        max_error (float): the largest :math:`|\\text{coverage} - \\alpha|` (a property).
    """

    levels: Tensor
    coverage: Tensor

    max_error = coverage_max_error


def expected_coverage(
    flow: nn.Module,
    theta: Tensor,
    x: Tensor | Sequence[Tensor],
    num_posterior_samples: int = 100,
    levels: Sequence[float] | Tensor | None = None,
    batch_size: int = 64,
) -> CoverageResult:
    r"""Expected coverage of the highest-density regions of :math:`q(\theta \mid x)`.

    For each pair, the share :math:`f` of posterior samples with a higher density than the
    true parameter, :math:`f = \frac1L \sum_l 1[q(\theta_l \mid x) > q(\theta^* \mid x)]`,
    estimates the mass of the smallest highest-density region that contains
    :math:`\theta^*`; :math:`\theta^*` lies in the level-:math:`\alpha` region when
    :math:`f < \alpha`. The coverage at :math:`\alpha` is the share of pairs for which it does.

    Args:
        flow: ``flow(*x_parts)`` returns a distribution with ``batch_shape == (B,)``.
        theta: true parameters ``(N, *event)`` from the prior.
        x: their simulations.
        num_posterior_samples: :math:`L`.
        levels: credibility levels in (0, 1); 0.05, 0.10, ..., 0.95 by default.
        batch_size: pairs per call of the flow.

    References:
        Hermans et al., "A trust crisis in simulation-based inference? Your posterior
        approximations can be unfaithful", 2022.
    """
    parts = _pairs(theta, x, "expected_coverage")
    alphas = torch.arange(1, 20, dtype=torch.float64) / 20 if levels is None else levels
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    if alphas.dim() != 1 or ((alphas <= 0) | (alphas >= 1)).any():
        raise ValueError(f"expected_coverage: levels must lie in (0, 1), got {alphas.tolist()}")
    shares = []
    with torch.no_grad():
        for start in range(0, theta.shape[0], batch_size):
            stop = start + batch_size
            truth = theta[start:stop]
            dist, _, log_prob = _posterior_draws(
                flow, tuple(p[start:stop] for p in parts), num_posterior_samples
            )
            log_true = dist.log_prob(truth.to(log_prob.device))
            shares.append((log_prob > log_true.unsqueeze(0)).to(torch.float64).mean(0).cpu())
    share = torch.cat(shares)
    coverage = (share.unsqueeze(0) < alphas.unsqueeze(1)).to(torch.float64).mean(1)
    return CoverageResult(alphas, coverage)
