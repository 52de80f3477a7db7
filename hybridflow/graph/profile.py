"""Running the sample batch through a graph: shape and dtype checks, and per-node measurements.

Each node runs once, on its own, with autograd recording (plain autograd: chains inside
invertible nodes run in ``"store"`` mode for the occasion, through
:func:`~hybridflow.autograd.chains_in_mode`, which leaves their ``mode`` attributes alone). While it runs, saved-tensor hooks
(:func:`torch.autograd.graph.saved_tensors_hooks`) list the storages its operations keep for
backward; the parameters and buffers of the graph are left out (they live anyway). A storage
shared with one of the node's inputs or outputs is recorded as that port, so that a tensor
kept by two nodes is counted once when a plan is estimated; the rest are the node's own
activations. The node's cost is its FLOP count (:class:`torch.utils.flop_counter.FlopCounterMode`
counts matrix products and convolutions) plus one per element it reads or writes, so that
elementwise nodes and FFT-based operators are not free; or, with ``cost="time"``, the time of
one forward pass without autograd.

The run changes nothing: the global random state, every module's attributes and its
``state_dict`` (ActNorm's data-dependent initialisation, BatchNorm's running
statistics) are restored afterwards. Only one node's autograd graph is alive at a time, and a
node's outputs are freed once their last reader has run.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import networkx as nx
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from hybridflow.autograd.modes import chains_in_mode
from hybridflow.autograd.module import InvertibleModule
from hybridflow.autograd.validation import validation_scope
from hybridflow.graph.layer_memory import LayerMemory, LayerUse
from hybridflow.graph.nodes import LOGDET, NodeKind, NodeSpec, Port
from hybridflow.graph.values import (
    call_node,
    check_inputs,
    check_reads,
    check_sample,
    node_errors,
    node_outputs,
    read_port,
)

__all__ = ["CostKind", "GraphProfile", "NodeProfile", "PortMeta", "profile_graph"]

CostKind = Literal["time", "flops"]
"""How node costs are measured: ``"flops"`` (counted: deterministic, the same on every
machine and every rank) or ``"time"`` (seconds of one forward pass: closer to the truth for
operations the counter does not know, but noisy on a shared machine)."""


@dataclass(frozen=True)
class PortMeta:
    """A tensor flowing through a port, as seen on the sample batch.

    Attributes:
        shape: its shape.
        dtype: its dtype.
        nbytes: its size in bytes.
        batched: whether its first dimension is the batch (it then scales with the batch).
        alias: tensors with the same ``alias`` share one storage (a view of another port).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int
    batched: bool
    alias: int


@dataclass(frozen=True)
class NodeProfile:
    """What one node costs on the sample batch.

    Attributes:
        name: the node.
        kind: its kind.
        cost: its FLOPs (plus elements read and written), or seconds of one forward pass
            without autograd.
        saved_bytes: bytes of its own activations kept for backward by plain autograd (not
            counting the ports below, parameters and buffers).
        largest_saved: the largest of those activations (its gradient, and the next one's,
            are alive together when autograd back-propagates through the node).
        saved_ports: ports (inputs or outputs of the node) whose storage plain autograd keeps.
        reads: the tensor ports it reads (inputs, then condition).
        writes: the tensor ports it produces.
        generic_rule: invertible nodes: whether the module uses the generic reconstructing
            rule (invert, then re-run forward: about two forward passes) rather than a
            hand-written one (about one), in any of its layers
            (:attr:`~hybridflow.InvertibleModule.uses_generic_rule`).
        layers: invertible nodes: the memory of each innermost invertible layer (a network
            given as one node is reconstructed layer by layer).
    """

    name: str
    kind: NodeKind
    cost: float
    saved_bytes: int
    largest_saved: int
    saved_ports: frozenset[str]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    generic_rule: bool = False
    layers: tuple[LayerUse, ...] = ()


