"""Input validation shared by every layer, chain, graph and flow: types, shapes, dtype,
device, conditions and finiteness.

Metadata checks (everything but finiteness) always run; the NaN/Inf check reads the data and
runs only when validation is on (:mod:`hybridflow.autograd.validation`). Every check raises
:class:`~hybridflow.errors.InputError` (a ``ValueError``) or
:class:`~hybridflow.errors.InputTypeError` (a ``TypeError``) located at ``where``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import Tensor, nn

from hybridflow.autograd.scopes import NestingCount
from hybridflow.autograd.validation import data_checks
from hybridflow.errors import InputError, InputTypeError

__all__ = [
    "autocast_condition",
    "check_batch",
    "check_condition",
    "check_condition_like",
    "check_entry",
    "check_finite",
    "check_input",
    "check_like",
    "first_parameter",
    "inside_chain",
    "is_inside_chain",
    "layer_place",
    "named_layer_errors",
    "required_condition",
]


_DEPTH = NestingCount()
"""How many chains are running their layers: while positive, the outermost chain has already
checked what entered it, so layers skip the full-tensor finiteness pass (one per layer would
cost a device sync each)."""


def inside_chain() -> AbstractContextManager[None]:
    """Mark the enclosed calls as running inside a chain that validated its input."""
    return _DEPTH.entered()


def is_inside_chain() -> bool:
    """Whether the caller runs as a layer of a chain (the chain validated the entry)."""
    return _DEPTH.active


def check_finite(
    tensor: Tensor,
    where: str,
    *,
    validate: bool | None = None,
    what: str = "input",
    fix: str = "an inverse cannot reconstruct from non-finite values",
) -> None:
    """Raise :class:`InputError` naming ``where`` if ``tensor`` has NaN or Inf entries.

    Skipped inside a chain (its entry checked) and when validation is off for ``validate``
    (see :func:`~hybridflow.autograd.validation.data_checks`): the check reads every entry.
    """
    if not is_inside_chain() and data_checks(validate):
        _refuse_non_finite(tensor, where, what, fix)


def _refuse_non_finite(tensor: Tensor, where: str, what: str, fix: str) -> None:
    # detached: isfinite of a tensor requiring grad records (and saves it for) a graph
    finite = torch.isfinite(tensor.detach())
    if finite.all():
        return
    bad = int((~finite).sum())
    raise InputError(
        f"{what} has {bad} NaN/Inf value(s) out of {tensor.numel()}; {fix}", where=(where,)
    )


def first_parameter(module: nn.Module) -> Tensor | None:
    """The first floating-point parameter (else buffer) of ``module``: its dtype and device
    are what the module computes in. ``None`` for modules holding neither."""
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor
    for tensor in module.buffers():
        if tensor.is_floating_point():
            return tensor
    return None


def check_like(tensor: Tensor, reference: Tensor, where: str, what: str = "input") -> None:
    """Refuse a floating ``tensor`` whose dtype or device differs from the parameter
    ``reference``'s (nothing would promote or move it silently afterwards)."""
    if tensor.dtype != reference.dtype:
        raise InputTypeError(
            f"{what} is {tensor.dtype} but the parameters are {reference.dtype}; convert the "
            f"data (.to({reference.dtype})) or the module (.to({tensor.dtype}))",
            where=(where,),
        )
    if tensor.device != reference.device:
        raise InputTypeError(
            f"{what} is on device {tensor.device} but the parameters are on "
            f"{reference.device}; move the data or the module (.to(device)) to one device",
            where=(where,),
        )


def check_batch(tensor: object, where: str, what: str = "input") -> Tensor:
    """A tensor with a non-empty batch dimension first; return it."""
    if not isinstance(tensor, Tensor):
        raise InputTypeError(
            f"expected a torch.Tensor {what}, got {type(tensor).__name__}", where=(where,)
        )
    if tensor.dim() == 0:
        raise InputError(f"{what} must have a batch dimension first, got a scalar", where=(where,))
    if tensor.shape[0] == 0:
        raise InputError(
            f"empty batch: {what} has shape {tuple(tensor.shape)}; give at least one sample",
            where=(where,),
        )
    return tensor


