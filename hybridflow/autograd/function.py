"""The reconstructing rule: one ``torch.autograd.Function`` that runs a whole chain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from hybridflow.autograd.replay import ReplayState

if TYPE_CHECKING:
    from hybridflow.autograd.chain import Chain

__all__ = ["ReconstructingFunction"]

# Positions of the Function's inputs: (chain, inverse, x, cond, *params).
_X, _COND, _PARAMS = 2, 3, 4


class ReconstructingFunction(torch.autograd.Function):
    """Runs a :class:`~hybridflow.Chain` keeping only its output (and condition) for backward.

    Forward runs every layer under ``no_grad`` and saves the chain's output, its condition and
    the optional anchors; nothing per layer. Backward walks the layers in reverse: each layer
    rebuilds its input from its output and returns the input, condition and parameter
    gradients (:meth:`~hybridflow.InvertibleModule.reconstruct_vjp`). The chain's parameters are
    inputs of this Function, so their gradients reach autograd as ordinary leaf gradients.

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
        anchors: dict[int, Tensor] = {}
        with torch.no_grad():
            y, logdet = chain._run_layers(x, cond, inverse=inverse, replay=replay, anchors=anchors)
        if y is x:  # an empty chain: autograd needs a fresh output
            y = x.clone()
        ctx.chain = chain
        ctx.inverse = inverse
        ctx.replay = replay
        ctx.has_cond = cond is not None
        ctx.anchor_positions = tuple(anchors)
        ctx.save_for_backward(y, *([cond] if cond is not None else []), *anchors.values())
        return y, logdet

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor, grad_logdet: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "hybridflow: double backward (create_graph=True) through an invert-mode Chain "
                "is not supported; run that chain with mode='store' to differentiate its "
                "gradients"
            )
        saved = ctx.saved_tensors
        y = saved[0]
        cond = saved[1] if ctx.has_cond else None
        anchors = dict(zip(ctx.anchor_positions, saved[1 + ctx.has_cond :], strict=True))
        if cond is not None:
            cond = cond.detach().requires_grad_(ctx.needs_input_grad[_COND])
        with ctx.replay.autocast_state():
            result = ctx.chain._reconstruct_layers(
                y,
                grad_y,
                grad_logdet,
                cond,
                inverse=ctx.inverse,
                replay=ctx.replay,
                anchors=anchors,
            )
        grad_x = result.grad_input if ctx.needs_input_grad[_X] else None
        grad_params = tuple(
            g if needed else None
            for g, needed in zip(result.grad_params, ctx.needs_input_grad[_PARAMS:], strict=True)
        )
        return (None, None, grad_x, result.grad_cond, *grad_params)
