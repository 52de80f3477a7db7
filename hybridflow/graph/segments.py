"""Segmentation: runs of invertible nodes become chains, autograd nodes group for checkpoints.

A *segment* is the unit a strategy applies to:

* an **invertible** segment is a maximal run ``f_1 -> f_2 -> ... -> f_n`` of invertible nodes
  where each node's output is read by the next node only (as its input), no log determinant is
  read in between, all nodes share one strategy pin, and at most one condition is used (nodes
  that take no condition may join: a chain passes its condition to every layer and they ignore
  it). It runs as one :class:`~hybridflow.Chain`.
* an **autograd** segment is a group of autograd nodes that run one after another in the
  graph's order with the same pin; it can run under one ``torch.utils.checkpoint``.
* an **operator** segment is one operator node.

Segments follow a topological order of the graph and every segment is *convex* (no path
leaves it and comes back), so running them in order is always possible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from hybridflow.graph.nodes import LOGDET, NodeSpec, Port
from hybridflow.graph.strategy import Strategy

__all__ = ["Segment", "SegmentKind", "segment_graph"]

SegmentKind = Literal["invertible", "autograd", "operator"]


@dataclass(frozen=True)
class Segment:
    """A group of nodes run under one strategy.

    Attributes:
        index: position in the order of execution.
        kind: see :data:`SegmentKind`.
        nodes: its nodes, in the order they run.
        reads: ports read from outside the segment.
        exports: ports of its nodes read outside it (or graph outputs).
        pin: the strategy its nodes were pinned to, if any.
        x: invertible segments: the port of the chain's input.
        cond: invertible segments: the condition's port, if any.
        logdet_in: invertible segments: the accumulated log determinant the chain continues
            (``"producer.logdet"`` when its input is an invertible node's output).
    """

    index: int
    kind: SegmentKind
    nodes: tuple[str, ...]
    reads: tuple[Port, ...]
    exports: tuple[Port, ...]
    pin: Strategy | None = None
    x: Port | None = None
    cond: Port | None = None
    logdet_in: Port | None = None


Readers = dict[Port, list[tuple[str | None, str]]]
"""Who reads each port: ``(node, role)`` pairs, ``node`` ``None`` for a graph output."""


def segment_graph(
    specs: Mapping[str, NodeSpec],
    order: Sequence[str],
    outputs: Mapping[str, Port],
    pins: Mapping[str, Strategy],
) -> tuple[Segment, ...]:
    """Group the nodes of a validated graph into segments (see the module docstring)."""
    readers: Readers = {}
    for name in order:
        spec = specs[name]
        for port in spec.inputs:
            readers.setdefault(port, []).append((name, "input"))
        if spec.cond is not None:
            readers.setdefault(spec.cond, []).append((name, "cond"))
    for port in outputs.values():
        readers.setdefault(port, []).append((None, "output"))
    runs, run_cond = _invertible_runs(specs, order, readers, pins)
    # a run that continues an invertible node's output continues its log determinant too
    for run in runs:
        source = specs[run[0]].inputs[0]
        if source.index is None and specs[source.node].kind == "invertible":
            readers.setdefault(Port(source.node, LOGDET), []).append((run[0], "logdet"))
    cond_of = {run[0]: cond for run, cond in zip(runs, run_cond, strict=True)}
    segments = []
    for index, names in enumerate(_groups(specs, order, runs, pins)):
        inside = set(names)
        reads = tuple(
            dict.fromkeys(p for n in names for p in specs[n].reads if p.node not in inside)
        )
        exports = tuple(
            dict.fromkeys(
                port
                for port, who in readers.items()
                if port.node in inside and any(r is None or r not in inside for r, _ in who)
            )
        )
        first = specs[names[0]]
        pin = pins.get(names[0])
        if first.kind != "invertible":
            segments.append(Segment(index, first.kind, names, reads, exports, pin))
            continue
        source = first.inputs[0]
        logdet_in = None
        if source.index is None and specs[source.node].kind == "invertible":
            logdet_in = Port(source.node, LOGDET)
            reads = (*reads, logdet_in)
        segments.append(
            Segment(
                index,
                "invertible",
                names,
                reads,
                exports,
                pin,
                source,
                cond_of[names[0]],
                logdet_in,
            )
        )
    return tuple(segments)


def _invertible_runs(
    specs: Mapping[str, NodeSpec],
    order: Sequence[str],
    readers: Readers,
    pins: Mapping[str, Strategy],
) -> tuple[list[list[str]], list[Port | None]]:
    """Maximal runs of invertible nodes (each output read by the next node only) and their
    conditions."""
    run_of: dict[str, int] = {}
    runs: list[list[str]] = []
    run_cond: list[Port | None] = []
    for name in order:
        spec = specs[name]
        if spec.kind != "invertible":
            continue
        prev = spec.inputs[0].node
        run = run_of.get(prev) if spec.inputs[0].index is None else None
        joins = run is not None and (
            runs[run][-1] == prev
            and readers.get(Port(prev), []) == [(name, "input")]
            and not readers.get(Port(prev, LOGDET))
            and pins.get(prev) == pins.get(name)
            and (spec.cond is None or run_cond[run] is None or spec.cond == run_cond[run])
        )
        if run is not None and joins:
            runs[run].append(name)
            run_of[name] = run
            if spec.cond is not None:
                run_cond[run] = spec.cond
        else:
            run_of[name] = len(runs)
            runs.append([name])
            run_cond.append(spec.cond)
    return runs, run_cond


def _groups(
    specs: Mapping[str, NodeSpec],
    order: Sequence[str],
    runs: Sequence[Sequence[str]],
    pins: Mapping[str, Strategy],
) -> list[tuple[str, ...]]:
    """The segments' nodes, in an order of execution.

    Units (invertible runs and single nodes) are ordered topologically, preferring, among
    the units ready to run, an autograd node with the same pin as the last one, so that such
    nodes end up next to each other; consecutive ones then form one segment. Segments made of
    consecutive units of a topological order are convex.
    """
    unit_of = {name: f"run{i}" for i, run in enumerate(runs) for name in run}
    members: dict[str, list[str]] = {}
    for name in order:
        if specs[name].kind != "input":
            members.setdefault(unit_of.setdefault(name, name), []).append(name)
    needs: dict[str, set[str]] = {key: set() for key in members}
    for key, names in members.items():
        for name in names:
            for port in specs[name].reads:
                if port.node in unit_of and unit_of[port.node] != key:
                    needs[key].add(unit_of[port.node])
    position = {name: i for i, name in enumerate(order)}

    def joins(previous: str | None, key: str) -> bool:
        if previous is None:
            return False
        a, b = specs[members[previous][0]], specs[members[key][0]]
        return a.kind == b.kind == "autograd" and pins.get(a.name) == pins.get(b.name)

    groups: list[list[str]] = []
    done: set[str] = set()
    previous: str | None = None
    while len(done) < len(members):
        ready = sorted(
            (k for k in members if k not in done and needs[k] <= done),
            key=lambda k: position[members[k][0]],
        )
        key = next((k for k in ready if joins(previous, k)), ready[0])
        if joins(previous, key):
            groups[-1].extend(members[key])
        else:
            groups.append(list(members[key]))
        done.add(key)
        previous = key
    return [tuple(group) for group in groups]
