"""Nodes of a graph and the ports that connect them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

__all__ = ["LOGDET", "NodeKind", "NodeSpec", "Port", "check_name", "parse_port"]

NodeKind = Literal["input", "invertible", "autograd", "operator"]
"""* ``"input"``: a tensor given to the graph when it is called.
* ``"invertible"``: an :class:`~hybridflow.InvertibleModule` ``f(x, cond) -> (y, logdet)``.
* ``"autograd"``: any ``nn.Module`` or function, differentiated by plain autograd.
* ``"operator"``: a :class:`~hybridflow.Operator` or :class:`~hybridflow.LinearOperator`,
  differentiated by its hand-written VJP or adjoint."""

LOGDET = "logdet"
"""Port of an invertible node that holds its accumulated log determinant."""


@dataclass(frozen=True)
class Port:
    """One value produced by a node, written ``"node"`` or ``"node.index"``.

    * ``"node"``: the node's output (``y`` of an invertible node, the whole result of an
      autograd or operator node, the tensor of an input).
    * ``"node.logdet"``: an invertible node's log determinant ``(B,)``, accumulated along
      the invertible nodes that lead to it (see :class:`~hybridflow.graph.Graph`).
    * ``"node.0"``, ``"node.1"``, ...: an item of an autograd node that returns a tuple.
    """

    node: str
    index: str | None = None

    def __str__(self) -> str:
        return self.node if self.index is None else f"{self.node}.{self.index}"


def check_name(name: object, what: str) -> str:
    """Refuse names that are not identifiers-like strings (a dot separates ports)."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"Graph: {what} name must be a non-empty string without '.', got {name!r}")
    return name


def parse_port(ref: object, where: str) -> Port:
    """A :class:`Port` from ``"node"`` or ``"node.index"``."""
    if isinstance(ref, Port):
        return ref
    if not isinstance(ref, str) or not ref:
        raise TypeError(f"{where}: a port is a string 'node' or 'node.index', got {ref!r}")
    node, _, index = ref.partition(".")
    if not node or (index and "." in index) or (ref.endswith(".")):
        raise ValueError(f"{where}: cannot read port {ref!r}; write 'node' or 'node.index'")
    return Port(node, index or None)


@dataclass(frozen=True)
class NodeSpec:
    """What the builder records about a node.

    Attributes:
        name: the node's name.
        kind: see :data:`NodeKind`.
        target: the module or function the node runs (``None`` for inputs).
        inputs: ports passed positionally (exactly one for invertible nodes).
        cond: the condition's port (invertible nodes), or ``None``.
    """

    name: str
    kind: NodeKind
    target: nn.Module | Callable[..., Any] | None = None
    inputs: tuple[Port, ...] = ()
    cond: Port | None = None

    @property
    def module(self) -> nn.Module | None:
        """The node's module, or ``None`` for inputs and plain functions."""
        return self.target if isinstance(self.target, nn.Module) else None

    @property
    def reads(self) -> tuple[Port, ...]:
        """Every port the node reads: its inputs, then its condition."""
        return self.inputs + (() if self.cond is None else (self.cond,))

    def describe(self) -> str:
        """``"node 'name' (kind)"``, how error messages name the node."""
        return f"node {self.name!r} ({self.kind})"
