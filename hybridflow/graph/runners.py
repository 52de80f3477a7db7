"""Running one segment under its strategy: a chain for invertible runs, a function for the rest.

Runners are plain objects (no closures), so that a deep copy of a graph module copies them
together with the node modules they run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from hybridflow.autograd.chain import Chain
from hybridflow.autograd.checks import layer_place
from hybridflow.autograd.microbatch import check_acts_per_sample
from hybridflow.autograd.modes import Mode, chains_in_mode
from hybridflow.errors import InputError, InputTypeError
from hybridflow.graph.nodes import LOGDET, NodeSpec, Port
from hybridflow.graph.segments import Segment
from hybridflow.graph.strategy import Strategy
from hybridflow.graph.values import call_node, node_errors, read_port

__all__ = ["InvertibleRunner", "NodesRunner"]

Values = dict[str, Any]
"""The tensors computed so far in a call, by port (tuple items by item port)."""


class _Runner:
    """Runs one segment under its strategy.

    Args:
        segment: the segment.
        strategy: its strategy.
        specs: the nodes' specs, by name.
        tuples: item ports of autograd nodes that return tuples.
    """

    def __init__(
        self,
        segment: Segment,
        strategy: Strategy,
        specs: Mapping[str, NodeSpec],
        tuples: Mapping[str, tuple[str, ...]],
    ) -> None:
        self.segment = segment
        self.strategy = strategy
        self.specs = [specs[name] for name in segment.nodes]
        self.tuples = dict(tuples)
        self._setup()

    def _setup(self) -> None:
        """What a kind of runner prepares once, when the plan is installed."""

    def _items(self, ports: Iterable[Port | str]) -> list[str]:
        """The tensor keys behind ``ports`` (a tuple port stands for its items)."""
        return [item for p in ports for item in self.tuples.get(str(p), (str(p),))]


class InvertibleRunner(_Runner):
    """Runs an invertible segment as one :class:`~hybridflow.Chain` of its nodes' modules.

    ``store`` runs the chain in ``"store"`` mode, ``checkpoint`` the same under
    ``torch.utils.checkpoint``, ``invert`` in ``"invert"`` mode with the strategy's anchors,
    micro-batches (the forward pass sliced too when there are no anchors) and tiles. Chains
    nested in the nodes run in the segment's mode for the call
    (:func:`~hybridflow.autograd.chains_in_mode`; their ``mode`` attributes are left as the
    user set them). The log determinant continues the one accumulated before the segment, if
    any.
    """

    def _setup(self) -> None:
        strategy = self.strategy
        modules: list[nn.Module] = [s.target for s in self.specs]  # type: ignore[misc]
        self.mode: Mode = "invert" if strategy.kind == "invert" else "store"
        self.chain = Chain(
            *modules,  # type: ignore[arg-type]
            mode=self.mode,
            anchor_every=strategy.anchor_every,
            micro_batches=strategy.micro_batches,
            name=f"Graph segment {', '.join(repr(n) for n in self.segment.nodes)}",
            tile_size=strategy.tile_size,
        )

    def __call__(self, values: Values) -> None:
        segment, strategy = self.segment, self.strategy
        x = read_port(values, self.tuples, segment.x)
        cond = None if segment.cond is None else read_port(values, self.tuples, segment.cond)
        with _segment_errors(self.chain, self.specs):
            if strategy.micro_batches > 1:
                for spec in self.specs:
                    check_acts_per_sample(spec.target, f"Graph {spec.describe()}")
            if strategy.kind == "checkpoint":
                args = (x,) if cond is None else (x, cond)
                y, logdet = checkpoint(self._run, *args, use_reentrant=False)
            else:
                y, logdet = self._run(x, cond)
        if segment.logdet_in is not None:
            logdet = values[str(segment.logdet_in)] + logdet
        last = segment.nodes[-1]
        values[last] = y
        values[f"{last}.{LOGDET}"] = logdet

    def _run(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The segment's chain, with every chain nested in its nodes in the segment's mode
        (entered again when ``torch.utils.checkpoint`` recomputes it)."""
        with chains_in_mode(self.mode):
            return self.chain(x, cond)


class NodesRunner(_Runner):
    """Runs autograd or operator nodes one after another, optionally under one checkpoint.

    The segment's inputs are passed to ``torch.utils.checkpoint`` as separate tensors (tuples
    item by item), since it keeps tensor arguments only; the exported values come back the
    same way.

    The segment's strategy is ``store`` or ``checkpoint``.
    """

    def _setup(self) -> None:
        self.read_keys = self._items(self.segment.reads)
        self.export_keys = [str(p) for p in self.segment.exports]

    def _body(self, *tensors: Tensor) -> tuple[Any, ...]:
        local: Values = dict(zip(self.read_keys, tensors, strict=True))
        for spec in self.specs:
            args = [read_port(local, self.tuples, p) for p in spec.inputs]
            with node_errors(spec, "failed at run time"):
                result = call_node(spec, args, None)
            if spec.kind == "autograd" and isinstance(result, tuple | list):
                for i, item in enumerate(result):
                    local[f"{spec.name}.{i}"] = item
            else:
                local[spec.name] = result
        return tuple(local[item] for item in self._items(self.export_keys))

    def __call__(self, values: Values) -> None:
        tensors = [values[k] for k in self.read_keys]
        if self.strategy.kind == "checkpoint":
            results = checkpoint(self._body, *tensors, use_reentrant=False)
        else:
            results = self._body(*tensors)
        for item, value in zip(self._items(self.export_keys), results, strict=True):
            values[item] = value


@contextmanager
def _segment_errors(chain: Chain, specs: Sequence[NodeSpec]) -> Iterator[None]:
    """Name the node when a segment's chain refuses its input.

    The chain locates an input error at one of its layers (the first entry of
    ``error.where``, as :func:`~hybridflow.autograd.checks.layer_place` writes it); layer ``i``
    is the module of the segment's node ``i``, so that entry is replaced by the node. Errors
    located nowhere in the chain name the segment's first node.
    """
    nodes = {
        layer_place(i, layer): f"Graph {spec.describe()}"
        for i, (layer, spec) in enumerate(zip(chain.layers, specs, strict=True))
    }
    first = f"Graph {specs[0].describe()}"
    try:
        yield
    except (InputError, InputTypeError) as error:
        head = error.where[0] if error.where else None
        if head in nodes:
            error.where = error.where[1:]
            error.located(nodes[head])
        elif head not in nodes.values():
            error.located(first)
        raise
    except (ValueError, TypeError) as error:
        if type(error) not in (ValueError, TypeError):
            raise
        kind = InputTypeError if type(error) is TypeError else InputError
        raise kind(str(error), where=(first,)) from error
