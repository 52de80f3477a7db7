r"""A coupling's passes and reconstructing rule, run tile by tile over the spatial dimensions.

A coupling's conditioner is the only part of it that looks at neighbouring positions; with a
bounded receptive field (its halo), the conditioner output over a tile's core is exact when
computed from the pass-through half over the core grown by the halo. Per tile the rule runs
the conditioner forward with grad on, inverts and differentiates the elementwise map on the
core, and back-propagates the core's :math:`\bar h` through the conditioner at once, so only
one tile's hidden maps are alive at a time:

* the rebuilt input half and its gradient are written core by core;
* the pass-through half's gradient is the sum of the tiles' contributions over their extents
  (halos overlap: a position feeds the conditioner of every tile whose extent holds it);
* parameter gradients, and the gradient of a vector condition, are summed over tiles; a field
  condition is cut like the input and its gradient accumulated like the pass-through half's.

At the border of the image a tile's extent is clipped, and the conditioner's own padding
then supplies exactly what the untiled pass sees there; at inner borders the halo supplies
real neighbours. Gradients therefore equal the untiled ones up to the order of summation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hybridflow.autograd import Reconstruction, TileSize, tile_grid, vjp_wrt
from hybridflow.autograd.tiling import Tile

if TYPE_CHECKING:
    from hybridflow.layers.coupling.base import CouplingLayer

__all__ = ["tiled_pass", "tiled_reconstruct"]


def _tiles(layer: CouplingLayer, x: Tensor, tile_size: TileSize) -> list[Tile]:
    return tile_grid(tuple(x.shape[2:]), tile_size, layer.spatial_halo())


def _cut(cond: Tensor | None, region: tuple[slice, ...]) -> Tensor | None:
    """The condition a tile's conditioner sees: a field cut to ``region``, a vector whole."""
    if cond is None or cond.dim() == 2:
        return cond
    return cond[(slice(None), slice(None), *region)]


def tiled_pass(
    layer: CouplingLayer, x: Tensor, cond: Tensor | None, *, inverse: bool, tile_size: TileSize
) -> tuple[Tensor, Tensor]:
    """The layer's forward (or inverse) pass, computed tile by tile; for use under no_grad."""
    cond = cond if layer.cond_features > 0 else None
    x1, x2 = layer._split(x)
    transform = layer._inverse_transform if inverse else layer._transform
    out2 = torch.empty_like(x2)
    logdet = x.new_zeros(x.shape[0])
    every = (slice(None), slice(None))
    for tile in _tiles(layer, x, tile_size):
        h = layer._condition(x1[(*every, *tile.extent)], _cut(cond, tile.extent))
        core = (*every, *tile.core)
        out2[core], part_logdet = transform(x2[core], h[(*every, *tile.inner)])
        logdet = logdet + part_logdet
    return torch.cat([x1, out2], dim=1), logdet


def _leaf(tensor: Tensor | None, requires_grad: bool) -> Tensor | None:
    return None if tensor is None else tensor.detach().requires_grad_(requires_grad)


def _add(total: Tensor | None, part: Tensor | None) -> Tensor | None:
    return part if total is None else total if part is None else total + part


def tiled_reconstruct(
    layer: CouplingLayer,
    output: Tensor,
    grad_output: Tensor,
    grad_logdet: Tensor,
    cond: Tensor | None,
    *,
    inverse: bool,
    tile_size: TileSize,
) -> Reconstruction:
    """:meth:`CouplingLayer.reconstruct_vjp <hybridflow.layers.CouplingLayer.reconstruct_vjp>`
    run tile by tile; the same result, with one tile's conditioner activations alive."""
    cond = cond if layer.cond_features > 0 else None
    wants_cond = cond is not None and cond.requires_grad
    out1, out2 = layer._split(output)
    grad1, grad2 = layer._split(grad_output)
    rebuilt2 = torch.empty_like(out2)
    grad_in2 = torch.empty_like(out2)
    grad_pass = torch.zeros_like(out1)
    grad_cond = torch.zeros_like(cond) if wants_cond and cond.dim() > 2 else None
    grad_vector: Tensor | None = None
    grad_params: list[Tensor | None] = [None] * len(tuple(layer.parameters()))
    every = (slice(None), slice(None))
    for tile in _tiles(layer, output, tile_size):
        extent, core = (*every, *tile.extent), (*every, *tile.core)
        passthrough = out1[extent].detach().requires_grad_(True)
        cond_part = _leaf(_cut(cond, tile.extent), wants_cond)
        with torch.enable_grad():
            h = layer._condition(passthrough, cond_part)[(*every, *tile.inner)]
        with torch.no_grad():
            rebuilt2[core], grad_in2[core], grad_h = layer._elementwise_vjp(
                out2[core], h.detach(), grad2[core], grad_logdet, inverse
            )
        through = vjp_wrt((h,), (grad_h,), passthrough, cond_part, layer)
        grad_pass[extent] += through.grad_input
        if through.grad_cond is not None:
            if grad_cond is not None:
                grad_cond[extent] += through.grad_cond
            else:
                grad_vector = _add(grad_vector, through.grad_cond)
        grad_params = [_add(a, b) for a, b in zip(grad_params, through.grad_params, strict=True)]
    return Reconstruction(
        torch.cat([out1, rebuilt2], dim=1),
        torch.cat([grad1 + grad_pass, grad_in2], dim=1),
        grad_cond if grad_cond is not None else grad_vector,
        tuple(grad_params),
    )
