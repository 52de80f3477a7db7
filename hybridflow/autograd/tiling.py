"""Spatial tiling: the tile setting of a pass, and the grid of tiles with their halos.

A layer whose output at a position depends only on inputs within a bounded window (a coupling
with a convolutional conditioner) can compute its output tile by tile: the tile's *core* from
the input over the core grown by the *halo*. A chain's ``tile_size`` is published to its
layers for the duration of its passes by :func:`tiled`; layers that can tile read it with
:func:`active_tile_size` and describe their window by :meth:`Tileable.spatial_halo`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple, Protocol, runtime_checkable

from torch import nn

from hybridflow.errors import ArgumentError, ArgumentTypeError

__all__ = [
    "Halo",
    "Tile",
    "TileSize",
    "Tileable",
    "active_tile_size",
    "check_tile_size",
    "check_tileable",
    "tile_grid",
    "tiled",
]

TileSize = int | tuple[int, ...]
"""Edge length of a tile's core, in positions: one for every spatial dimension, or one each."""

Halo = tuple[tuple[int, int], ...]
"""Per spatial dimension, ``(before, after)``: the output at position ``p`` depends on the
inputs at ``p - before .. p + after``."""


@runtime_checkable
class Tileable(Protocol):
    """A layer that can run its passes tile by tile.

    ``spatial_halo()`` returns its :data:`Halo`, or raises
    :class:`~hybridflow.errors.ArgumentError` naming the part that makes tiling inexact.
    """

    def spatial_halo(self) -> Halo: ...


class _TileSetting:
    """The tile size of the chain whose pass is running (``None``: untiled).

    A plain attribute rather than a ``ContextVar``, for the same reason as the chain depth
    in :mod:`hybridflow.autograd.checks`: ``torch.compile`` traces attribute updates.
    """

    def __init__(self) -> None:
        self.value: TileSize | None = None


_SETTING = _TileSetting()


@contextmanager
def tiled(tile_size: TileSize | None) -> Iterator[None]:
    """Publish ``tile_size`` to the layers run inside; ``None`` keeps the enclosing setting."""
    if tile_size is None:
        yield
        return
    previous = _SETTING.value
    _SETTING.value = tile_size
    try:
        yield
    finally:
        _SETTING.value = previous


def active_tile_size() -> TileSize | None:
    """The tile size layers should use now, or ``None`` when the pass is untiled."""
    return _SETTING.value


def check_tile_size(value: object, where: str) -> TileSize | None:
    """``value`` as a tile size: ``None``, a positive int, or a tuple (or list) of them."""
    if value is None:
        return None
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not items or any(not isinstance(v, int) or isinstance(v, bool) for v in items):
        raise ArgumentTypeError(
            f"{where}: tile_size must be None, an int or a tuple of ints, got {value!r}",
            argument="tile_size",
        )
    if any(v < 1 for v in items):
        raise ArgumentError(
            f"{where}: tile_size must be positive, got {value!r}", argument="tile_size"
        )
    return items if isinstance(value, (tuple, list)) else items[0]


def check_tileable(module: nn.Module, where: str) -> None:
    """Ask every tileable part of ``module`` for its halo, so that a part whose result tiling
    would change raises now (when the model is built), naming itself."""
    for name, sub in module.named_modules():
        if isinstance(sub, Tileable):
            try:
                sub.spatial_halo()
            except ArgumentError as error:
                raise error.located(f"{where} {name or 'module'} ({type(sub).__name__})") from None


class Tile(NamedTuple):
    """One tile of a grid, as slices over the spatial dimensions.

    Attributes:
        core: the positions whose output this tile computes.
        extent: the core grown by the halo, clipped to the grid: the inputs it reads.
        inner: the core's positions within the extent.
    """

    core: tuple[slice, ...]
    extent: tuple[slice, ...]
    inner: tuple[slice, ...]


def _per_dim(tile_size: TileSize, dims: int) -> tuple[int, ...]:
    if isinstance(tile_size, int):
        return (tile_size,) * dims
    if len(tile_size) != dims:
        raise ArgumentError(
            f"tile_size {tile_size!r} has {len(tile_size)} entries but the input has {dims} "
            "spatial dimensions; give one int, or one per spatial dimension",
            argument="tile_size",
        )
    return tile_size


def tile_grid(shape: Sequence[int], tile_size: TileSize, halo: Halo) -> list[Tile]:
    """Cover a grid of spatial ``shape`` with cores of at most ``tile_size`` per dimension.

    Cores partition the grid (the last one along a dimension may be smaller); each extent
    reaches ``halo`` beyond its core, clipped at the border of the grid, where the layer's own
    padding then reproduces what the untiled pass sees.
    """
    sizes = _per_dim(tile_size, len(shape))
    per_dim = []
    for n, t, (before, after) in zip(shape, sizes, halo, strict=True):
        spans = []
        for start in range(0, n, t):
            stop = min(start + t, n)
            low, high = max(0, start - before), min(n, stop + after)
            spans.append((slice(start, stop), slice(low, high), slice(start - low, stop - low)))
        per_dim.append(spans)
    return [
        Tile(*(tuple(part[k] for part in combo) for k in range(3)))
        for combo in itertools.product(*per_dim)
    ]
