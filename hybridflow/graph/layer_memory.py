"""What each innermost invertible layer of a node saves: the working set of its reconstruction.

A node may be a whole network (a :class:`~hybridflow.networks.Glow` is one invertible node).
Its reconstruction rebuilds and back-propagates one layer at a time, so its working set is
that of its largest layer, not the sum over layers that plain autograd keeps. While the node
runs with autograd on, forward hooks on every :class:`~hybridflow.InvertibleModule` inside it
keep a stack of the layers running, and each saved storage is attributed to the innermost one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn

from hybridflow.autograd.module import InvertibleModule
from hybridflow.autograd.tiling import Halo, Tileable
from hybridflow.errors import ArgumentError

__all__ = ["LayerMemory", "LayerUse"]


@dataclass(frozen=True)
class LayerUse:
    """One layer's memory on the sample batch.

    Attributes:
        saved_bytes: what plain autograd saves while the layer runs (its own storages).
        largest_saved: the largest of them.
        io_bytes: its input plus its output.
        spatial: for a layer that can run tile by tile, the spatial sizes of its input;
            ``()`` for the others.
        halo: for such a layer, its :data:`~hybridflow.autograd.tiling.Halo`.
    """

    saved_bytes: int
    largest_saved: int
    io_bytes: int
    spatial: tuple[int, ...] = ()
    halo: Halo = ()


def _halo(module: nn.Module) -> Halo:
    """The halo of a layer that can tile, ``()`` for one that cannot (or has no space)."""
    if not isinstance(module, Tileable):
        return ()
    try:
        return module.spatial_halo()
    except ArgumentError:
        return ()


def _first_tensor(value: object) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], Tensor):
        return value[0]
    return None


def _nbytes(tensor: Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


class LayerMemory:
    """Attributes saved storages to the innermost invertible layer running.

    Args:
        module: the node's module (nothing is tracked unless it is invertible).
    """

    def __init__(self, module: nn.Module | None) -> None:
        self._modules = (
            [m for m in module.modules() if isinstance(m, InvertibleModule)]
            if isinstance(module, InvertibleModule)
            else []
        )
        self._stack: list[int] = []
        self._saved: dict[int, dict[int, int]] = {}
        self._io: dict[int, int] = {}
        self._spatial: dict[int, tuple[int, ...]] = {}
        self._halos = {id(m): _halo(m) for m in self._modules}

    @contextmanager
    def track(self) -> Iterator[None]:
        """Track the layers while the block runs."""

        def enter(module: nn.Module, args: tuple) -> None:
            self._stack.append(id(module))

        def leave(module: nn.Module, args: tuple, output: object) -> None:
            self._stack.pop()
            first = _first_tensor(args)
            size = _nbytes(first) + _nbytes(_first_tensor(output))
            self._io[id(module)] = max(self._io.get(id(module), 0), size)
            if self._halos[id(module)] and first is not None:
                self._spatial[id(module)] = tuple(first.shape[2:])

        handles = []
        try:
            for module in self._modules:
                handles.append(module.register_forward_pre_hook(enter))
                handles.append(module.register_forward_hook(leave))
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._stack.clear()

    def record(self, ptr: int, nbytes: int) -> None:
        """Attribute a saved storage to the layer running now (if any)."""
        if self._stack:
            self._saved.setdefault(self._stack[-1], {})[ptr] = nbytes

    def layers(self) -> tuple[LayerUse, ...]:
        """One :class:`LayerUse` per layer that saved something or saw a tensor."""
        uses = []
        for key in dict.fromkeys([*self._saved, *self._io]):
            saved = self._saved.get(key, {})
            spatial = self._spatial.get(key, ())
            uses.append(
                LayerUse(
                    sum(saved.values()),
                    max(saved.values(), default=0),
                    self._io.get(key, 0),
                    spatial,
                    self._halos.get(key, ()) if spatial else (),
                )
            )
        return tuple(uses)
