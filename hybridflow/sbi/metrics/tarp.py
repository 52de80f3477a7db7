"""TARP: expected coverage of random-point balls, a test of posterior accuracy from samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from hybridflow.sbi.metrics.calibration import coverage_max_error

__all__ = ["TARPResult", "tarp", "tarp_coverage"]


class TARPResult(NamedTuple):
    """Expected coverage probabilities of TARP.

    Attributes:
        levels: credibility levels :math:`\\alpha`, ``(k,)``.
        coverage: the expected coverage at each level, ``(k,)``: equal to ``levels`` for an
            accurate posterior (necessary and sufficient over all reference distributions),
            below for an overconfident or biased one, above for an underconfident one.
        fractions: ``(N,)`` the share :math:`f_i` of posterior samples closer to the reference
            point than the true parameter, per simulation (uniform for an accurate posterior).
        max_error (float): the largest :math:`|\\text{coverage} - \\alpha|` (a property).
    """

    levels: Tensor
    coverage: Tensor
    fractions: Tensor

    max_error = coverage_max_error


def tarp(
    samples: Tensor,
    theta: Tensor,
    *,
    references: Tensor | None = None,
    levels: Sequence[float] | Tensor | None = None,
    seed: int = 0,
) -> TARPResult:
    r"""Tests of Accuracy with Random Points (TARP) from posterior samples.

    For each simulation :math:`i` with true parameter :math:`\theta^*_i` and posterior
    samples :math:`\theta_{ij} \sim q(\cdot \mid x_i)`, a reference point :math:`\theta_r` is
    drawn and :math:`f_i = \frac1n \sum_j 1[d(\theta_{ij}, \theta_r) < d(\theta^*_i,
    \theta_r)]` is the mass of the ball around :math:`\theta_r` through :math:`\theta^*_i`.
    The expected coverage at level :math:`\alpha` is the share of simulations with
    :math:`f_i < \alpha`. Parameters are first scaled to :math:`[0, 1]` per entry with the
    range of ``theta``, and the reference points are uniform on :math:`[0, 1]^d` unless given
    (as the reference implementation does); :math:`d` is the Euclidean distance.

    Unlike highest-density coverage (:func:`~hybridflow.sbi.expected_coverage`), TARP needs
    samples only, no density, so it applies to any sampler.

    Args:
        samples: posterior samples ``(n, N, *event)``: ``n`` per simulation.
        theta: the true parameters ``(N, *event)``.
        references: reference points ``(N, *event)`` in the scaled units, or ``None``.
        levels: credibility levels in (0, 1); 0.05, 0.10, ..., 0.95 by default.
        seed: seed of the reference points.

    Returns:
        :class:`TARPResult`.

    Raises:
        ValueError: shapes that disagree, fewer than two simulations, or levels outside (0, 1).

    References:
        Lemos et al., "Sampling-based accuracy testing of posterior estimators for general
        inference", ICML 2023.
    """
    where = "tarp"
    if not isinstance(samples, Tensor) or not isinstance(theta, Tensor):
        raise TypeError(f"{where}: samples and theta must be tensors")
    if theta.dim() < 2 or theta.shape[0] < 2 or samples.shape[1:] != theta.shape:
        raise ValueError(
            f"{where}: expected samples (n, N, *event) and theta (N, *event) with N >= 2, got "
            f"{tuple(samples.shape)} and {tuple(theta.shape)}"
        )
    alphas = torch.arange(1, 20, dtype=torch.float64) / 20 if levels is None else levels
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    if alphas.dim() != 1 or ((alphas <= 0) | (alphas >= 1)).any():
        raise ValueError(f"{where}: levels must lie in (0, 1), got {alphas.tolist()}")
    truth = theta.detach().double().cpu().flatten(1)
    draws = samples.detach().double().cpu().flatten(2)
    low, high = truth.min(0).values, truth.max(0).values
    span = torch.where(high > low, high - low, torch.ones_like(high))
    truth, draws = (truth - low) / span, (draws - low) / span
    if references is None:
        generator = torch.Generator().manual_seed(seed)
        points = torch.rand(truth.shape, generator=generator, dtype=torch.float64)
    else:
        points = references.detach().double().cpu().flatten(1)
        if points.shape != truth.shape:
            raise ValueError(
                f"{where}: references must have theta's shape {tuple(theta.shape)}, got "
                f"{tuple(references.shape)}"
            )
    sample_distance = (draws - points).norm(dim=-1)  # (n, N)
    true_distance = (truth - points).norm(dim=-1)  # (N,)
    fractions = (sample_distance < true_distance).double().mean(0)
    coverage = (fractions.unsqueeze(0) < alphas.unsqueeze(1)).double().mean(1)
    return TARPResult(alphas, coverage, fractions)


def tarp_coverage(
    flow: nn.Module,
    theta: Tensor,
    x: Tensor,
    num_posterior_samples: int = 100,
    *,
    batch_size: int = 64,
    seed: int = 0,
) -> TARPResult:
    """:func:`tarp` of ``flow``'s posteriors for simulated pairs ``(theta, x)`` from the
    joint (``flow(x_batch).sample((n,))`` for each batch of ``batch_size`` pairs)."""
    with torch.no_grad():
        draws = [
            flow(x[start : start + batch_size]).sample((num_posterior_samples,)).cpu()
            for start in range(0, x.shape[0], batch_size)
        ]
    return tarp(torch.cat(draws, dim=1), theta, seed=seed)
