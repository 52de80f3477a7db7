"""Drawing posterior samples for one observation, optionally restricted to the prior's support."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from hybridflow.arguments import positive_int

__all__ = ["LeakageWarning", "PosteriorSamples", "rejection_sample", "sample_posterior"]


class LeakageWarning(UserWarning):
    """Much of the flow's mass lies outside the prior's support."""


class PosteriorSamples(NamedTuple):
    """What :func:`rejection_sample` returns.

    Attributes:
        samples: the accepted samples ``(n, *event_shape)``, without gradients.
        acceptance_rate: the share of the flow's samples inside the prior's support (1.0
            without a prior): the flow's mass inside the support, up to Monte Carlo error.
        drawn: how many samples the flow drew to keep ``n``.
    """

    samples: Tensor
    acceptance_rate: float
    drawn: int


def sample_posterior(flow: nn.Module, x_o: Any, num_samples: int, **options: Any) -> Tensor:
    r"""``num_samples`` draws of :math:`q(\theta \mid x_o)` for one observation, ``(n, *event)``;
    :func:`rejection_sample` with the samples only (its keywords ``prior``, ``batch_size``
    and ``max_rounds`` are passed on; see there)."""
    return rejection_sample(flow, x_o, num_samples, **options).samples


def rejection_sample(
    flow: nn.Module,
    x_o: Any,
    num_samples: int,
    *,
    prior: Distribution | None = None,
    batch_size: int = 10_000,
    max_rounds: int = 100,
) -> PosteriorSamples:
    r"""``num_samples`` draws of :math:`q(\theta \mid x_o)` for one observation and the
    acceptance rate of the rejection that keeps them inside the prior's support.

    With ``prior`` given, samples outside its support (``prior.support.check``) are rejected,
    the usual remedy for the leakage of a flow (whose support is all of :math:`\mathbb{R}^n`)
    past a bounded prior; the result is :math:`q` truncated to the support. The acceptance
    rate is returned (and a :class:`LeakageWarning` reports one below 50%). A flow built with
    ``coupling_flow(..., support=prior)`` keeps its mass inside the support (rate 1, up to
    samples rounded onto a boundary in float32).

    Args:
        flow: ``flow(x)`` returns a distribution (a
            :class:`~hybridflow.distributions.ConditionalFlow`).
        x_o: one observation batched as the flow expects (``(1, *x_shape)``, or unbatched when
            the flow knows its ``observation_shape``).
        num_samples: the number of samples.
        prior: optional prior whose support bounds the samples (checked on the CPU).
        batch_size: samples drawn per round.
        max_rounds: rounds of rejection before giving up with ``RuntimeError``.

    Returns:
        :class:`PosteriorSamples`: the samples ``(n, *event)``, without gradients, the
        acceptance rate and the number drawn.
    """
    positive_int(num_samples, "num_samples", "sample_posterior")
    with torch.no_grad():
        dist = flow(x_o)
        batch = tuple(dist.batch_shape)
        if batch not in ((), (1,)):
            raise ValueError(
                f"sample_posterior: expected one observation, got a batch of shape {batch}"
            )
        kept: list[Tensor] = []
        have, drawn = 0, 0
        for _ in range(max_rounds):
            draw = batch_size if prior is not None else min(batch_size, num_samples - have)
            samples = dist.sample((draw,)).reshape(draw, *dist.event_shape)
            drawn += draw
            if prior is not None:
                inside = prior.support.check(samples.cpu()).reshape(draw, -1).all(1)
                samples = samples[inside.to(samples.device)]
            kept.append(samples)
            have += len(samples)
            if have >= num_samples:
                break
        if have < num_samples:
            raise RuntimeError(
                f"sample_posterior: only {have} of {drawn} samples fell inside the prior's "
                f"support, short of {num_samples}; the flow puts its mass outside the prior"
            )
    rate = have / drawn
    if prior is not None and rate < 0.5:
        warnings.warn(
            f"sample_posterior: only {rate:.1%} of the flow's samples lie inside the "
            "prior's support (leakage); train longer or on more simulations",
            LeakageWarning,
            stacklevel=2,
        )
    return PosteriorSamples(torch.cat(kept)[:num_samples], rate, drawn)