def check_input(
    tensor: object,
    where: str,
    channels: int,
    spatial_dims: int | None,
    module: nn.Module | None = None,
) -> None:
    """Check a layer input: a floating tensor of shape ``(B, channels, *spatial)``, ``B > 0``.

    Args:
        tensor: what the caller passed.
        where: the layer's name for the message.
        channels: expected size of dimension 1.
        spatial_dims: expected number of spatial dimensions (0 for vectors ``(B, D)``), or
            ``None`` to accept any.
        module: the layer; when given (and the layer runs outside a chain, whose entry
            checked this already), the input's dtype and device must be its parameters'.
    """
    if not isinstance(tensor, Tensor):
        raise InputTypeError(
            f"expected a torch.Tensor, got {type(tensor).__name__}", where=(where,)
        )
    if tensor.dim() < 2:
        raise InputError(
            f"expected a batch of shape (B, {channels}, ...), got shape {tuple(tensor.shape)}",
            where=(where,),
        )
    if spatial_dims is not None and tensor.dim() != 2 + spatial_dims:
        layout = {0: "(B, C)", 1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, D, H, W)"}
        raise InputError(
            f"expected rank {2 + spatial_dims} input {layout.get(spatial_dims, '')}, "
            f"got shape {tuple(tensor.shape)}",
            where=(where,),
        )
    if tensor.shape[1] != channels:
        raise InputError(
            f"expected {channels} channels/features in dimension 1, got shape "
            f"{tuple(tensor.shape)}",
            where=(where,),
        )
    if not tensor.is_floating_point():
        raise InputTypeError(
            f"expected a floating-point tensor, got {tensor.dtype}", where=(where,)
        )
    if tensor.shape[0] == 0:
        raise InputError(
            f"empty batch: input has shape {tuple(tensor.shape)}; give at least one sample",
            where=(where,),
        )
    if module is not None and not is_inside_chain():
        reference = first_parameter(module)
        if reference is not None:
            check_like(tensor, reference, where)


def autocast_condition(cond: object, x: Tensor) -> object:
    """The condition in the dtype the transform expects, under autocast.

    Under :func:`torch.autocast` on ``x``'s device, a summary network returns its condition in
    the autocast dtype (``bfloat16``, ``float16``) while the flow runs in its parameters'
    precision (``x.dtype``, float32 say). Such a condition is cast to ``x.dtype`` here, where
    it enters the flow: the cast is differentiable, so the condition's gradient flows back to
    the summary network in the summary's own dtype, and the couplings see one dtype. Anything
    else (outside autocast, another dtype or device, not a tensor) is returned unchanged, so
    that :func:`check_condition` still refuses a genuine mismatch.
    """
    if not isinstance(cond, Tensor) or cond.dtype == x.dtype or cond.device != x.device:
        return cond
    device_type = x.device.type
    if (
        x.is_floating_point()
        and torch.is_autocast_enabled(device_type)
        and cond.dtype == torch.get_autocast_dtype(device_type)
    ):
        return cond.to(x.dtype)
    return cond


def required_condition(
    cond: object, where: str, cond_features: int, built: str = "layer"
) -> Tensor:
    """The condition of a module built with ``cond_features > 0``, refused when it is missing
    or not a tensor (the messages name what was built: a ``"layer"``, a ``"flow"``)."""
    if cond is None:
        raise InputError(
            f"missing condition; the {built} was built with cond_features={cond_features}",
            where=(where,),
        )
    if not isinstance(cond, Tensor):
        raise InputTypeError(
            f"condition must be a torch.Tensor, got {type(cond).__name__}", where=(where,)
        )
    return cond


def check_condition_like(cond: Tensor, x: Tensor, where: str) -> None:
    """Refuse a condition whose dtype or device is not the input's."""
    if cond.dtype != x.dtype or cond.device != x.device:
        raise InputTypeError(
            f"condition is {cond.dtype} on {cond.device} but the input is {x.dtype} "
            f"on {x.device}; move both to one dtype and device",
            where=(where,),
        )


