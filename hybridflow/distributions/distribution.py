"""``FlowDistribution``: a normalizing flow with a fixed condition, as a torch distribution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from hybridflow.autograd.checks import autocast_condition, check_finite, first_parameter
from hybridflow.autograd.module import InvertibleModule
from hybridflow.autograd.validation import validation_scope
from hybridflow.errors import InputError, InputTypeError, ModifiedError

__all__ = ["FlowDistribution"]


class FlowDistribution(Distribution):
    r"""The distribution of :math:`\theta = T^{-1}(z; c)`, :math:`z \sim p_Z`.

    **Direction.** The transform :math:`T` maps a parameter :math:`\theta` to a latent
    :math:`z` (its ``forward`` is the *normalizing* direction). By the change of variables,

    .. math::
        \log q(\theta \mid c) = \log p_Z(T(\theta; c)) + \log |\det \partial_\theta T(\theta; c)|,

    which :meth:`log_prob` computes with one forward pass. Sampling draws :math:`z \sim p_Z`
    and runs ``transform.inverse`` (the *generative* direction); the log density of a sample
    is then :math:`\log p_Z(z) - \log |\det \partial_z T^{-1}(z; c)|`, from the same pass. A
    transform built in the generative direction can be used by wrapping it in
    :class:`~hybridflow.layers.Inverse`.

    **Shapes.** ``batch_shape`` is ``(B,)`` for a condition ``c`` of shape ``(B, ...)`` and
    ``()`` without one; ``event_shape`` is the base's (``(D,)`` for vectors, ``(C, H, W)`` for
    images). Following zuko, ``sample((n,))`` returns ``(n, *batch_shape, *event_shape)``, and
    :meth:`log_prob` takes ``(*sample_shape, *batch_shape, *event_shape)`` (any leading shape
    that broadcasts against ``batch_shape``) and returns ``(*sample_shape, *batch_shape)``.
    Samples and conditions are flattened into one batch for the transform, so ``n * B`` events
    go through the flow at once.

    **Gradients.** :meth:`rsample` and :meth:`rsample_and_log_prob` are differentiable with
    respect to the transform's parameters and the condition (and thus the summary network that
    produced it); with a :class:`~hybridflow.Chain` in ``"invert"`` mode the backward pass
    reconstructs the activations instead of storing them. :meth:`sample` and
    :meth:`sample_and_log_prob` run without gradients.

    Args:
        transform: the invertible map :math:`T` (``forward(theta, cond) -> (z, logdet)``).
        base: the latent distribution :math:`p_Z`, with ``batch_shape == ()``.
        cond: the condition ``(B, ...)`` passed to every call of the transform, or ``None``.
        batched: ``False`` for one condition ``(1, ...)`` whose distribution has
            ``batch_shape == ()`` (one unbatched observation).
        validate: data-dependent checks (NaN/Inf in the values given to :meth:`log_prob`),
            done here once: the transform runs without its own. ``None`` follows
            :class:`hybridflow.set_validation`.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012 (torch's API)
    has_rsample = True

    def __init__(
        self,
        transform: InvertibleModule,
        base: Distribution,
        cond: Tensor | None,
        *,
        batched: bool = True,
        validate: bool | None = None,
    ) -> None:
        if cond is not None and not batched and cond.shape[0] != 1:
            raise InputError(
                f"an unbatched condition must have batch size 1, got shape {tuple(cond.shape)}",
                where=("FlowDistribution",),
            )
        self.validate = validate
        self.transform = transform
        # what the transform computed with when the distribution was built (see _transform)
        self._parameter = first_parameter(transform)
        self.base = base
        self.cond = cond
        batched = batched and cond is not None
        batch_shape = torch.Size(cond.shape[:1]) if batched else torch.Size()
        super().__init__(batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    def __repr__(self) -> str:
        return (
            f"FlowDistribution(batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)})"
        )

    # -- helpers ---------------------------------------------------------------------------
    def _condition(self, shape: torch.Size) -> Tensor | None:
        """The condition repeated for a flat batch of events of leading ``shape``."""
        if self.cond is None:
            return None
        cond_event = self.cond.shape[1:]
        cond = self.cond if self.batch_shape else self.cond[0]
        return cond.expand(*shape, *cond_event).reshape(-1, *cond_event)

    def _leading_shape(self, value: Tensor) -> torch.Size:
        """Broadcast the leading (non-event) shape of ``value`` against ``batch_shape``."""
        where = ("FlowDistribution.log_prob",)
        if not isinstance(value, Tensor):
            raise InputTypeError(f"expected a tensor, got {type(value).__name__}", where=where)
        event_dims = len(self.event_shape)
        if value.dim() < event_dims or value.shape[value.dim() - event_dims :] != self.event_shape:
            raise InputError(
                f"value of shape {tuple(value.shape)} does not end with the event shape "
                f"{tuple(self.event_shape)}",
                where=where,
            )
        lead = value.shape[: value.dim() - event_dims]
        try:
            shape = torch.broadcast_shapes(lead, self.batch_shape)
        except RuntimeError as error:
            raise InputError(
                f"value of shape {tuple(value.shape)} has leading shape {tuple(lead)}, which "
                f"does not broadcast against batch_shape {tuple(self.batch_shape)}",
                where=where,
            ) from error
        check_finite(
            value, where[0], validate=self.validate, what="value", fix="its density is undefined"
        )
        return shape

    def _transform(
        self, value: Tensor, cond: Tensor | None, inverse: bool
    ) -> tuple[Tensor, Tensor]:
        """Run the transform (its inverse) without data checks: what enters it was checked
        here (values), by the flow (the condition) or drawn from the base (latents). Under
        autocast, a condition in the autocast dtype is cast to the value's dtype
        (:func:`~hybridflow.autograd.checks.autocast_condition`)."""
        if first_parameter(self.transform) is not self._parameter:
            # built inside torch.func.functional_call and used outside it (or the reverse):
            # the condition comes from one set of parameters, the transform would run with
            # another, and gradients with respect to the call's parameters would be zero
            raise ModifiedError(
                "the flow's parameters were swapped since this distribution was built (it "
                "escaped a torch.func.functional_call); call log_prob/sample inside the call: "
                "wrap them in a module whose forward builds the distribution and uses it",
                where=("FlowDistribution",),
            )
        args = (value,) if cond is None else (value, autocast_condition(cond, value))
        with validation_scope(False):
            if inverse:
                return self.transform.inverse(*args)
            return self.transform(*args)

    @staticmethod
    def _as_size(sample_shape: Sequence[int] | int) -> torch.Size:
        if isinstance(sample_shape, int):
            return torch.Size((sample_shape,))
        return torch.Size(sample_shape)

    # -- the distribution API --------------------------------------------------------------
    def log_prob(self, value: Tensor) -> Tensor:
        """Log density of ``value`` ``(*sample_shape, *batch_shape, *event_shape)``.

        Returns:
            ``(*sample_shape, *batch_shape)``.
        """
        shape = self._leading_shape(value)
        flat = value.expand(*shape, *self.event_shape).reshape(-1, *self.event_shape)
        z, logdet = self._transform(flat, self._condition(shape), inverse=False)
        return (self.base.log_prob(z) + logdet).reshape(shape)

    def rsample_and_log_prob(self, sample_shape: Sequence[int] | int = ()) -> tuple[Tensor, Tensor]:
        """Reparametrised samples and their log densities, from one inverse pass.

        Returns:
            ``(samples, log_prob)`` of shapes ``(*sample_shape, *batch_shape, *event_shape)``
            and ``(*sample_shape, *batch_shape)``.
        """
        shape = self._as_size(sample_shape) + self.batch_shape
        z = self.base.rsample(shape).reshape(-1, *self.event_shape)
        theta, logdet_inverse = self._transform(z, self._condition(shape), inverse=True)
        log_prob = self.base.log_prob(z) - logdet_inverse
        return theta.reshape(*shape, *self.event_shape), log_prob.reshape(shape)

    def rsample(self, sample_shape: Sequence[int] | int = ()) -> Tensor:
        """Reparametrised samples ``(*sample_shape, *batch_shape, *event_shape)``."""
        shape = self._as_size(sample_shape) + self.batch_shape
        z = self.base.rsample(shape).reshape(-1, *self.event_shape)
        theta, _ = self._transform(z, self._condition(shape), inverse=True)
        return theta.reshape(*shape, *self.event_shape)

    def sample(self, sample_shape: Sequence[int] | int = ()) -> Tensor:
        """Samples ``(*sample_shape, *batch_shape, *event_shape)``, without gradients."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def sample_and_log_prob(self, sample_shape: Sequence[int] | int = ()) -> tuple[Tensor, Tensor]:
        """Samples and their log densities, without gradients (see
        :meth:`rsample_and_log_prob`)."""
        with torch.no_grad():
            return self.rsample_and_log_prob(sample_shape)
