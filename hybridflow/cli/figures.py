"""Figures of the command line: posterior samples, mean and spread, and training curves."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hybridflow.io import pyplot, save_figure
from hybridflow.sbi import NPEHistory

__all__ = ["image_posterior", "training_curve", "vector_posterior"]


def _image(
    ax: Any, image: Tensor, cmap: str = "gray", low: float | None = None, high: float | None = None
) -> Any:
    """Show ``(C, H, W)`` (C = 1 or 3) without ticks; returns the image artist."""
    shown = image.detach().cpu().float()
    if shown.shape[0] == 1:
        artist = ax.imshow(shown[0].numpy(), cmap=cmap, vmin=low, vmax=high)
    else:
        artist = ax.imshow(shown[:3].permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([])
    ax.set_yticks([])
    return artist


def image_posterior(
    observations: Tensor,
    samples: Tensor,
    path: str | os.PathLike[str],
    truth: Tensor | None = None,
    shown_samples: int = 3,
    titles: Sequence[str] | None = None,
    missing: Tensor | None = None,
    title: str = "Posterior samples, mean and spread",
) -> Path:
    """One row per observation: truth (when known), observation, a few posterior samples,
    the posterior mean, the error map :math:`|\text{mean} - \text{truth}|` (when the truth is
    known) and the posterior standard deviation, with colour bars for the intensity, the
    error and the standard deviation.

    Args:
        observations: ``(B, C, H, W)``.
        samples: posterior samples ``(N, B, C, H, W)``.
        path: the PNG to write (atomically).
        truth: the true parameters ``(B, C, H, W)``, or ``None``.
        shown_samples: how many samples to show per row.
        titles: optional row labels (e.g. the held-out indices).
        missing: optional boolean ``(H, W)``, ``True`` where the observation has no data
            (inpainting); those pixels are drawn in blue.
        title: the figure's title.
    """
    plt = pyplot()
    mean, std = samples.mean(0), samples.std(0)
    error = None if truth is None else (mean - truth.to(mean.dtype)).abs()
    shown = min(shown_samples, samples.shape[0])
    observation_title = "observation" if missing is None else "observation\n(blue: missing)"
    columns = (["truth"] if truth is not None else []) + [observation_title]
    columns += [f"sample {i + 1}" for i in range(shown)] + ["posterior\nmean"]
    columns += (["|mean - truth|"] if error is not None else []) + ["posterior\nstd"]
    bars = ["intensity"] + (["error"] if error is not None else []) + ["posterior std"]
    rows = observations.shape[0]
    # each colour bar gets a narrow column and a spacer for its tick labels and name
    figure, axes = plt.subplots(
        rows,
        len(columns) + 2 * len(bars),
        figsize=(1.3 * len(columns) + 0.9 * len(bars), 1.3 * rows + 0.8),
        squeeze=False,
        gridspec_kw={"width_ratios": [1.0] * len(columns) + [0.08, 0.55] * len(bars)},
    )
    grid = axes[0][-1].get_gridspec()
    for ax in axes[:, len(columns) :].flat:
        ax.remove()
    bar_axes = [figure.add_subplot(grid[:, len(columns) + 2 * i]) for i in range(len(bars))]
    low = float(samples.min()) if truth is None else min(float(truth.min()), 0.0)
    high = float(samples.max()) if truth is None else max(float(truth.max()), 1.0)
    top = float(std.max())
    error_top = 0.0 if error is None else float(error.max())
    artists: dict[str, Any] = {}
    for r in range(rows):
        images = ([truth[r]] if truth is not None else []) + [observations[r]]
        images += [samples[i, r] for i in range(shown)] + [mean[r]]
        for c, image in enumerate(images):
            artists["intensity"] = _image(axes[r][c], image, low=low, high=high)
        if missing is not None:
            overlay = torch.zeros(*missing.shape, 4)
            overlay[missing] = torch.tensor([0.15, 0.35, 0.95, 1.0])
            axes[r][len(images) - shown - 2].imshow(overlay.numpy())
        if error is not None:
            artists["error"] = _image(
                axes[r][len(images)], error[r], cmap="viridis", low=0.0, high=error_top
            )
        artists["posterior std"] = _image(
            axes[r][len(columns) - 1], std[r], cmap="magma", low=0.0, high=top
        )
        if titles is not None:
            axes[r][0].set_ylabel(titles[r], fontsize=8)
    for c, name in enumerate(columns):
        axes[0][c].set_title(name, fontsize=8)
    for name, ax in zip(bars, bar_axes, strict=True):
        figure.colorbar(artists[name], cax=ax, label=name)
    figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


def vector_posterior(
    samples: Tensor,
    path: str | os.PathLike[str],
    truth: Tensor | None = None,
    titles: Sequence[str] | None = None,
    reference: Tensor | None = None,
) -> Path:
    """Scatter plots of the first two parameters' posterior samples, one panel per
    observation, with the truth marked when known and the reference posterior's samples in
    grey behind them when given.

    Args:
        samples: ``(N, B, D)``, ``D >= 1``.
        path: the PNG to write (atomically).
        truth: ``(B, D)`` or ``None``.
        titles: optional panel titles.
        reference: reference posterior samples ``(M, B, D)`` or ``None``.
    """
    plt = pyplot()
    count = samples.shape[1]
    figure, axes = plt.subplots(1, count, figsize=(2.6 * count, 2.6), squeeze=False)
    values = samples.detach().cpu().float()
    for b in range(count):
        ax = axes[0][b]
        if values.shape[-1] >= 2:
            if reference is not None:
                ref = reference[:, b].detach().cpu().float()
                ax.scatter(ref[:, 0], ref[:, 1], s=3, alpha=0.4, color="0.6", label="reference")
            ax.scatter(values[:, b, 0], values[:, b, 1], s=3, alpha=0.4, label="flow")
            ax.set_xlabel("theta[0]")
            ax.set_ylabel("theta[1]")
            if truth is not None:
                ax.scatter(truth[b, 0], truth[b, 1], marker="x", color="red", s=40, label="truth")
        else:
            if reference is not None:
                ref = reference[:, b, 0].detach().cpu().float().numpy()
                ax.hist(ref, bins=40, color="0.6", alpha=0.6, label="reference")
            ax.hist(values[:, b, 0].numpy(), bins=40, alpha=0.7, label="flow")
            ax.set_xlabel("theta[0]")
            if truth is not None:
                ax.axvline(float(truth[b, 0]), color="red", label="truth")
        ax.set_title(titles[b] if titles is not None else f"observation {b}", fontsize=9)
    if truth is not None or reference is not None:
        axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def training_curve(history: NPEHistory, path: str | os.PathLike[str]) -> Path:
    """Training and validation loss (negative log posterior density) per epoch, with the
    epoch whose weights were kept marked."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(4.6, 3.2))
    epochs = list(range(1, history.epochs + 1))
    ax.plot(epochs, history.train_loss, marker="o", markersize=3, label="training")
    if history.validation_loss:
        ax.plot(
            epochs[: len(history.validation_loss)],
            history.validation_loss,
            marker="o",
            markersize=3,
            label="validation",
        )
    if history.best_epoch:
        ax.axvline(history.best_epoch, color="gray", linestyle=":", label="kept")
    ax.set_xlabel("epoch (one pass over the training simulations)")
    ax.set_ylabel(r"mean $-\log q(\theta \mid x)$ (nats per simulation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)
