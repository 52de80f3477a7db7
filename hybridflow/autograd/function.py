"""The reconstructing rule: the one ``torch.autograd.Function`` that runs a chain of layers.

The Function knows no :class:`~hybridflow.Chain`: it runs any :class:`Reconstructible`, the
narrow interface a chain provides (a graph's invertible segments run as chains, so the
graph's runtime goes through the same Function).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import torch
from torch import Tensor, nn

from hybridflow.autograd.drift import DriftGuard
from hybridflow.autograd.microbatch import run_in_slices
from hybridflow.autograd.module import Reconstruction
from hybridflow.autograd.record import PassRecord, recording
from hybridflow.autograd.replay import ReplayState
from hybridflow.autograd.validation import validation_requested
from hybridflow.autograd.versions import Versions
from hybridflow.errors import ModifiedError, ReconstructionError

__all__ = [
    "Reconstructible",
    "ReconstructingFunction",
    "Slices",
    "check_finite_result",
    "unpack_saved",
]

_T = TypeVar("_T")

# Positions of the Function's inputs: (run, inverse, slices, x, cond, *params).
_X, _COND, _PARAMS = 3, 4, 5


class Slices(NamedTuple):
    """How many slices of the batch the reconstructing Function runs at a time.

    Attributes:
        forward: slices of the no-grad forward pass (1: the whole batch at once).
        backward: slices of each layer's reconstruction (1: the whole batch at once).
    """

    forward: int = 1
    backward: int = 1


class Reconstructible(Protocol):
    """What :class:`ReconstructingFunction` runs: an ``nn.Module`` (its parameters and buffers
    are watched by version counters) that applies layers and reconstructs through them.
    :class:`~hybridflow.Chain` provides it."""

    validate: bool | None

    @property
    def drift_guard(self) -> DriftGuard:
        """The guard that decides which calls are checked and concludes them."""
        ...

    def describe(self) -> str:
        """The name in messages."""
        ...

    def pass_record(self, x: Tensor) -> PassRecord | None:
        """What this call records (fingerprints, anchors), or ``None``."""
        ...

    def seeded_layers(self) -> Sequence[nn.Module]:
        """The layers this pass runs with reproducible random streams (none: empty)."""
        ...

    def run_layers(
        self, h: Tensor, cond: Tensor | None, *, inverse: bool, replay: ReplayState
    ) -> tuple[Tensor, Tensor]:
        """Apply every layer (forward or inverse pass), summing log determinants."""
        ...

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None,
        *,
        inverse: bool,
        replay: ReplayState,
        slices: int,
    ) -> Reconstruction:
        """Rebuild every layer's input in reverse and back-propagate (replaying ``replay``),
        each layer on ``slices`` slices of the batch."""
        ...


class ReconstructingFunction(torch.autograd.Function):
    """Runs a :class:`Reconstructible` keeping only its output (and condition) for backward.

    Forward runs every layer under ``no_grad``, on ``slices.forward`` slices of the batch one
    after another (each slice's output written into one tensor), and saves the output, the
    condition, the optional anchors and, on calls the drift guard checks, a fingerprint of
    each layer's input (a few numbers per sample); nothing else per layer. It also records
    the version counters of the run's parameters and buffers. Backward first refuses to run if
    any of them, the output or the condition changed in place since
    (:class:`~hybridflow.errors.ModifiedError`), then walks the layers in reverse, each on
    ``slices.backward`` slices (the run's ``reconstruct_vjp``): each layer rebuilds its input
    from its output and returns the input, condition and parameter gradients
    (:meth:`~hybridflow.InvertibleModule.reconstruct_vjp`), the guard measures the rebuilt
    inputs against their fingerprints, and non-finite rebuilt values raise
    :class:`~hybridflow.errors.ReconstructionError` (unless the forward pass ran with
    validation off: ``validate=False``, under ``torch.compile``). The parameters are inputs
    of this Function, so their gradients reach autograd as ordinary leaf gradients.

    Random numbers: a layer runs each slice with a stream seeded from the call's seed, the
    layer and the slice's first row (:class:`~hybridflow.autograd.replay.ReplayState`), in
    the forward pass and in its reconstruction alike, so slice ``k`` draws the same numbers
    in both passes; the global generator advances by one draw per call, sliced or not.

    Double backward is not supported: a backward asked to build a graph of the gradient
    (``create_graph=True``) raises at once, rather than returning a gradient that later
    differentiation would treat as a constant. (``once_differentiable`` only raises when the
    incoming gradient itself requires grad, so ``grad(sum(y), x, create_graph=True)`` would
    slip through it.)
    """

    @staticmethod
    def forward(
        ctx: Any,
        run: Reconstructible,
        inverse: bool,
        slices: Slices,
        x: Tensor,
        cond: Tensor | None,
        *params: Tensor,
    ) -> tuple[Tensor, Tensor]:
        _refuse_traced_autograd(run.describe())
        replay = ReplayState.capture(x.device, run.seeded_layers())
        record = run.pass_record(x)
        compiling = torch.compiler.is_compiling()
        ctx.counted = not compiling  # a compiled call is counted in backward (count_call)
        if ctx.counted:
            run.drift_guard.count_call()
        args = (run, inverse, slices, replay, record, x, cond)
        if compiling and record is not None and record.watches_layers:
            # traced, a checked call broke the graph at every layer's fingerprint and Dynamo
            # compiled the per-layer bookkeeping frame by frame, up to its recompile limit
            y, logdet = eagerly(_forward_pass, *args)
        else:
            y, logdet = _forward_pass(*args)
        if y is x:  # layers that return their input: autograd needs a fresh output
            y = x.clone()
        ctx.run = run
        ctx.inverse = inverse
        ctx.replay = replay
        ctx.slices = slices.backward
        ctx.record = record
        ctx.versions = Versions(run, params)  # type: ignore[arg-type]
        ctx.has_cond = cond is not None
        # the reconstruction's check runs in backward, which is eager even under torch.compile
        ctx.check_finite = validation_requested(run.validate)
        layout, extra = record.saved() if record is not None else ({}, [])
        ctx.record_layout = layout
        ctx.save_for_backward(y, *([cond] if cond is not None else []), *extra)
        return y, logdet

    @staticmethod
    @torch.compiler.disable  # eager by design: see docs/architecture.md, torch.compile
    def backward(ctx: Any, grad_y: Tensor, grad_logdet: Tensor) -> tuple[Tensor | None, ...]:
        run: Reconstructible = ctx.run
        where = run.describe()
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"hybridflow: double backward (create_graph=True) through the invert-mode "
                f"{where} is not supported; run it with mode='store' (in a graph: pin its "
                "segment to 'store') to differentiate its gradients"
            )
        saved = unpack_saved(ctx, where)
        ctx.versions.check(run, where)
        y = saved[0]
        cond = saved[1] if ctx.has_cond else None
        record: PassRecord | None = ctx.record
        if record is not None:
            record.restore(ctx.record_layout, saved[1 + ctx.has_cond :])
        if cond is not None:
            cond = cond.detach().requires_grad_(ctx.needs_input_grad[_COND])
        if not ctx.counted:
            run.drift_guard.count_call()
        with ctx.replay.autocast_state(), recording(record, checking=True):
            result = run.reconstruct_vjp(
                y,
                grad_y,
                grad_logdet,
                cond,
                inverse=ctx.inverse,
                replay=ctx.replay,
                slices=ctx.slices,
            )
        if record is not None and record.fingerprints:
            run.drift_guard.conclude(record, y.dtype, where)
        if ctx.check_finite:
            check_finite_result(result, y, grad_y, grad_logdet, run.drift_guard, where)
        grad_x = result.grad_input if ctx.needs_input_grad[_X] else None
        grad_params = tuple(
            g if needed else None
            for g, needed in zip(result.grad_params, ctx.needs_input_grad[_PARAMS:], strict=True)
        )
        return (None, None, None, grad_x, result.grad_cond, *grad_params)


@torch.compiler.disable
def eagerly(call: Callable[..., _T], *args: object) -> _T:
    """``call(*args)`` outside torch.compile's graph (one graph break where it is called)."""
    return call(*args)


def _forward_pass(
    run: Reconstructible,
    inverse: bool,
    slices: Slices,
    replay: ReplayState,
    record: PassRecord | None,
    x: Tensor,
    cond: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The Function's forward pass: the layers without grad, recording into ``record``."""

    def layers(h: Tensor, c: Tensor | None, row: int) -> tuple[Tensor, Tensor]:
        return run.run_layers(h, c, inverse=inverse, replay=replay.at_row(row))

    with torch.no_grad(), recording(record, checking=False):
        return run_in_slices(layers, x, cond, slices=slices.forward)


def _refuse_traced_autograd(where: str) -> None:
    """Refuse to run under Dynamo's experimental ``trace_autograd_ops``.

    With it, a compiled step that calls ``backward()`` traces the backward itself and, in
    torch 2.13, never calls the backward of a Function it could not trace: every gradient
    behind the chain would silently stay ``None``. (Read from ``sys.modules``: importing
    Dynamo here would cost every first call a second.)
    """
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None and getattr(dynamo.config, "trace_autograd_ops", False):
        raise ReconstructionError(
            "an invert-mode chain cannot run with torch._dynamo.config.trace_autograd_ops="
            "True: a compiled backward would skip its reconstruction and leave the gradients "
            "None. Set it to False (the default), or use mode='store'",
            where=(where,),
        )


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
