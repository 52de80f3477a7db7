"""``Flow`` and ``ConditionalFlow``: modules whose call returns a flow as a torch distribution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from hybridflow.arguments import boolean, integer
from hybridflow.autograd.checks import check_finite
from hybridflow.autograd.module import InvertibleModule
from hybridflow.autograd.validation import validation_scope
from hybridflow.config import Configurable
from hybridflow.distributions.base import as_base
from hybridflow.distributions.distribution import FlowDistribution
from hybridflow.errors import ArgumentError, ArgumentTypeError, InputError, InputTypeError

__all__ = ["ConditionalFlow", "Flow"]


def _check_transform(transform: object, where: str) -> InvertibleModule:
    if not isinstance(transform, InvertibleModule):
        raise ArgumentTypeError(
            f"transform must be an InvertibleModule (a Chain, Glow, a layer), got "
            f"{type(transform).__name__}",
            argument="transform",
            where=(where,),
        )
    return transform


def _explain_transform(transform: nn.Module) -> str:
    """The transform's mode (:meth:`hybridflow.Chain.explain`), or what it is when it has none."""
    explain = getattr(transform, "explain", None)
    if callable(explain):
        return explain()
    return f"{type(transform).__name__}: one invertible layer (no mode: plain autograd or its rule)"


def _check_validate(validate: object, where: str) -> bool | None:
    return None if validate is None else boolean(validate, "validate", where)


