"""Use a hybridflow conditional flow as the density estimator of the ``sbi`` package's NPE.

The ``sbi`` package (optional dependency: ``pip install 'hybridflow[sbi-package]'``) is
imported only when an estimator is built, so this module imports without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hybridflow.distributions.builders import CouplingKind, coupling_flow
from hybridflow.distributions.flows import ConditionalFlow
from hybridflow.summary.mlp import MLP
from hybridflow.summary.standardize import Standardize

__all__ = ["as_sbi_estimator", "sbi_density_estimator"]

FlowBuilder = Callable[[Tensor, Tensor], ConditionalFlow]


def _import_base() -> type:
    try:
        from sbi.neural_nets.estimators.base import ConditionalDensityEstimator
    except ImportError as error:
        raise ImportError(
            "the sbi adapter needs the sbi package: pip install sbi (an optional dependency)"
        ) from error
    return ConditionalDensityEstimator


@functools.cache
def _estimator_class() -> type:
    """The adapter class, defined on first use as a subclass of sbi's
    ``ConditionalDensityEstimator`` (so that sbi is imported only then)."""
    base = _import_base()

    class HybridflowEstimator(base):  # type: ignore[misc, valid-type]
        """sbi's conditional density estimator interface over a :class:`ConditionalFlow`.

        ``input`` is :math:`\\theta` ``([sample_dim,] batch_dim, *input_shape)`` and
        ``condition`` is :math:`x` ``([sample_dim,] batch_dim, *condition_shape)``, as sbi
        passes them; the flow sees flat batches.
        """

        def __init__(
            self, flow: ConditionalFlow, input_shape: torch.Size, condition_shape: torch.Size
        ) -> None:
            super().__init__(flow, input_shape, condition_shape)

        @property
        def embedding_net(self) -> nn.Module:
            summary = self.net.summary
            return nn.Identity() if summary is None else summary

        def _align(self, input: Tensor, condition: Tensor) -> tuple[Tensor, Tensor]:
            """Both to ``(S, B, *shape)`` with broadcast sample and batch sizes."""
            in_dims, cond_dims = len(self.input_shape), len(self.condition_shape)
            self._check_condition_shape(condition)
            self._check_input_shape(input)
            if input.dim() == in_dims + 1:
                input = input.unsqueeze(0)
            if condition.dim() == cond_dims + 1:
                condition = condition.unsqueeze(0)
            if input.dim() != in_dims + 2 or condition.dim() != cond_dims + 2:
                raise ValueError(
                    f"HybridflowEstimator: input {tuple(input.shape)} and condition "
                    f"{tuple(condition.shape)} must be ([sample_dim,] batch_dim, *event)"
                )
            lead = torch.broadcast_shapes(input.shape[:2], condition.shape[:2])
            return (
                input.expand(*lead, *self.input_shape),
                condition.expand(*lead, *self.condition_shape),
            )

        def log_prob(self, input: Tensor, condition: Tensor, **kwargs: Any) -> Tensor:
            input, condition = self._align(input, condition)
            lead = input.shape[:2]
            dist = self.net(condition.reshape(-1, *self.condition_shape))
            return dist.log_prob(input.reshape(-1, *self.input_shape)).reshape(lead)

        def loss(self, input: Tensor, condition: Tensor, **kwargs: Any) -> Tensor:
            return -self.log_prob(input.unsqueeze(0), condition)[0]

        def _draw(
            self, sample_shape: Sequence[int], condition: Tensor, with_log_prob: bool
        ) -> tuple[Tensor, Tensor | None]:
            self._check_condition_shape(condition)
            batch = condition.shape[: condition.dim() - len(self.condition_shape)]
            dist = self.net(condition.reshape(-1, *self.condition_shape))
            shape = torch.Size(sample_shape)
            if with_log_prob:
                samples, log_prob = dist.sample_and_log_prob(shape)
                return (
                    samples.reshape(*shape, *batch, *self.input_shape),
                    log_prob.reshape(*shape, *batch),
                )
            return dist.sample(shape).reshape(*shape, *batch, *self.input_shape), None

        def sample(self, sample_shape: Sequence[int], condition: Tensor, **kwargs: Any) -> Tensor:
            return self._draw(sample_shape, condition, False)[0]

        def sample_and_log_prob(
            self, sample_shape: Sequence[int], condition: Tensor, **kwargs: Any
        ) -> tuple[Tensor, Tensor]:
            samples, log_prob = self._draw(sample_shape, condition, True)
            return samples, log_prob  # type: ignore[return-value]

    return HybridflowEstimator


def as_sbi_estimator(
    flow: ConditionalFlow, input_shape: Sequence[int], condition_shape: Sequence[int]
) -> nn.Module:
    """Wrap a :class:`~hybridflow.distributions.ConditionalFlow` as an ``sbi``
    ``ConditionalDensityEstimator`` (``input`` = parameters, ``condition`` = observations).

    Raises:
        ImportError: the ``sbi`` package is not installed.
        TypeError: ``flow`` is not a ConditionalFlow.
    """
    if not isinstance(flow, ConditionalFlow):
        raise TypeError(f"as_sbi_estimator: expected a ConditionalFlow, got {type(flow).__name__}")
    return _estimator_class()(flow, torch.Size(input_shape), torch.Size(condition_shape))


def sbi_density_estimator(
    build: FlowBuilder | None = None,
    *,
    depth: int = 4,
    hidden: int = 64,
    coupling: CouplingKind = "affine",
    summary_features: int | None = None,
) -> Callable[[Tensor, Tensor], nn.Module]:
    """A ``density_estimator`` builder for ``sbi.inference.NPE``.

    sbi calls it with a batch of parameters and observations to size the network. By
    default it builds a :func:`~hybridflow.distributions.coupling_flow` over vector parameters
    conditioned on the z-scored observations (through an MLP summary network of
    ``summary_features`` outputs when given); pass ``build(theta, x) -> ConditionalFlow`` for
    any other flow (a conditional Glow with a CNN summary for images, say).

    Use::

        from sbi.inference import NPE
        inference = NPE(prior, density_estimator=sbi_density_estimator(depth=4))
        estimator = inference.append_simulations(theta, x).train()
    """
    _import_base()  # fail early, at configuration time, when sbi is missing

    def builder(batch_theta: Tensor, batch_x: Tensor) -> nn.Module:
        if build is not None:
            flow = build(batch_theta, batch_x)
        else:
            if batch_theta.dim() != 2:
                raise ValueError(
                    "sbi_density_estimator: the default flow takes vector parameters (N, D), got "
                    f"{tuple(batch_theta.shape)}; pass build= for other shapes"
                )
            x_features = batch_x[0].numel()
            cond = x_features if summary_features is None else summary_features
            layers: list[nn.Module] = [Standardize.from_data(batch_x.flatten(1))]
            if summary_features is not None:
                layers.append(MLP(x_features, summary_features, hidden=hidden))
            flow = ConditionalFlow(
                coupling_flow(
                    batch_theta.shape[1], cond, depth=depth, hidden=hidden, coupling=coupling
                ),
                summary=nn.Sequential(nn.Flatten(), *layers),
                event_shape=tuple(batch_theta.shape[1:]),
            )
        return as_sbi_estimator(flow, batch_theta.shape[1:], batch_x.shape[1:])

    return builder
