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

__all__ = ["LayerMemory", "LayerUse"]


@dataclass(frozen=True)
class LayerUse:
    """One layer's memory on the sample batch.

    Attributes:
        saved_bytes: what plain autograd saves while the layer runs (its own storages).
        largest_saved: the largest of them.
        io_bytes: its input plus its output.
    """

    saved_bytes: int
    largest_saved: int
    io_bytes: int


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

    @contextmanager
    def track(self) -> Iterator[None]:
        """Track the layers while the block runs."""

        def enter(module: nn.Module, args: tuple) -> None:
            self._stack.append(id(module))

        def leave(module: nn.Module, args: tuple, output: object) -> None:
            self._stack.pop()
            size = _nbytes(_first_tensor(args)) + _nbytes(_first_tensor(output))
            self._io[id(module)] = max(self._io.get(id(module), 0), size)

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
            uses.append(
                LayerUse(sum(saved.values()), max(saved.values(), default=0), self._io.get(key, 0))
            )
        return tuple(uses)