def check_condition(cond: object, x: Tensor, where: str, cond_features: int) -> None:
    """Check a condition against the layer's declared ``cond_features`` and the input ``x``.

    Unconditional layers (``cond_features == 0``) accept and ignore any condition. A
    condition is either a vector ``(B, cond_features)`` (broadcast over space) or a tensor
    with the same spatial shape as ``x``: ``(B, cond_features, *x.shape[2:])``.
    """
    if cond_features == 0:
        return  # an unconditional layer ignores the condition its chain passes to every layer
    cond = required_condition(cond, where, cond_features)
    check_condition_like(cond, x, where)
    spatial = tuple(x.shape[2:])
    ok_vector = cond.dim() == 2
    ok_field = cond.dim() == x.dim() and tuple(cond.shape[2:]) == spatial
    if (
        cond.dim() < 2
        or cond.shape[0] != x.shape[0]
        or cond.shape[1] != cond_features
        or not (ok_vector or ok_field)
    ):
        expected = f"(B={x.shape[0]}, {cond_features})"
        if spatial:
            expected += f" or (B={x.shape[0]}, {cond_features}, {', '.join(map(str, spatial))})"
        raise InputError(
            f"condition has shape {tuple(cond.shape)}, expected {expected}", where=(where,)
        )


def layer_place(index: int, layer: nn.Module) -> str:
    """How errors name a chain's layer: ``"Chain layer 3 (AffineCoupling)"`` (an entry of
    :attr:`HybridflowError.where <hybridflow.errors.HybridflowError.where>`)."""
    return f"Chain layer {index} ({type(layer).__name__})"


def check_entry(
    x: object,
    cond: object,
    steps: Sequence[tuple[int, nn.Module]],
    *,
    finite: bool,
    inverse: bool = False,
) -> None:
    """Check what enters a chain, once, before any layer runs (so before ActNorm initialises
    on it, and before any layer promotes its dtype).

    Metadata: ``x`` a floating tensor with a non-empty batch; its dtype and device those of
    the first layer (in pass order) holding floating parameters, which the error names; a
    condition, if given, a tensor of that dtype and device; none missing when a layer takes
    one. With ``finite`` also the data: no NaN/Inf in ``x`` or the condition.

    Args:
        x: the chain's input.
        cond: its condition, or ``None``.
        steps: ``(index, layer)`` in the order the pass applies them.
        finite: run the NaN/Inf checks (a full pass over the data, a device sync on GPU).
        inverse: whether this is the inverse pass (for the messages).
    """
    first = layer_place(*steps[0]) if steps else "Chain"
    what = "inverse input" if inverse else "input"
    x = check_batch(x, first, what)
    if not x.is_floating_point():
        raise InputTypeError(f"expected a floating-point tensor, got {x.dtype}", where=(first,))
    reference, owner = None, first
    for index, layer in steps:
        reference = first_parameter(layer)
        if reference is not None:
            owner = layer_place(index, layer)
            check_like(x, reference, owner, what)
            break
    if cond is None:
        for index, layer in steps:
            if getattr(layer, "takes_condition", False):
                raise InputError(
                    "missing condition; the layer takes one: call chain(x, cond)",
                    where=(layer_place(index, layer),),
                )
    else:
        if not isinstance(cond, Tensor):
            raise InputTypeError(
                f"condition must be a torch.Tensor, got {type(cond).__name__}", where=(first,)
            )
        check_like(cond, x if reference is None else reference, owner, "condition")
    if finite:
        fix = (
            "an inverse cannot reconstruct from non-finite values"
            if inverse
            else "every output and gradient would be NaN; repair or drop such samples"
        )
        _refuse_non_finite(x, first, what, fix)
        if isinstance(cond, Tensor):
            _refuse_non_finite(cond, first, "condition", fix)


@contextmanager
def named_layer_errors(index: int, layer: nn.Module) -> Iterator[None]:
    """Locate input errors raised by a chain's layer ``index`` at its place in the chain
    (``error.where``); a plain ``ValueError``/``TypeError`` of a user's layer becomes an input
    error there."""
    try:
        yield
    except (InputError, InputTypeError) as error:
        error.located(layer_place(index, layer))
        raise
    except (ValueError, TypeError) as error:
        if type(error) not in (ValueError, TypeError):
            raise
        kind = InputTypeError if type(error) is TypeError else InputError
        raise kind(str(error), where=(layer_place(index, layer),)) from error
