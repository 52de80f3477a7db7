"""The reconstructing rule: one ``torch.autograd.Function`` that runs a whole chain."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from hybridflow.autograd.drift import DriftGuard, PassRecord, recording
from hybridflow.autograd.module import Reconstruction
from hybridflow.autograd.replay import ReplayState
from hybridflow.autograd.validation import data_checks
from hybridflow.autograd.versions import Versions
from hybridflow.errors import ModifiedError, ReconstructionError

if TYPE_CHECKING:
    from hybridflow.autograd.chain import Chain

__all__ = [
    "ReconstructingFunction",
    "backward_from_saved",
    "check_finite_result",
    "keep_for_backward",
    "unpack_saved",
]

# Positions of a reconstructing Function's inputs: (chain, inverse or slices, x, cond, *params).
_X, _COND, _PARAMS = 2, 3, 4


class ReconstructingFunction(torch.autograd.Function):
    """Runs a :class:`~hybridflow.Chain` keeping only its output (and condition) for backward.

    Forward runs every layer under ``no_grad`` and saves the chain's output, its condition,
    the optional anchors and, on calls the drift guard checks, a fingerprint of each layer's
    input (a few numbers per sample); nothing else per layer. It also records the version
    counters of the chain's parameters and buffers. Backward first refuses to run if any of
    them, the output or the condition changed in place since
    (:class:`~hybridflow.errors.ModifiedError`), then walks the layers in reverse: each layer
    rebuilds its input from its output and returns the input, condition and parameter
    gradients (:meth:`~hybridflow.InvertibleModule.reconstruct_vjp`), the guard measures the
    rebuilt inputs against their fingerprints, and non-finite rebuilt values raise
    :class:`~hybridflow.errors.ReconstructionError` (unless the forward pass ran with
    validation off: ``validate=False``, under ``torch.compile``). The chain's parameters are inputs of this
    Function, so their gradients reach autograd as ordinary leaf gradients.

    Double backward is not supported: a backward asked to build a graph of the gradient
    (``create_graph=True``) raises at once, rather than returning a gradient that later
    differentiation would treat as a constant. (``once_differentiable`` only raises when the
    incoming gradient itself requires grad, so ``grad(sum(y), x, create_graph=True)`` would
    slip through it.)
    """

    @staticmethod
    def forward(
        ctx: Any,
        chain: Chain,
        inverse: bool,
        x: Tensor,
        cond: Tensor | None,
        *params: Tensor,
    ) -> tuple[Tensor, Tensor]:
        replay = ReplayState.capture(x.device, chain._seeds_layers())
        record = chain._pass_record(x)
        with torch.no_grad(), recording(record, checking=False):
            y, logdet = chain._run_layers(x, cond, inverse=inverse, replay=replay)
        if y is x:  # an empty chain: autograd needs a fresh output
            y = x.clone()
        ctx.inverse = inverse
        ctx.replay = replay
        keep_for_backward(ctx, chain, record, y, cond, params)
        return y, logdet

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor, grad_logdet: Tensor) -> tuple[Tensor | None, ...]:
        chain: Chain = ctx.chain
        if torch.is_grad_enabled():
            raise RuntimeError(
                "hybridflow: double backward (create_graph=True) through an invert-mode Chain "
                "is not supported; run that chain with mode='store' to differentiate its "
                "gradients"
            )
        return backward_from_saved(
            ctx,
            grad_y,
            grad_logdet,
            lambda y, cond: chain._reconstruct_layers(
                y, grad_y, grad_logdet, cond, inverse=ctx.inverse, replay=ctx.replay
            ),
        )


def keep_for_backward(
    ctx: Any,
    chain: Chain,
    record: PassRecord | None,
    y: Tensor,
    cond: Tensor | None,
    params: tuple[Tensor, ...],
) -> None:
    """What a reconstructing Function keeps at the end of its forward pass: the output, the
    condition and the record's fingerprints and anchors (saved tensors), the version counters
    of the chain's parameters and buffers, and the forward's validation setting.
    ``ctx.replay`` (autocast settings, seed) is the caller's to set."""
    ctx.chain = chain
    ctx.record = record
    ctx.versions = Versions(chain, params)
    ctx.has_cond = cond is not None
    ctx.check_finite = data_checks(chain.validate)
    layout, extra = record.saved() if record is not None else ({}, [])
    ctx.record_layout = layout
    ctx.save_for_backward(y, *([cond] if cond is not None else []), *extra)