@dataclass(frozen=True)
class GraphProfile:
    """Measurements of a whole graph on the sample batch.

    Attributes:
        batch_size: the sample's batch size.
        ports: every tensor port, by its name (``"node"``, ``"node.logdet"``, ``"node.0"``).
        tuples: autograd nodes that return tuples: their item ports.
        nodes: per-node measurements.
        param_grad_bytes: bytes of the gradients of all trainable parameters.
        cost_unit: ``"s"`` or ``"FLOP"``.
    """

    batch_size: int
    ports: Mapping[str, PortMeta]
    tuples: Mapping[str, tuple[str, ...]]
    nodes: Mapping[str, NodeProfile]
    param_grad_bytes: int
    cost_unit: str


def _storage_key(tensor: Tensor) -> tuple[int, int]:
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # tensors without a plain storage
        return id(tensor), tensor.numel() * tensor.element_size()


@contextmanager
def _restored_state(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Restore every module's ``state_dict`` (and the global RNG) after the block."""
    snapshots = [
        {k: v.detach().clone() for k, v in module.state_dict().items()} for module in modules
    ]
    devices = sorted(
        {t.device.index or 0 for m in modules for t in m.state_dict().values() if t.is_cuda}
    )
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for module, snapshot in zip(modules, snapshots, strict=True):
                module.load_state_dict(snapshot)


def profile_graph(
    graph: nx.DiGraph,
    order: Sequence[str],
    outputs: Mapping[str, Port],
    sample: Mapping[str, Tensor],
    cost: CostKind,
) -> GraphProfile:
    """Run ``sample`` through the graph node by node, checking and measuring each node.

    Raises:
        ValueError, TypeError: naming the node, when a value does not fit (shape, dtype,
            batch size, missing condition, a tuple where a tensor is expected, a port index
            that the node's result does not have) or a module fails on the sample.
    """
    specs: dict[str, NodeSpec] = {name: graph.nodes[name]["spec"] for name in order}
    batch = check_sample(specs, sample)
    modules = list(
        {id(s.module): s.module for s in specs.values() if s.module is not None}.values()
    )
    excluded = {_storage_key(t)[0] for m in modules for t in [*m.parameters(), *m.buffers()]}
    uses: Counter[str] = Counter(p.node for s in specs.values() for p in s.reads)
    values: dict[str, Tensor] = {}
    tuples: dict[str, tuple[str, ...]] = {}
    ports: dict[str, PortMeta] = {}
    nodes: dict[str, NodeProfile] = {}
    with _restored_state(modules), chains_in_mode("store"):
        for name in order:
            spec = specs[name]
            aliases: dict[str, str] = {}
            if spec.kind == "input":
                produced = {name: sample[name]}
            else:
                produced, nodes[name], aliases = _run_node(
                    spec, values, tuples, batch, excluded, cost
                )
                for port in spec.reads:
                    uses[port.node] -= 1
                    if uses[port.node] == 0:
                        for key in [k for k in values if _split(k)[0] == port.node]:
                            del values[key]
            check_reads(spec, produced, specs, outputs)
            if spec.kind == "autograd" and name not in produced:
                tuples[name] = tuple(produced)
            if uses[name] > 0:
                values.update(
                    {k: v.detach().requires_grad_(v.requires_grad) for k, v in produced.items()}
                )
            for key, tensor in produced.items():
                alias = ports[aliases[key]].alias if key in aliases else len(ports)
                ports[key] = _meta(tensor, batch, alias)
    param_grad_bytes = sum(
        p.numel() * p.element_size()
        for p in {id(p): p for m in modules for p in m.parameters()}.values()
        if p.requires_grad
    )
    return GraphProfile(
        batch, ports, tuples, nodes, param_grad_bytes, "s" if cost == "time" else "FLOP"
    )


def _split(key: str) -> tuple[str, str | None]:
    node, _, index = key.partition(".")
    return node, index or None


def _meta(tensor: Tensor, batch: int, alias: int) -> PortMeta:
    return PortMeta(
        tuple(tensor.shape),
        tensor.dtype,
        tensor.numel() * tensor.element_size(),
        tensor.dim() > 0 and tensor.shape[0] == batch,
        alias,
    )


def _run_node(
    spec: NodeSpec,
    values: Mapping[str, Tensor],
    tuples: Mapping[str, tuple[str, ...]],
    batch: int,
    excluded: set[int],
    cost: CostKind,
) -> tuple[dict[str, Tensor], NodeProfile, dict[str, str]]:
    """Run one node with autograd on; return its outputs, its profile and which outputs are
    views of which inputs."""
    args = [read_port(values, tuples, p) for p in spec.inputs]
    cond = None if spec.cond is None else read_port(values, tuples, spec.cond)
    check_inputs(spec, args, cond, batch)
    saved: dict[int, int] = {}
    layers = LayerMemory(spec.module if spec.kind == "invertible" else None)

    def pack(tensor: Tensor) -> Tensor:
        ptr, nbytes = _storage_key(tensor)
        if ptr not in excluded:
            saved[ptr] = nbytes
            layers.record(ptr, nbytes)
        # a detached alias: returning the tensor itself would tie a saved output to its own
        # grad_fn (a reference cycle that outlives the graph when no backward runs)
        return tensor.detach()

    counter = FlopCounterMode(display=False) if cost == "flops" else nullcontext()
    # measured without the data-dependent input checks: they are not part of the model
    with (
        validation_scope(False),
        node_errors(spec, "failed on the sample"),
        torch.enable_grad(),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        layers.track(),
        counter,
    ):
        produced = node_outputs(spec, call_node(spec, args, cond), batch)
    if spec.kind == "invertible" and spec.inputs[0].index is None:
        before = values.get(f"{spec.inputs[0].node}.{LOGDET}")
        if before is not None:  # accumulated along the invertible nodes that lead here
            produced[f"{spec.name}.{LOGDET}"] = produced[f"{spec.name}.{LOGDET}"] + before
    if isinstance(counter, FlopCounterMode):
        touched = [t for t in (*args, cond, *produced.values()) if isinstance(t, Tensor)]
        measured = float(counter.get_total_flops() + sum(t.numel() for t in touched))
    else:
        with validation_scope(False):
            measured = _time(lambda: call_node(spec, args, cond), args)
    read_pairs: list[tuple[str, Tensor]] = []  # (port, tensor), tuples item by item
    for port, value in zip(spec.reads, [*args, *([] if cond is None else [cond])], strict=True):
        if isinstance(value, Tensor):
            read_pairs.append((str(port), value))
        else:
            read_pairs.extend(zip(tuples[port.node], value, strict=True))
    read_ptrs: dict[int, str] = {}
    for key, tensor in read_pairs:
        read_ptrs.setdefault(_storage_key(tensor)[0], key)
    write_ptrs: dict[int, str] = {}
    for key, tensor in produced.items():
        write_ptrs.setdefault(_storage_key(tensor)[0], key)
    saved_ports: set[str] = set()
    own = largest = 0
    for ptr, nbytes in saved.items():
        if ptr in read_ptrs:
            saved_ports.add(read_ptrs[ptr])
        elif ptr in write_ptrs:
            saved_ports.add(write_ptrs[ptr])
        else:
            own += nbytes
            largest = max(largest, nbytes)
    aliases = {
        key: read_ptrs[_storage_key(t)[0]]
        for key, t in produced.items()
        if _storage_key(t)[0] in read_ptrs
    }
    module = spec.module
    generic = (
        spec.kind == "invertible"
        and isinstance(module, InvertibleModule)
        and module.uses_generic_rule
    )
    reads = [key for key, _ in read_pairs]
    profile = NodeProfile(
        spec.name,
        spec.kind,
        measured,
        own,
        largest,
        frozenset(saved_ports),
        tuple(reads),
        tuple(produced),
        generic,
        layers.layers(),
    )
    return produced, profile, aliases


def _time(run: Callable[[], object], args: Sequence[Any]) -> float:
    """Seconds of one call without autograd (synchronising the GPU around it)."""
    cuda = any(isinstance(a, Tensor) and a.is_cuda for a in args)
    with torch.no_grad():
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start
