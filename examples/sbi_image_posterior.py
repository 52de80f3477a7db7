"""Amortized posterior of handwritten digits from blurred (or masked) noisy images.

Neural posterior estimation with a conditional multiscale Glow (``hybridflow.networks.Glow``,
``"invert"`` mode: the training step keeps no activation of the flow) and a convolutional
summary network that turns each observation into a feature map; the summary trains jointly
through the flow's reconstructing backward. The task is
:class:`hybridflow.sbi.DigitsInverseProblem`: 8x8 digits from scikit-learn's bundled data set,
a Gaussian blur (``hybridflow.operators.Convolution``) or a random mask
(``hybridflow.operators.Mask``), plus noise.

The script writes, to ``--out``:

* ``posterior_mean.png`` and ``posterior_std.png``: for held-out digits, the truth, the
  observation, and the posterior mean / standard deviation of the flow's samples;
* ``sbc_ranks.png``: the histogram of simulation-based calibration ranks (all pixels);

and prints the simulation-based calibration (SBC) figures: the Bonferroni-corrected smallest
Kolmogorov-Smirnov p-value of the ranks, and the largest gap of the expected coverage.

Run: ``python examples/sbi_image_posterior.py --out sbi_digits`` (a few minutes on a CPU);
``--simulations 1000 --epochs 2`` for a quick look.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hybridflow.distributions import ConditionalFlow
from hybridflow.networks import Glow
from hybridflow.sbi import (
    DigitsInverseProblem,
    DigitsKind,
    NPEConfig,
    NPETrainer,
    atomic_write,
    expected_coverage,
    sbc,
    simulate,
)
from hybridflow.summary import CNN

__all__ = ["build_flow", "main", "save_figure"]

_TITLES = ["truth", "observation"]


def build_flow(
    levels: int, depth: int, hidden: int, summary_channels: int, seed: int
) -> ConditionalFlow:
    """A conditional Glow over ``(1, 8, 8)`` digits with a CNN summary giving a feature map."""
    transform = Glow(
        1,
        levels=levels,
        depth=depth,
        hidden=hidden,
        cond_features=summary_channels,
        mode="invert",
        seed=seed,
    )
    summary = CNN(1, summary_channels, spatial_dims=2, hidden=32, depth=3, output="field")
    return ConditionalFlow(transform, summary, event_shape=(1, 8, 8), observation_shape=(1, 8, 8))


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path) -> Path:
    """Render ``figure`` to PNG and write it atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(figure)
    return atomic_write(path, lambda file: file.write(buffer.getvalue()))


def _grid(rows: list[list[Tensor]], titles: list[str], path: Path, colorbar: bool) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(
        len(rows), len(titles), figsize=(2.0 * len(titles), 2.0 * len(rows)), squeeze=False
    )
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r][c]
            shown = ax.imshow(image.squeeze(0).cpu().numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
            if colorbar and c == len(images) - 1:
                figure.colorbar(shown, ax=ax, fraction=0.046)
    return save_figure(figure, path)


def main(
    out: str | Path = "sbi_digits",
    kind: DigitsKind = "deblur",
    simulations: int = 20_000,
    epochs: int = 30,
    levels: int = 2,
    depth: int = 4,
    hidden: int = 64,
    summary_channels: int = 8,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    observations: int = 6,
    posterior_samples: int = 256,
    sbc_pairs: int = 200,
    sbc_samples: int = 100,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train, then write the figures and compute the calibration figures.

    Returns:
        ``{"history", "files", "sbc_min_pvalue", "coverage_max_error", "mean_rmse"}``: the
        training history, the PNG paths, the SBC p-value (Bonferroni), the expected coverage's
        largest gap, and the root-mean-square error of the posterior mean against the truth
        over the shown observations.
    """
    out = Path(out)
    torch.manual_seed(seed)
    task = DigitsInverseProblem(kind)
    data = simulate(task, simulations, seed=seed)
    flow = build_flow(levels, depth, hidden, summary_channels, seed)
    config = NPEConfig(
        max_epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        schedule="cosine",
        patience=None,
        seed=seed,
        progress=verbose,
    )
    history = NPETrainer(flow, config).fit(data.theta, data.x)
    flow.eval()
    rows_mean, rows_std, errors = [], [], []
    with torch.no_grad():
        for index in range(observations):
            truth, x_o = task.observation(index)
            samples = flow(x_o).sample((posterior_samples,))
            mean, std = samples.mean(0), samples.std(0)
            errors.append(float((mean - truth).square().mean()))
            rows_mean.append([truth, x_o, mean])
            rows_std.append([truth, x_o, std])
    files = [
        _grid(rows_mean, [*_TITLES, "posterior mean"], out / "posterior_mean.png", False),
        _grid(rows_std, [*_TITLES, "posterior std"], out / "posterior_std.png", True),
    ]
    sbc_data = simulate(task, sbc_pairs, seed=seed + 1)
    calibration = sbc(flow, sbc_data.theta, sbc_data.x, sbc_samples)
    coverage = expected_coverage(flow, sbc_data.theta, sbc_data.x, sbc_samples)
    figure, ax = _pyplot().subplots(figsize=(4, 3))
    ax.hist(calibration.ranks.flatten().numpy(), bins=20, range=(0, sbc_samples + 1))
    ax.set_xlabel(f"SBC rank (of {sbc_samples} samples), all pixels")
    ax.set_ylabel("count")
    files.append(save_figure(figure, out / "sbc_ranks.png"))
    mean_rmse = (sum(errors) / len(errors)) ** 0.5
    if verbose:
        print(f"validation loss per epoch: {[round(v, 2) for v in history.validation_loss]}")
        print(f"RMSE of the posterior mean against the truth: {mean_rmse:.4f}")
        print(
            f"SBC over {sbc_pairs} pairs x {sbc_samples} samples: smallest KS p-value "
            f"(Bonferroni over {calibration.ranks.shape[1]} pixels) {calibration.min_pvalue:.3g}"
        )
        print(f"expected coverage, largest gap to the nominal level: {coverage.max_error:.3f}")
        print("wrote " + ", ".join(str(f) for f in files))
    return {
        "history": history,
        "files": files,
        "sbc_min_pvalue": calibration.min_pvalue,
        "coverage_max_error": coverage.max_error,
        "mean_rmse": mean_rmse,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="sbi_digits", help="output folder")
    parser.add_argument("--kind", choices=["deblur", "inpaint"], default="deblur")
    parser.add_argument("--simulations", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--depth", type=int, default=4, help="flow steps per scale")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(
        args.out,
        args.kind,
        args.simulations,
        args.epochs,
        depth=args.depth,
        hidden=args.hidden,
        seed=args.seed,
    )