def backward_from_saved(
    ctx: Any,
    grad_y: Tensor,
    grad_logdet: Tensor,
    reconstruct: Callable[[Tensor, Tensor | None], Reconstruction],
) -> tuple[Tensor | None, ...]:
    """The backward of a reconstructing Function around ``reconstruct(y, cond)``: refuse
    modified tensors, restore the record, reconstruct under the forward's autocast settings
    with the record checking, let the drift guard conclude, refuse rebuilt NaN/Inf, and
    return the gradients of the Function's inputs ``(chain, flag, x, cond, *params)``."""
    chain: Chain = ctx.chain
    where = chain._describe()
    saved = unpack_saved(ctx, where)
    ctx.versions.check(chain, where)
    y = saved[0]
    cond = saved[1] if ctx.has_cond else None
    record: PassRecord | None = ctx.record
    if record is not None:
        record.restore(ctx.record_layout, saved[1 + ctx.has_cond :])
    if cond is not None:
        cond = cond.detach().requires_grad_(ctx.needs_input_grad[_COND])
    with ctx.replay.autocast_state(), recording(record, checking=True):
        result = reconstruct(y, cond)
    if record is not None and record.fingerprints:
        chain._drift_guard.conclude(record, y.dtype, where)
    if ctx.check_finite:
        check_finite_result(result, y, grad_y, grad_logdet, chain._drift_guard, where)
    grad_x = result.grad_input if ctx.needs_input_grad[_X] else None
    grad_params = tuple(
        g if needed else None
        for g, needed in zip(result.grad_params, ctx.needs_input_grad[_PARAMS:], strict=True)
    )
    return (None, None, grad_x, result.grad_cond, *grad_params)


def unpack_saved(ctx: Any, where: str) -> tuple[Tensor, ...]:
    """``ctx.saved_tensors``, with autograd's in-place check reported as a ModifiedError."""
    try:
        return ctx.saved_tensors
    except RuntimeError as error:
        # the only RuntimeError unpacking raises: a saved tensor (the output, the condition)
        # was modified in place after the forward pass
        raise ModifiedError(
            "the chain's output or its condition was modified in place after the forward "
            "pass; reconstruction starts from them, so it would return wrong gradients. "
            "Clone the output before editing it",
            tensor="output or condition",
            where=(where,),
        ) from error


def check_finite_result(
    result: Reconstruction,
    output: Tensor,
    grad_output: Tensor,
    grad_logdet: Tensor,
    guard: DriftGuard,
    where: str,
) -> None:
    """Raise when reconstruction turned finite values into NaN/Inf.

    A NaN or Inf rebuilt anywhere in a chain reaches its rebuilt input and input gradient
    (every later inversion reads it), so checking those two is enough. When the forward
    output or the incoming gradients were not finite already, plain autograd would not be
    finite either, and nothing is raised. The guard then checks the next call, to name the
    layer.
    """
    if bool(torch.isfinite(result.input).all() & torch.isfinite(result.grad_input).all()):
        return
    sources = (output, grad_output, grad_logdet)
    if not all(bool(torch.isfinite(t).all()) for t in sources):
        return
    guard.check_next = True
    raise ReconstructionError(
        "reconstruction produced NaN/Inf where the forward pass and the incoming gradients "
        "were finite; an inverse is unstable on this batch. The next call is checked layer "
        "by layer to name the place; keep activations with anchor_every or "
        "on_drift='repair', or use mode='store'",
        error=float("inf"),
        where=(where,),
    )
