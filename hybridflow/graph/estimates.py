r"""The cost model: bytes kept, working set and extra compute of a segment under a strategy.

Everything is estimated from the sample run (:mod:`hybridflow.graph.profile`): the sizes of the
tensors at the ports, the bytes each node's operations save for backward under plain autograd,
and each node's forward cost. Sizes of tensors whose first dimension is the batch, and the
nodes' own activations and costs, scale linearly with the batch size.

For a segment with nodes :math:`i = 1, \dots, L`: :math:`S_i` the bytes node :math:`i` saves
under plain autograd (its own activations), :math:`M_i` the largest of them, :math:`c_i` its
forward cost, :math:`|x_i|`, :math:`|y_i|` the sizes of its input and output, and
:math:`G_i = 3 M_i + |x_i| + |y_i|` the tensors alive while autograd goes back through it
(:data:`GRADIENT_COPIES`):

* ``store`` keeps :math:`\sum_i S_i` and the ports the nodes save (a tensor kept by several
  nodes or segments is counted once); working set :math:`\max_i G_i`; no extra compute.
* ``checkpoint`` keeps the segment's inputs; working set: what ``store`` would keep, rebuilt
  by the recomputation, plus :math:`\max_i G_i`; extra compute :math:`\sum_i c_i`.
* ``invert`` keeps the output, the condition and the anchors. A node is rebuilt one innermost
  invertible layer :math:`l` at a time (a network given as one node, too): with
  :math:`S_l, M_l` what the layer saves and :math:`|io_l|` its input and output, the working
  set is :math:`\max_i \max(f R_i + 2|x_i| + 2|y_i|,\ f' F_i + |x_i| + |y_i|)`, where
  :math:`R_i = \max_l (S_l + 3 M_l + 2 |io_l|)` is one layer rebuilt and back-propagated and
  :math:`F_i = \max_l (S_l + |io_l|)` one layer run without autograd; the whole-batch input,
  output and their gradients are alive meanwhile. Extra compute :math:`\sum_i r_i c_i`.

With ``tile_size``, a layer that runs tile by tile (a coupling with a convolutional
conditioner) keeps :math:`g_l (S_l + 3 M_l)` instead of :math:`S_l + 3 M_l` (and :math:`g_l
S_l` instead of :math:`S_l` in the forward pass), where :math:`g_l` is the share of the
layer's positions in its largest tile extent (core plus halo): its conditioner maps shrink
to one tile's, its input and output stay whole. The halos are computed twice or more: the
forward and the reconstruction cost :math:`o - 1` more, where :math:`o \ge 1` is the largest
ratio over the segment's tiled layers of positions computed (all extents) to positions.

Here :math:`f = \lceil B / k \rceil / B` for ``micro_batches=k`` (:math:`f' = f` when the
forward pass is sliced too, i.e. without anchors, else 1), and :math:`r_i = 1` for a node with
a hand-written reconstructing rule (the conditioner re-run of a coupling, the closed form of
ActNorm), 2 for the generic rule (an inverse and a forward pass). Micro-batching adds a small
per-slice overhead, :data:`MICRO_BATCH_OVERHEAD` of the reconstruction per extra slice, so the
planner slices only when memory requires it. The peak of a training step is estimated as the
gradients of the parameters, plus everything kept, plus the largest working set.

These are models, calibrated against measured peaks (``benchmarks/graph_memory.py``,
``benchmarks/largest_image.py``), not bounds: allocator fragmentation and temporaries of
individual operations can add a few percent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import nn

from hybridflow.autograd.microbatch import check_acts_per_sample
from hybridflow.autograd.tiling import TileSize, tile_grid
from hybridflow.graph.cost import CostModel, Estimate
from hybridflow.graph.layer_memory import LayerUse
from hybridflow.graph.nodes import Port
from hybridflow.graph.profile import GraphProfile
from hybridflow.graph.segments import Segment
from hybridflow.graph.strategy import Strategy

__all__ = [
    "GRADIENT_COPIES",
    "MICRO_BATCH_OVERHEAD",
    "SMALLEST_TILE",
    "Estimate",
    "estimate",
    "strategy_options",
    "tile_factors",
]

GRADIENT_COPIES = 3
"""Tensors the size of an activation alive per activation while autograd goes back through an
operation: the incoming gradient, the outgoing one, and a temporary of an elementwise rule."""

MICRO_BATCH_OVERHEAD = 0.05
"""Extra compute per additional micro-batch, as a fraction of the segment's reconstruction
(smaller kernels, one more call per node per slice). A tie-breaker more than a measurement."""


SMALLEST_TILE = 16
"""The smallest tile edge the planner considers: below it, the halos and the per-tile calls
cost more than the memory they save."""


def tile_factors(use: LayerUse, tile_size: TileSize | None) -> tuple[float, float]:
    """``(g, o)`` of a layer tiled by ``tile_size``: the share of its positions in its largest
    tile extent, and the positions computed over all extents per position (1, 1 untiled)."""
    if tile_size is None or not use.halo:
        return 1.0, 1.0
    sizes = (tile_size,) * len(use.spatial) if isinstance(tile_size, int) else tile_size
    largest = computed = 1.0
    for n, t, halo in zip(use.spatial, sizes, use.halo, strict=True):
        extents = [tile.extent[0] for tile in tile_grid((n,), t, (halo,))]
        largest *= max(e.stop - e.start for e in extents) / n
        computed *= sum(e.stop - e.start for e in extents) / n
    return largest, computed


def _tensor_ports(profile: GraphProfile, ports: Sequence[Port]) -> list[str]:
    """Tensor port names of ``ports`` (a tuple port stands for its items)."""
    names: list[str] = []
    for port in ports:
        key = str(port)
        if key in profile.ports:
            names.append(key)
        else:
            names.extend(profile.tuples.get(port.node, ()))
    return names


def estimate(segment: Segment, strategy: Strategy, costs: CostModel) -> Estimate:
    """The :class:`~hybridflow.graph.cost.Estimate` of ``segment`` run with ``strategy`` at
    the batch size of ``costs``."""
    profile, scale, size = costs.profile, costs.scale, costs.port_bytes
    batch_size = costs.batch_size
    nodes = [profile.nodes[name] for name in segment.nodes]
    saved = sum(n.saved_bytes for n in nodes) * scale
    saved_ports = frozenset(p for n in nodes for p in n.saved_ports)
    gradients = max(
        GRADIENT_COPIES * n.largest_saved * scale + sum(size(p) for p in (*n.reads, *n.writes))
        for n in nodes
    )
    forward = sum(n.cost for n in nodes) * scale
    if strategy.kind == "store":
        return Estimate(saved, saved_ports, gradients, 0.0, 0)
    if strategy.kind == "checkpoint":
        kept = [p for p in _tensor_ports(profile, segment.reads) if p not in _logdet_in(segment)]
        recomputed = saved + sum(size(p) for p in saved_ports - set(kept))
        return Estimate(0.0, frozenset(kept), recomputed + gradients, forward, 0)
    # invert: the chain keeps its output, its condition and the anchors
    length = len(segment.nodes)
    kept_ports = {segment.nodes[-1]}
    if segment.cond is not None:
        kept_ports.update(_tensor_ports(profile, [segment.cond]))
    if strategy.anchor_every is not None:
        kept_ports.update(
            segment.nodes[count - 1]
            for count in range(strategy.anchor_every, length, strategy.anchor_every)
        )
    slices = strategy.micro_batches
    fraction = math.ceil(batch_size / slices) / batch_size
    sliced_forward = slices > 1 and strategy.anchor_every is None
    working, overlap = 0.0, 1.0
    for node in nodes:
        x, y = size(node.reads[0]), size(node.name)
        layers = node.layers or (LayerUse(node.saved_bytes, node.largest_saved, 0),)
        rebuild = run = 0.0
        for u in layers:
            share, computed = tile_factors(u, strategy.tile_size)
            overlap = max(overlap, computed)
            maps = u.saved_bytes + GRADIENT_COPIES * u.largest_saved
            rebuild = max(rebuild, scale * (share * maps + 2 * u.io_bytes))
            run = max(run, scale * (share * u.saved_bytes + u.io_bytes))
        backward = fraction * rebuild + 2 * (x + y)
        forward_pass = (fraction if sliced_forward else 1.0) * run + x + y
        working = max(working, backward, forward_pass)
    rebuild_cost = sum((2 if n.generic_rule else 1) * n.cost for n in nodes) * scale
    extra = rebuild_cost * (1 + MICRO_BATCH_OVERHEAD * (slices - 1))
    extra += (rebuild_cost + forward) * (overlap - 1)
    drift = length if strategy.anchor_every is None else min(strategy.anchor_every, length)
    return Estimate(0.0, frozenset(kept_ports), working, extra, drift)


def _logdet_in(segment: Segment) -> set[str]:
    """The accumulated log determinant an invertible segment continues (added outside)."""
    return set() if segment.logdet_in is None else {str(segment.logdet_in)}


def strategy_options(
    segment: Segment,
    modules: Mapping[str, nn.Module | None],
    batch_size: int,
    max_inverted_run: int | None,
    flat: bool,
    profile: GraphProfile | None = None,
) -> list[Strategy]:
    """The strategies the planner considers for ``segment``.

    Autograd and operator segments: ``store`` and ``checkpoint``. Invertible segments also
    ``invert`` with anchors every 1, 2, 4, ... nodes and micro-batches 2, 4, ... up to the
    batch size, except for modules that couple samples, each untiled and (given the
    ``profile``, for segments with layers that can tile) with tiles of edge
    :data:`SMALLEST_TILE`, twice that, ... below the largest spatial size. With ``flat`` (no
    budget): ``invert`` for invertible segments and ``store`` for the others. A pinned
    segment has its pin only.
    """
    if segment.pin is not None:
        return [segment.pin]
    if segment.kind != "invertible":
        return [Strategy("store")] if flat else [Strategy("store"), Strategy("checkpoint")]
    length = len(segment.nodes)
    anchors: list[int | None] = [None] + [m for m in _powers_of_two(length - 1)]
    if max_inverted_run is not None:
        anchors = [m for m in anchors if min(m or length, length) <= max_inverted_run]
    slices = [1]
    if not flat and batch_size > 1 and _per_sample(segment, modules):
        slices += [k for k in _powers_of_two(batch_size - 1) if k > 1] + [batch_size]
    tiles: list[int | None] = [None]
    if not flat and profile is not None:
        largest = max(
            (max(u.spatial) for n in segment.nodes for u in profile.nodes[n].layers if u.halo),
            default=0,
        )
        tiles += [t for t in _powers_of_two(largest - 1) if t >= SMALLEST_TILE]
    inverted = [Strategy("invert", m, k, t) for m in anchors for k in slices for t in tiles]
    if flat:
        return inverted
    return [Strategy("store"), Strategy("checkpoint"), *inverted]


def _per_sample(segment: Segment, modules: Mapping[str, nn.Module | None]) -> bool:
    """Whether every module of the segment acts on each sample alone (may be micro-batched)."""
    try:
        for name in segment.nodes:
            module = modules.get(name)
            if module is not None:
                check_acts_per_sample(module, f"Graph node {name!r}")
    except ValueError:
        return False
    return True


def _powers_of_two(limit: int) -> list[int]:
    values, value = [], 1
    while value <= limit:
        values.append(value)
        value *= 2
    return values