class Flow(nn.Module, Configurable):
    r"""An unconditional normalizing flow: ``flow()`` returns the distribution of
    :math:`\theta = T^{-1}(z)`, :math:`z \sim p_Z`.

    The transform maps parameters to latents (see :class:`FlowDistribution` for the direction
    convention and the shapes); the base is a standard normal shaped like the event unless
    another is given.

    Args:
        transform: an unconditional :class:`~hybridflow.InvertibleModule`.
        base: a module returning the latent distribution (``batch_shape == ()``), a
            distribution, or ``None`` for :class:`~hybridflow.distributions.StandardNormal`.
        event_shape: shape of one event; required when ``base`` is ``None``.
        validate: run the data-dependent checks (NaN/Inf in the values given to
            ``log_prob``), once per call, with the transform's own off. ``None`` follows
            :class:`hybridflow.set_validation` (on by default); pass ``False`` for speed
            (under ``torch.compile`` and ``torch.func`` they are skipped anyway). Type, shape,
            dtype and device are always checked.

    Example:
        >>> import torch
        >>> from hybridflow.distributions import Flow, coupling_flow
        >>> _ = torch.manual_seed(0)
        >>> flow = Flow(coupling_flow(3, depth=2, hidden=16), event_shape=(3,))
        >>> dist = flow()
        >>> theta = dist.sample((5,))
        >>> tuple(theta.shape), tuple(dist.log_prob(theta).shape)
        ((5, 3), (5,))
    """

    def __init__(
        self,
        transform: InvertibleModule,
        base: nn.Module | Distribution | None = None,
        *,
        event_shape: Sequence[int] | None = None,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        self.transform = _check_transform(transform, "Flow")
        if transform.takes_condition:
            raise ArgumentError(
                "the transform takes a condition; use ConditionalFlow for a conditional density",
                argument="transform",
                where=("Flow",),
            )
        self.base, self.event_shape = as_base(base, event_shape, "Flow")
        self.validate = _check_validate(validate, "Flow")

    def explain(self) -> str:
        """How the transform keeps what backward needs (:meth:`hybridflow.Chain.explain`)."""
        return _explain_transform(self.transform)

    def forward(self) -> FlowDistribution:
        """The flow's distribution: ``batch_shape == ()``, the base's event shape."""
        return FlowDistribution(self.transform, self.base(), None, validate=self.validate)


class ConditionalFlow(nn.Module, Configurable):
    r"""A conditional normalizing flow :math:`q(\theta \mid x)` with a summary network:
    ``flow(x)`` returns the distribution of :math:`\theta = T^{-1}(z; s(x))`,
    :math:`z \sim p_Z`.

    The summary network :math:`s` (any ``nn.Module``; the identity when ``None``) turns an
    observation batch ``x`` into the condition :math:`c = s(x)` of shape ``(B, ...)``: a vector
    ``(B, K)`` for couplings built with ``cond_features=K``, or a field ``(B, K, *S)`` for
    image flows that take one (:class:`~hybridflow.networks.Glow`). The transform :math:`T`
    maps :math:`\theta` to :math:`z` (normalizing direction), so

    .. math::
        \log q(\theta \mid x) = \log p_Z(T(\theta; s(x))) + \log|\det \partial_\theta T|,

    and sampling runs ``transform.inverse``. The returned
    :class:`FlowDistribution` has ``batch_shape == (B,)`` and supports ``log_prob``,
    ``sample``, ``rsample``, ``sample_and_log_prob`` and ``rsample_and_log_prob``
    (zuko's convention: ``sample((n,))`` gives ``(n, B, *event_shape)``).

    **Training jointly.** The summary network is ordinary autograd; the transform may be a
    :class:`~hybridflow.Chain` in ``"invert"`` mode. Gradients of :math:`-\log q` (neural
    posterior estimation) or of a reverse-KL loss through ``rsample`` reach the condition
    through the chain's reconstructing backward, and from there the summary's parameters: both
    train with one optimizer over ``flow.parameters()``, and the chain keeps no activations.

    **Observations.** Extra positional and keyword arguments of the call go to the summary
    network (a set's ``mask``, say; a summary may also take a list of tensors). With
    ``observation_shape`` given, a tensor ``x`` must be ``(B, *observation_shape)`` (a
    ``None`` size matches any size) or one unbatched observation of ``observation_shape``,
    which gives ``batch_shape == ()``; anything else raises
    :class:`~hybridflow.errors.InputError` naming both shapes, as does an empty batch.
    NaN/Inf in ``x`` or in the condition raise ``InputError`` when validation is on
    (``validate``); errors of the summary network name it (``ConditionalFlow summary (MLP):
    ...``).

    **Saving.** The flow is :class:`~hybridflow.config.Configurable`: :func:`hybridflow.save`
    writes it as plain-data config and weights when its transform and summary network are
    configurable too (every hybridflow block and summary network is; derive your own summary
    from ``Configurable`` as well), and :func:`hybridflow.load` rebuilds it.

    Args:
        transform: a conditional :class:`~hybridflow.InvertibleModule` mapping
            ``(theta, cond)`` to ``(z, logdet)``.
        summary: the summary network, or ``None`` to condition on ``x`` itself.
        base: a module returning the latent distribution (``batch_shape == ()``), a
            distribution, or ``None`` for a standard normal of ``event_shape``.
        event_shape: shape of one parameter, ``(D,)`` or ``(C, H, W)``; required when
            ``base`` is ``None``.
        observation_shape: optional shape of one observation, checked at each call.
        validate: run the data-dependent checks (NaN/Inf in the observations, the condition
            and the values given to ``log_prob``), once per call, with the transform's own off.
            ``None`` follows :class:`hybridflow.set_validation` (on by default); pass
            ``False`` for speed (under ``torch.compile`` and ``torch.func`` they are skipped
            anyway). Types and shapes are always checked, and the transform checks dtype and
            device at its entry.

    Example:
        >>> import torch
        >>> from hybridflow.distributions import ConditionalFlow, coupling_flow
        >>> from hybridflow.summary import MLP
        >>> _ = torch.manual_seed(0)
        >>> flow = ConditionalFlow(
        ...     coupling_flow(2, cond_features=8, depth=2, hidden=16),
        ...     summary=MLP(5, 8, hidden=16),
        ...     event_shape=(2,),
        ...     observation_shape=(5,),
        ... )
        >>> x = torch.randn(4, 5)
        >>> theta = flow(x).sample((10,))
        >>> tuple(theta.shape)
        (10, 4, 2)
        >>> loss = -flow(x).log_prob(torch.randn(4, 2)).mean()
        >>> loss.backward()  # trains the transform and the summary network together
        >>> flow.summary.net[0].weight.grad is not None
        True

    References:
        Papamakarios & Murray, "Fast epsilon-free inference of simulation models with Bayesian
        conditional density estimation", 2016; Radev et al., "BayesFlow: learning complex
        stochastic models with invertible neural networks", 2020.
    """

    def __init__(
        self,
        transform: InvertibleModule,
        summary: nn.Module | None = None,
        base: nn.Module | Distribution | None = None,
        *,
        event_shape: Sequence[int] | None = None,
        observation_shape: Sequence[int | None] | None = None,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        self.transform = _check_transform(transform, "ConditionalFlow")
        if not transform.takes_condition:
            raise ArgumentError(
                "the transform takes no condition; build its couplings with cond_features > 0 "
                "(or use Flow for an unconditional density)",
                argument="transform",
                where=("ConditionalFlow",),
            )
        if summary is not None and not isinstance(summary, nn.Module):
            raise ArgumentTypeError(
                f"summary must be an nn.Module or None, got {type(summary).__name__}",
                argument="summary",
                where=("ConditionalFlow",),
            )
        self.summary = summary
        self.base, self.event_shape = as_base(base, event_shape, "ConditionalFlow")
        self.observation_shape = _check_observation_shape(observation_shape)
        self.validate = _check_validate(validate, "ConditionalFlow")

    def explain(self) -> str:
        """How the transform keeps what backward needs (:meth:`hybridflow.Chain.explain`); the
        summary network is plain autograd."""
        return _explain_transform(self.transform)

    def extra_repr(self) -> str:
        observed = (
            ""
            if self.observation_shape is None
            else f", observation_shape={self.observation_shape}"
        )
        return f"event_shape={tuple(self.event_shape)}{observed}"

    def _batched(self, x: Any) -> tuple[Any, bool]:
        """Check ``x`` against ``observation_shape``; add a batch axis to one observation."""
        where = "ConditionalFlow"
        if not isinstance(x, Tensor):
            if self.summary is None:
                raise InputTypeError(
                    "without a summary network the observation must be a tensor, got "
                    f"{type(x).__name__}",
                    where=(where,),
                )
            return x, True
        check_finite(
            x,
            where,
            validate=self.validate,
            what="the observation",
            fix="drop or repair such simulations before training or inference",
        )
        shape = self.observation_shape
        if shape is None:
            if x.dim() < 2 and self.summary is None:
                raise InputError(
                    f"an observation of shape {tuple(x.shape)} is no batch (B, ...), and "
                    "without observation_shape one unbatched observation cannot be told from "
                    "a batch; build the flow with "
                    f"ConditionalFlow(..., observation_shape={tuple(x.shape)}) or pass x[None]",
                    where=(where,),
                )
            batched = x, True
        elif _matches(tuple(x.shape), shape):
            return x.unsqueeze(0), False
        elif x.dim() == len(shape) + 1 and _matches(tuple(x.shape[1:]), shape):
            batched = x, True
        else:
            inner = ", ".join("*" if s is None else str(s) for s in shape)
            single = f"({inner},)" if len(shape) == 1 else f"({inner})"
            raise InputError(
                f"observation of shape {tuple(x.shape)} does not match observation_shape "
                f"{single}; expected a batch (B, {inner}) or one observation {single}",
                where=(where,),
            )
        if x.dim() > 0 and x.shape[0] == 0:
            raise InputError(
                f"empty batch: the observation has shape {tuple(x.shape)}; give at least one",
                where=(where,),
            )
        return batched

    def condition(self, x: Any, *args: Any, **kwargs: Any) -> Tensor:
        """The condition ``summary(x, *args, **kwargs)`` (``x`` itself without a summary),
        batched as ``(B, ...)``; an unbatched observation gives ``B = 1``."""
        return self._condition(x, *args, **kwargs)[0]

    def _condition(self, x: Any, *args: Any, **kwargs: Any) -> tuple[Tensor, bool]:
        x, batched = self._batched(x)
        if self.summary is None:
            cond = x
        else:
            try:
                with validation_scope(False if self.validate is False else None):
                    cond = self.summary(x, *args, **kwargs)
            except (InputError, InputTypeError) as error:
                error.located(f"ConditionalFlow summary ({type(self.summary).__name__})")
                raise
        if not isinstance(cond, Tensor):
            raise InputTypeError(
                f"the condition must be a tensor (B, ...), got {type(cond).__name__}",
                where=("ConditionalFlow",),
            )
        if cond.dim() < 2:
            raise InputError(
                f"the condition must be a tensor (B, ...) with at least two dimensions, got "
                f"{tuple(cond.shape)}; for one unbatched observation build the flow with "
                "observation_shape=<shape of one observation> (or pass x[None])",
                where=("ConditionalFlow",),
            )
        check_finite(
            cond,
            "ConditionalFlow",
            validate=self.validate,
            what="the condition from the summary network",
            fix="check its input and its training (learning rate, input scaling)",
        )
        return cond, batched

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> FlowDistribution:
        """The posterior approximation for observations ``x`` as a distribution.

        Args:
            x: observations ``(B, *observation_shape)`` (or one unbatched observation), or
                whatever the summary network takes.
            *args: passed to the summary network.
            **kwargs: passed to the summary network.

        Returns:
            A :class:`FlowDistribution` with ``batch_shape == (B,)`` (``()`` for one
            unbatched observation).
        """
        cond, batched = self._condition(x, *args, **kwargs)
        return FlowDistribution(
            self.transform, self.base(), cond, batched=batched, validate=self.validate
        )


def _check_observation_shape(
    shape: Sequence[int | None] | None,
) -> tuple[int | None, ...] | None:
    if shape is None:
        return None
    if isinstance(shape, str) or not isinstance(shape, (Sequence, torch.Size)):
        raise ArgumentTypeError(
            f"observation_shape must be a sequence, got {type(shape).__name__}",
            argument="observation_shape",
            where=("ConditionalFlow",),
        )
    for size in shape:
        integer(size, "observation_shape", "ConditionalFlow", minimum=0, optional=True)
    return tuple(shape)


def _matches(shape: tuple[int, ...], pattern: tuple[int | None, ...]) -> bool:
    return len(shape) == len(pattern) and all(
        p is None or s == p for s, p in zip(shape, pattern, strict=True)
    )
