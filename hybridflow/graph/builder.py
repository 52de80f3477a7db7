"""``Graph``: a builder of named invertible, autograd and operator nodes over a networkx graph."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, get_args

import networkx as nx
from torch import Tensor, nn

from hybridflow.autograd.module import InvertibleModule
from hybridflow.graph.nodes import NodeSpec, Port, check_name, parse_port
from hybridflow.graph.profile import CostKind, profile_graph
from hybridflow.graph.strategy import Strategy
from hybridflow.graph.validation import validate_structure
from hybridflow.operators.linear import LinearOperator
from hybridflow.operators.operator import Operator

if TYPE_CHECKING:
    from hybridflow.graph.cost import Budget
    from hybridflow.graph.runtime import GraphModule

__all__ = ["Graph"]


class Graph:
    r"""A builder of computation graphs that mix invertible, autograd and operator nodes.

    Nodes have names; a node reads the values of other nodes through *ports*: ``"node"`` is a
    node's output, ``"node.logdet"`` an invertible node's log determinant, ``"node.0"``,
    ``"node.1"`` the items of an autograd node that returns a tuple. Nodes may be added in any
    order (a node may read one declared later); :meth:`build` checks the whole graph.

    * :meth:`input`: a tensor given when the graph is called (batch dimension first).
    * :meth:`invertible`: an :class:`~hybridflow.InvertibleModule`, ``(y, logdet) = f(x, c)``,
      with one input and an optional condition. Its ``logdet`` port is *accumulated*: the sum
      of the log determinants of the invertible nodes along the path of inputs that leads to
      it, from the first one fed by a non-invertible node. For a flow
      ``x -> f_1 -> ... -> f_n -> z``, ``"f_n.logdet"`` is :math:`\log|\det \partial z /
      \partial x|`.
    * :meth:`autograd`: any ``nn.Module`` or function of its inputs, called positionally:
      summary networks, heads, losses.
    * :meth:`operator`: an :class:`~hybridflow.Operator` or
      :class:`~hybridflow.LinearOperator` (physics with a hand-written VJP or adjoint).
    * :meth:`output`: a named result of the graph.

    :meth:`build` validates the graph, runs a sample batch through it to check shapes and
    dtypes and to measure every node, groups the nodes into segments and plans a strategy per
    segment (store, reconstruct by inversion, checkpoint) under an optional memory budget; it
    returns a :class:`~hybridflow.graph.GraphModule`.

    The underlying ``networkx.DiGraph`` is :attr:`digraph`: one node per name with its
    :class:`~hybridflow.graph.nodes.NodeSpec` under ``"spec"``, one edge per producer and
    reader.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from hybridflow.graph import Graph
        >>> from hybridflow.layers import ActNorm, AffineCoupling
        >>> torch.manual_seed(0) is not None
        True
        >>> g = Graph()
        >>> g = g.input("x").input("obs")
        >>> g = g.autograd("summary", nn.Linear(3, 2), inputs="obs")
        >>> g = g.invertible("norm", ActNorm(4), input="x")
        >>> coupling = AffineCoupling(4, hidden=8, cond_features=2)
        >>> g = g.invertible("coupling", coupling, "norm", cond="summary")
        >>> g = g.autograd("nll", lambda z, ld: (0.5 * z.pow(2).sum(1) - ld).mean(),
        ...                inputs=["coupling", "coupling.logdet"])
        >>> model = g.output("nll").build({"x": torch.randn(8, 4), "obs": torch.randn(8, 3)})
        >>> model(x=torch.randn(8, 4), obs=torch.randn(8, 3))["nll"].shape
        torch.Size([])
        >>> [(s.nodes, str(s.strategy)) for s in model.current_plan.segments]
        [(('summary',), 'store'), (('norm', 'coupling'), 'invert'), (('nll',), 'store')]
    """

    def __init__(self) -> None:
        self._graph = nx.DiGraph(order=[])
        self._outputs: dict[str, Port] = {}

    @property
    def digraph(self) -> nx.DiGraph:
        """A read-only view of the graph (nodes carry their spec under ``"spec"``)."""
        return self._graph.copy(as_view=True)

    @property
    def outputs(self) -> dict[str, Port]:
        """The declared outputs, by name."""
        return dict(self._outputs)

    def _add(self, spec: NodeSpec) -> Graph:
        if spec.name in self._graph and "spec" in self._graph.nodes[spec.name]:
            raise ValueError(f"Graph: a node named {spec.name!r} already exists")
        self._graph.add_node(spec.name, spec=spec)
        self._graph.graph["order"].append(spec.name)
        for role, port in [*(("input", p) for p in spec.inputs), ("cond", spec.cond)]:
            if port is None:
                continue
            if self._graph.has_edge(port.node, spec.name):
                self._graph.edges[port.node, spec.name]["ports"].append((role, port))
            else:
                self._graph.add_edge(port.node, spec.name, ports=[(role, port)])
        return self

    def input(self, name: str) -> Graph:
        """Declare a graph input ``name``, a tensor with the batch dimension first."""
        return self._add(NodeSpec(check_name(name, "input"), "input"))

    def invertible(
        self, name: str, module: InvertibleModule, input: str, cond: str | None = None
    ) -> Graph:
        """Add an invertible node ``(y, logdet) = module(x, cond)``.

        Args:
            name: the node's name.
            module: an :class:`~hybridflow.InvertibleModule` (a layer, a chain, a network).
            input: the port of ``x``: exactly one producer.
            cond: the port of the condition, for a module that takes one.
        """
        check_name(name, "node")
        where = f"Graph node {name!r} (invertible)"
        if not isinstance(module, InvertibleModule):
            raise TypeError(
                f"{where}: expected an InvertibleModule, got {type(module).__name__}; add "
                "non-invertible modules with Graph.autograd"
            )
        if isinstance(input, Sequence) and not isinstance(input, str):
            if len(input) != 1:
                raise ValueError(
                    f"{where}: an invertible node reads one input, but {len(input)} producers "
                    f"were given ({[str(p) for p in input]}); join them first in an autograd "
                    "node (torch.cat, say)"
                )
            input = input[0]
        if isinstance(cond, Sequence) and not isinstance(cond, str):
            raise ValueError(
                f"{where}: the condition comes from one producer, got {list(cond)}; join them "
                "first in an autograd node"
            )
        spec = NodeSpec(
            name,
            "invertible",
            module,
            (parse_port(input, where),),
            None if cond is None else parse_port(cond, where),
        )
        return self._add(spec)

    def autograd(
        self, name: str, fn: nn.Module | Callable[..., Any], inputs: str | Sequence[str]
    ) -> Graph:
        """Add a node differentiated by plain autograd: ``fn(*inputs)``.

        Args:
            name: the node's name.
            fn: an ``nn.Module`` (registered as a submodule of the built graph) or a function.
                It returns a tensor or a tuple of tensors (read as ``"name.0"``, ...).
            inputs: the ports passed positionally.
        """
        check_name(name, "node")
        where = f"Graph node {name!r} (autograd)"
        if not callable(fn):
            raise TypeError(f"{where}: expected an nn.Module or a function, got {fn!r}")
        return self._add(NodeSpec(name, "autograd", fn, self._ports(inputs, where)))

    def operator(
        self, name: str, op: Operator | LinearOperator, inputs: str | Sequence[str]
    ) -> Graph:
        """Add an operator node: ``op(*inputs)`` with its hand-written VJP or adjoint.

        Args:
            name: the node's name.
            op: an :class:`~hybridflow.Operator` or :class:`~hybridflow.LinearOperator`.
            inputs: the ports passed positionally (one for a linear operator).
        """
        check_name(name, "node")
        where = f"Graph node {name!r} (operator)"
        if not isinstance(op, Operator | LinearOperator):
            raise TypeError(
                f"{where}: expected an Operator or a LinearOperator, got {type(op).__name__}; "
                "add other functions with Graph.autograd"
            )
        ports = self._ports(inputs, where)
        if isinstance(op, LinearOperator) and len(ports) != 1:
            raise ValueError(
                f"{where}: a linear operator reads one input, got {[str(p) for p in ports]}"
            )
        return self._add(NodeSpec(name, "operator", op, ports))

    def output(self, port: str, name: str | None = None) -> Graph:
        """Declare ``port`` a result of the graph, under ``name`` (the port by default)."""
        parsed = parse_port(port, "Graph.output")
        name = str(parsed) if name is None else name
        if not isinstance(name, str) or not name:
            raise ValueError(f"Graph.output: name must be a non-empty string, got {name!r}")
        if name in self._outputs:
            raise ValueError(f"Graph.output: an output named {name!r} already exists")
        self._outputs[name] = parsed
        return self

    @staticmethod
    def _ports(inputs: str | Sequence[str], where: str) -> tuple[Port, ...]:
        refs = [inputs] if isinstance(inputs, str) else list(inputs)
        if not refs:
            raise ValueError(f"{where}: needs at least one input port")
        return tuple(parse_port(ref, where) for ref in refs)

    def build(
        self,
        sample: Mapping[str, Tensor],
        *,
        memory_budget: Budget | int | float | str | None = None,
        pin: Mapping[str, Strategy | str] | None = None,
        batch_size: int | None = None,
        cost: CostKind = "flops",
        max_inverted_run: int | None = None,
        validate: bool | None = None,
    ) -> GraphModule:
        """Validate the graph, measure it on ``sample`` and plan it; return the module.

        Args:
            sample: one tensor per graph input, as in a training step (or with a smaller batch,
                see ``batch_size``). Nothing it does to the modules is kept: parameters, buffers
                and the random state are restored.
            memory_budget: bound of the estimated peak memory of a training step (bytes, or a
                string such as ``"512MiB"``, ``"2GB"``; ``math.inf`` or ``"unlimited"`` for no
                bound). ``None``: the cheapest plan whose memory is flat in the depth of the
                invertible segments. See :meth:`GraphModule.plan`.
            pin: strategies fixed per node name (``"store"``, ``"invert"``, ``"checkpoint"``
                or a :class:`~hybridflow.graph.Strategy`).
            batch_size: the batch size of training, when ``sample`` is smaller: per-sample
                sizes and costs are scaled to it.
            cost: how node costs are measured: ``"flops"`` (counted; plans are reproducible)
                or ``"time"`` (one timed forward pass per node).
            max_inverted_run: at most this many nodes reconstructed from one kept tensor
                (bounds float32 drift): longer invertible segments keep anchors.
            validate: the module's switch of data-dependent input checks (NaN/Inf in the
                floating inputs of each call); ``None`` follows
                :class:`hybridflow.set_validation`. See :class:`GraphModule`.

        Raises:
            ValueError, TypeError: naming the node, for any problem of the graph (see
                :func:`~hybridflow.graph.validation.validate_structure` and the sample checks).
            BudgetError: if no plan fits ``memory_budget``; it states the minimum.
        """
        from hybridflow.graph.runtime import GraphModule

        if cost not in get_args(CostKind):
            raise ValueError(f"Graph.build: cost must be 'time' or 'flops', got {cost!r}")
        order = validate_structure(self._graph, self._outputs)
        profile = profile_graph(self._graph, order, self._outputs, sample, cost)
        module = GraphModule(self._graph.copy(), order, self._outputs, profile, validate=validate)
        module.plan(
            memory_budget, pin=pin, batch_size=batch_size, max_inverted_run=max_inverted_run
        )
        return module
