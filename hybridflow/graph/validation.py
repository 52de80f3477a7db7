"""Structural checks of a graph when it is built: missing nodes, cycles, ports, unused parts."""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx

from hybridflow.autograd.module import InvertibleModule
from hybridflow.graph.nodes import LOGDET, NodeSpec, Port

__all__ = ["check_port", "validate_structure"]


def _spec(graph: nx.DiGraph, name: str) -> NodeSpec:
    spec = graph.nodes[name].get("spec")
    if spec is None:
        readers = sorted(graph.successors(name))
        reader = readers[0] if readers else name
        raise ValueError(f"Graph node {reader!r}: reads {name!r}, which is not a node of the graph")
    return spec


def check_port(graph: nx.DiGraph, port: Port, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` if ``port`` is not a port its node has."""
    producer = _spec(graph, port.node)
    if port.index is None:
        return
    allowed = {
        "input": "only the port 'NAME'",
        "operator": "only the port 'NAME'",
        "invertible": "the ports 'NAME' (its output) and 'NAME.logdet'",
        "autograd": "the port 'NAME' and, if it returns a tuple, 'NAME.0', 'NAME.1', ...",
    }[producer.kind].replace("NAME", port.node)
    valid = (producer.kind == "invertible" and port.index == LOGDET) or (
        producer.kind == "autograd" and port.index.isdigit()
    )
    if not valid:
        raise ValueError(
            f"{where}: reads port {str(port)!r}, but {producer.describe()} has {allowed}"
        )


def validate_structure(graph: nx.DiGraph, outputs: Mapping[str, Port]) -> list[str]:
    """Check the graph's structure and return its nodes in a topological order.

    The order follows the order of declaration wherever the edges allow it, so that a graph
    built the same way always runs (and segments) the same way.

    Raises:
        ValueError: naming the node, for a read of an unknown node or port, a cycle, a
            condition given to a module that takes none (or missing for one that needs it), a
            graph input that nothing uses, or a node whose result reaches no output.
    """
    if not outputs:
        raise ValueError("Graph: declare at least one output with Graph.output(port)")
    for name in graph.nodes:
        _spec(graph, name)  # every node read must have been added
    for out_name, port in outputs.items():
        if port.node not in graph:
            raise ValueError(
                f"Graph output {out_name!r}: reads {port.node!r}, which is not a node of the graph"
            )
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        pass
    else:
        path = " -> ".join(repr(u) for u, _ in cycle) + f" -> {cycle[0][0]!r}"
        raise ValueError(
            f"Graph node {cycle[0][0]!r}: is on a cycle {path}; a graph must be acyclic"
        )
    for name in graph.nodes:
        spec = _spec(graph, name)
        for port in spec.reads:
            check_port(graph, port, f"Graph {spec.describe()}")
        if spec.kind == "invertible":
            _check_condition(spec)
    for out_name, port in outputs.items():
        check_port(graph, port, f"Graph output {out_name!r}")
    produced_outputs = {port.node for port in outputs.values()}
    for name in graph.nodes:
        spec = _spec(graph, name)
        if spec.kind == "input" and graph.out_degree(name) == 0 and name not in produced_outputs:
            raise ValueError(
                f"Graph input {name!r}: is not used by any node or output; remove it or connect it"
            )
    useful = set(produced_outputs)
    for node in produced_outputs:
        useful |= nx.ancestors(graph, node)
    for name in graph.nodes:
        spec = _spec(graph, name)
        if spec.kind != "input" and name not in useful:
            raise ValueError(
                f"Graph {spec.describe()}: its result reaches no output; remove the node or "
                "declare an output that depends on it"
            )
    position = {name: i for i, name in enumerate(graph.graph.get("order", list(graph.nodes)))}
    return list(nx.lexicographical_topological_sort(graph, key=lambda n: position.get(n, -1)))


def _check_condition(spec: NodeSpec) -> None:
    module = spec.target
    if not isinstance(module, InvertibleModule):
        raise TypeError(f"Graph {spec.describe()}: expected an InvertibleModule")
    if spec.cond is not None and not module.takes_condition:
        raise ValueError(
            f"Graph {spec.describe()}: has a condition {str(spec.cond)!r} but its "
            f"{type(module).__name__} takes none (build it with condition channels/features)"
        )
    if spec.cond is None and module.takes_condition:
        raise ValueError(
            f"Graph {spec.describe()}: its {type(module).__name__} takes a condition; pass "
            "cond='producer' when adding the node"
        )
