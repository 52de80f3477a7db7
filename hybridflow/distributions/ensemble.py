"""``FlowEnsemble``: K conditional flows whose call returns their mixture."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hybridflow.config import Configurable
from hybridflow.distributions.mixture import UniformMixture

__all__ = ["FlowEnsemble"]


class FlowEnsemble(nn.Module, Configurable):
    r"""An ensemble of ``K`` posterior estimators: ``ensemble(x)`` is the equal-weight mixture
    :math:`\frac1K \sum_k q_k(\theta \mid x)` (:class:`UniformMixture`).

    Each member is trained on its own loss (:class:`~hybridflow.sbi.NPETrainer` minimises
    the sum of the members' negative log densities, :meth:`member_log_prob`, in one
    optimiser over all parameters: since the members share no parameter, each gets exactly
    the gradient of its own loss, clipped on its own norm, as if trained alone on the same
    batches; the learning-rate schedule and early stopping follow the members' mean
    validation loss). Members that
    differ in their initial weights disagree where the data say little, and the mixture is
    wider there: ensembles are more often conservative (calibrated or over-dispersed) than
    one flow.

    Args:
        *members: ``K >= 1`` modules whose call returns a distribution over
            :math:`\theta` (:class:`~hybridflow.distributions.ConditionalFlow`), with equal
            shapes; configurable members make the ensemble saveable.

    Example:
        >>> import torch
        >>> from hybridflow.distributions import ConditionalFlow, FlowEnsemble, coupling_flow
        >>> members = [
        ...     ConditionalFlow(coupling_flow(2, 3, depth=1, hidden=8, seed=k), event_shape=(2,))
        ...     for k in range(3)
        ... ]
        >>> posterior = FlowEnsemble(*members)(torch.randn(4, 3))
        >>> tuple(posterior.sample((10,)).shape), tuple(posterior.log_prob(torch.zeros(4, 2)).shape)
        ((10, 4, 2), (4,))

    References:
        Lakshminarayanan et al., "Simple and scalable predictive uncertainty estimation using
        deep ensembles", 2017; Hermans et al., "A trust crisis in simulation-based inference?",
        2022.
    """

    def __init__(self, *members: nn.Module) -> None:
        super().__init__()
        if not members or not all(isinstance(m, nn.Module) for m in members):
            raise TypeError("FlowEnsemble: expected one or more nn.Module members")
        self.members = nn.ModuleList(members)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def observation_shape(self) -> Any:
        """The first member's ``observation_shape`` (``None`` when it has none)."""
        return getattr(self.members[0], "observation_shape", None)

    @property
    def event_shape(self) -> Any:
        """The first member's ``event_shape``."""
        return getattr(self.members[0], "event_shape", None)

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> UniformMixture:
        """The mixture of the members' distributions for observations ``x``."""
        return UniformMixture([m(x, *args, **kwargs) for m in self.members])

    def member_log_prob(self, theta: Tensor, x: Any, *args: Any) -> Tensor:
        """Each member's :math:`\\log q_k(\\theta \\mid x)`, shape ``(K, *batch_shape)``."""
        return torch.stack([m(x, *args).log_prob(theta) for m in self.members])
