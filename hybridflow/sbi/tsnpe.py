"""Truncated sequential neural posterior estimation (TSNPE) for one observation."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from hybridflow.sbi.tasks.base import Task
from hybridflow.sbi.training.npe import NPEConfig, NPEHistory, NPETrainer

__all__ = ["TSNPERound", "hpd_threshold", "truncated_npe", "truncated_prior_sample"]


class TSNPERound(NamedTuple):
    """One round of :func:`truncated_npe`.

    Attributes:
        theta: the parameters simulated in the round ``(n, *theta_shape)``.
        acceptance_rate: the share of prior draws inside the truncation region (1 in the
            first round, which samples the prior itself): the region's prior mass.
        threshold: the log density bounding the region (``-inf`` in the first round).
        history: the training history after the round (on all simulations so far).
    """

    theta: Tensor
    acceptance_rate: float
    threshold: float
    history: NPEHistory


def hpd_threshold(
    flow: nn.Module, x_o: Tensor, *, quantile: float = 1e-4, num_samples: int = 10_000
) -> float:
    r"""The log density :math:`\tau` whose superlevel set :math:`\{\theta : \log q(\theta
    \mid x_o) \ge \tau\}` holds ``1 - quantile`` of :math:`q`'s mass: the ``quantile`` of
    :math:`\log q` over ``num_samples`` samples of :math:`q` (Deistler et al.'s
    :math:`1 - \epsilon` highest-probability region, :math:`\epsilon = 10^{-4}`)."""
    if not 0 < quantile < 1:
        raise ValueError(f"hpd_threshold: quantile must lie in (0, 1), got {quantile!r}")
    with torch.no_grad():
        _, log_prob = flow(x_o).sample_and_log_prob((num_samples,))
    return float(torch.quantile(log_prob.flatten().double().cpu(), quantile))


def truncated_prior_sample(
    task: Task,
    flow: nn.Module,
    x_o: Tensor,
    num: int,
    threshold: float,
    generator: torch.Generator,
    *,
    chunk_size: int = 10_000,
    max_draws: int = 10_000_000,
) -> tuple[Tensor, float]:
    r"""``num`` draws of the prior truncated to :math:`\{\log q(\theta \mid x_o) \ge \tau\}`,
    by rejection from the prior; ``(theta, acceptance rate)``.

    Raises:
        RuntimeError: fewer than ``num`` accepted in ``max_draws`` prior draws.
    """
    kept: list[Tensor] = []
    have = drawn = 0
    with torch.no_grad():
        while have < num:
            if drawn >= max_draws:
                raise RuntimeError(
                    f"truncated_prior_sample: only {have} of {drawn} prior draws fell in the "
                    f"region log q >= {threshold:.3g}, short of {num}; the region's prior mass "
                    "is too small for rejection (raise the quantile or simulate more per round)"
                )
            theta = task.sample_prior(chunk_size, generator)
            drawn += chunk_size
            log_prob = flow(x_o).log_prob(theta.to(x_o.device)).cpu()
            inside = theta[log_prob >= threshold]
            kept.append(inside)
            have += len(inside)
    return torch.cat(kept)[:num], have / drawn


def truncated_npe(
    task: Task,
    flow: nn.Module,
    x_o: Tensor,
    *,
    rounds: int = 3,
    simulations_per_round: int = 1000,
    config: NPEConfig | None = None,
    quantile: float = 1e-4,
    num_threshold_samples: int = 10_000,
    seed: int = 0,
) -> list[TSNPERound]:
    r"""Truncated sequential NPE: spend the simulations where the posterior of one observation
    :math:`x_o` lives.

    Round 1 simulates from the prior and trains ``flow`` by NPE. Each later round bounds the
    :math:`1 - \epsilon` highest-probability region of the current
    :math:`q(\theta \mid x_o)` by a log-density threshold (:func:`hpd_threshold`,
    :math:`\epsilon` = ``quantile``), draws parameters from the prior truncated to it
    (:func:`truncated_prior_sample`), simulates them, and trains on all simulations so far
    with the ordinary NPE loss. Since the truncated prior is proportional to the prior inside
    the region, the loss needs no correction: :math:`q` stays an estimate of the posterior
    there (Deistler et al. 2022), unlike SNPE-A/B/C's proposals.

    Args:
        task: the prior and the simulator.
        flow: ``flow(x)`` returns the posterior approximation (a
            :class:`~hybridflow.distributions.ConditionalFlow`), trained in place.
        x_o: the observation, batched as ``(1, *x_shape)`` or unbatched when the flow knows
            its ``observation_shape``.
        rounds: the number of rounds, at least 1.
        simulations_per_round: simulations added each round.
        config: NPE settings for each round's training.
        quantile: :math:`\epsilon`, the posterior mass left outside the region.
        num_threshold_samples: posterior samples behind each threshold.
        seed: seed of the prior draws and the simulator.

    Returns:
        One :class:`TSNPERound` per round; the flow holds the final posterior.

    References:
        Deistler, Goncalves & Macke, "Truncated proposals for scalable and hassle-free
        simulation-based inference", NeurIPS 2022.
    """
    for name, value in (("rounds", rounds), ("simulations_per_round", simulations_per_round)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"truncated_npe: {name} must be an int >= 1, got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    trainer = NPETrainer(flow, config)
    thetas: list[Tensor] = []
    xs: list[Tensor] = []
    history: list[TSNPERound] = []
    for index in range(rounds):
        if index == 0:
            theta, rate, threshold = (
                task.sample_prior(simulations_per_round, generator),
                1.0,
                -math.inf,
            )
        else:
            flow.eval()
            threshold = hpd_threshold(
                flow, x_o, quantile=quantile, num_samples=num_threshold_samples
            )
            theta, rate = truncated_prior_sample(
                task, flow, x_o, simulations_per_round, threshold, generator
            )
        thetas.append(theta)
        xs.append(task.simulate(theta, generator))
        result = trainer.fit(torch.cat(thetas), torch.cat(xs))
        history.append(TSNPERound(theta, rate, threshold, result))
    flow.eval()
    return history
