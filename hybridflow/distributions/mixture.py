"""``UniformMixture``: the equal-weight mixture of distributions, as one torch distribution."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

__all__ = ["UniformMixture"]


class UniformMixture(Distribution):
    r"""The mixture :math:`q(\theta) = \frac1K \sum_k q_k(\theta)` of ``K`` distributions of
    equal shapes (an ensemble's posterior).

    :meth:`log_prob` is :math:`\operatorname{logsumexp}_k \log q_k(\theta) - \log K`.
    :meth:`sample` draws from every member and picks one member per sample uniformly at
    random (so it costs ``K`` member draws per sample). :meth:`rsample` is defined when every
    member has ``rsample``: given the (discrete, parameter-free) choice of member, the sample
    is the member's reparametrised sample, so gradients reach the chosen members' parameters.

    Args:
        members: the ``K`` distributions, with equal ``batch_shape`` and ``event_shape``.

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> mix = UniformMixture([Normal(-1.0, 1.0), Normal(1.0, 1.0)])
        >>> round(float(mix.log_prob(torch.tensor(0.0))), 4)  # both members equal at 0
        -1.4189
        >>> tuple(mix.sample((5,)).shape)
        (5,)

    References:
        Lakshminarayanan et al., "Simple and scalable predictive uncertainty estimation using
        deep ensembles", 2017; Hermans et al., "A trust crisis in simulation-based inference?
        Your posterior approximations can be unfaithful", 2022 (NPE ensembles).
    """

    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012 (torch's API)

    def __init__(self, members: Sequence[Distribution]) -> None:
        members = list(members)
        if not members or not all(isinstance(m, Distribution) for m in members):
            raise TypeError("UniformMixture: expected one or more torch Distributions")
        first = members[0]
        for k, member in enumerate(members):
            if (member.batch_shape, member.event_shape) != (first.batch_shape, first.event_shape):
                raise ValueError(
                    f"UniformMixture: member {k} has batch_shape {tuple(member.batch_shape)} and "
                    f"event_shape {tuple(member.event_shape)}, member 0 "
                    f"{tuple(first.batch_shape)} and {tuple(first.event_shape)}"
                )
        self.members = members
        super().__init__(first.batch_shape, first.event_shape, validate_args=False)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return all(m.has_rsample for m in self.members)

    @property
    def support(self) -> constraints.Constraint:
        return self.members[0].support

    def __repr__(self) -> str:
        return (
            f"UniformMixture(K={len(self.members)}, batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)})"
        )

    def log_prob(self, value: Tensor) -> Tensor:
        """:math:`\\log \\frac1K \\sum_k q_k(\\theta)`, shaped as each member's."""
        stacked = torch.stack([m.log_prob(value) for m in self.members])
        return torch.logsumexp(stacked, dim=0) - math.log(len(self.members))

    def _pick(self, draws: list[Tensor], shape: torch.Size) -> Tensor:
        """One member's draw per entry of ``shape = sample_shape + batch_shape``."""
        stacked = torch.stack(draws)  # (K, *shape, *event)
        choice = torch.randint(len(draws), shape, device=stacked.device)
        index = choice.reshape(1, *shape, *([1] * len(self.event_shape)))
        index = index.expand(1, *stacked.shape[1:])
        return stacked.gather(0, index).squeeze(0)

    def rsample(self, sample_shape: Sequence[int] | int = ()) -> Tensor:
        """Reparametrised samples ``(*sample_shape, *batch_shape, *event_shape)``."""
        if not self.has_rsample:
            raise NotImplementedError("UniformMixture: a member has no rsample")
        sample_shape = (sample_shape,) if isinstance(sample_shape, int) else sample_shape
        shape = torch.Size(sample_shape) + self.batch_shape
        return self._pick([m.rsample(sample_shape) for m in self.members], shape)

    def sample(self, sample_shape: Sequence[int] | int = ()) -> Tensor:
        """Samples ``(*sample_shape, *batch_shape, *event_shape)``, without gradients."""
        sample_shape = (sample_shape,) if isinstance(sample_shape, int) else sample_shape
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            return self._pick([m.sample(sample_shape) for m in self.members], shape)
