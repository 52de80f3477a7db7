"""The backward walk of a chain: each layer rebuilds its input from its output, in reverse."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial

from torch import Tensor

from hybridflow.autograd.aliases import parameter_aliases
from hybridflow.autograd.checks import inside_chain, named_layer_errors
from hybridflow.autograd.microbatch import reconstruct_in_slices
from hybridflow.autograd.module import InvertibleModule, Reconstruction, vjp_from_input
from hybridflow.autograd.record import at_layer
from hybridflow.autograd.replay import ReplayState
from hybridflow.autograd.running_stats import frozen_running_stats
from hybridflow.autograd.tiling import TileSize, tiled

__all__ = ["reconstruct_steps"]


def reconstruct_steps(
    steps: Sequence[tuple[int, InvertibleModule]],
    params: Sequence[Tensor],
    start: tuple[Tensor, Tensor, Tensor, Tensor | None],
    *,
    inverse: bool,
    replay: ReplayState,
    slices: int,
    tile_size: TileSize | None,
) -> Reconstruction:
    """Walk a pass of ``steps`` (``(index, layer)`` in the order the pass applied them)
    backwards from ``start``, the pass's ``(output, grad_output, grad_logdet, cond)``: each
    layer rebuilds its input and back-propagates.

    Parameter gradients are gathered per tensor of ``params`` (the chain's parameters; shared
    ones accumulate); condition gradients are summed over layers. Under an active
    :class:`~hybridflow.autograd.record.PassRecord`, each rebuilt input is measured against its
    fingerprint; a layer whose input was kept (an anchor) is differentiated from it instead,
    exactly. With ``slices > 1`` each layer runs on that many slices of the batch, each with
    the layer's random stream from its start (as each slice of a sliced forward pass). Running
    statistics (BatchNorm) are left as the forward pass left them.
    """
    output, grad_output, grad_logdet, cond = start
    position = {id(p): k for k, p in enumerate(params)}
    grad_params: list[Tensor | None] = [None] * len(params)
    grad_cond: Tensor | None = None
    h, grad_h = output, grad_output
    with inside_chain(), replay.layers(), tiled(tile_size):
        for index, layer in reversed(steps):
            layer_params = tuple(layer.parameters())
            with (
                at_layer(index, layer) as record,
                replay.layer(index) if slices == 1 else nullcontext(),
                named_layer_errors(index, layer),
                parameter_aliases(layer),
                frozen_running_stats(layer),
            ):
                anchor = None if record is None else record.anchor()
                if anchor is not None:  # exact: differentiate the pass from its kept input
                    start, rule = anchor, partial(vjp_from_input, layer, inverse=inverse)
                else:
                    start, rule = h, partial(layer.reconstruct_vjp, inverse=inverse)
                if slices > 1:
                    result = reconstruct_in_slices(
                        rule,
                        start,
                        grad_h,
                        grad_logdet,
                        cond,
                        slices=slices,
                        each=partial(_slice_stream, replay, index),
                    )
                else:
                    result = rule(start, grad_h, grad_logdet, cond)
                h, grad_h = result.input, result.grad_input
                if record is not None:
                    record.check_input(h, exact=anchor is not None)
            if result.grad_cond is not None:
                grad_cond = result.grad_cond if grad_cond is None else grad_cond + result.grad_cond
            for param, grad in zip(layer_params, result.grad_params, strict=True):
                if grad is not None:
                    k = position[id(param)]
                    grad_params[k] = grad if grad_params[k] is None else grad_params[k] + grad
    return Reconstruction(h, grad_h, grad_cond, tuple(grad_params))


def _slice_stream(replay: ReplayState, index: int, row: int) -> AbstractContextManager[None]:
    """Layer ``index``'s random stream for the slice of the batch starting at ``row``."""
    return replay.at_row(row).layer(index)
