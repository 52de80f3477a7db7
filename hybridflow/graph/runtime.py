"""``GraphModule``: a built graph as an ``nn.Module`` that runs its segments as planned."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import networkx as nx
from torch import Tensor, nn

from hybridflow.arguments import boolean, integer, positive_int
from hybridflow.autograd.checks import check_batch, check_finite
from hybridflow.autograd.drift import DriftReport
from hybridflow.autograd.microbatch import check_acts_per_sample
from hybridflow.autograd.validation import data_checks, validation_scope
from hybridflow.errors import InputTypeError
from hybridflow.graph.cost import Budget, Choice, CostModel
from hybridflow.graph.estimates import estimate, strategy_options
from hybridflow.graph.explain import Plan, SegmentPlan
from hybridflow.graph.nodes import NodeSpec, Port
from hybridflow.graph.planner import search
from hybridflow.graph.profile import GraphProfile
from hybridflow.graph.runners import InvertibleRunner, NodesRunner
from hybridflow.graph.segments import Segment, segment_graph
from hybridflow.graph.strategy import Strategy
from hybridflow.graph.values import read_port

__all__ = ["GraphModule"]


class GraphModule(nn.Module):
    """A graph built by :meth:`Graph.build <hybridflow.graph.Graph.build>`, run as planned.

    The modules of the nodes are submodules (under ``nodes.<name>``), so ``parameters()``,
    ``state_dict()``, ``.to()``, ``train()`` and ``eval()`` behave as for any module. The
    chains that run invertible segments are built from those same modules and are not
    registered a second time. Every :class:`~hybridflow.Chain` nested in an invertible node
    runs in its segment's mode (``"store"`` or ``"invert"``) while the graph runs it; the
    graph sets no attribute of the nodes' modules (their own ``mode`` stays as given).

    Call it with the graph's inputs by name (or positionally, in the order they were
    declared); it returns a dict of the named outputs.

    **Entry checks.** Each call checks its inputs once, before any node runs: every input a
    tensor with a non-empty batch dimension (metadata, always). With validation on
    (``validate``, default ``None``: :class:`hybridflow.set_validation`) the floating inputs
    must hold no NaN/Inf too; that check reads the data, so pass ``validate=False`` for speed
    (it is skipped under ``torch.compile`` and ``torch.func`` anyway). The nodes then run
    without data checks of their own. The chains of invertible segments check dtype and
    device (metadata) against their parameters at their entry; a
    node whose module refuses its input, or fails in torch (a matmul of the wrong shape),
    raises :class:`~hybridflow.errors.InputError` naming the node
    (``error.where[0] == "Graph node 'proj' (autograd)"``), with torch's error as its cause.

    Attributes:
        validate: the switch of data-dependent input checks (see above).
        digraph: the ``networkx.DiGraph`` of the nodes.
        profile: the measurements of the sample run.
        segments: the segments of the current plan.
        current_plan: the :class:`~hybridflow.graph.Plan` in force.
    """

    def __init__(
        self,
        digraph: nx.DiGraph,
        order: Sequence[str],
        outputs: Mapping[str, Port],
        profile: GraphProfile,
        batch_size: int | None = None,
        *,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        self.validate = None if validate is None else boolean(validate, "validate", "Graph")
        self.batch_size = profile.batch_size if batch_size is None else batch_size
        self.digraph = digraph
        self.order = tuple(order)
        self.specs: dict[str, NodeSpec] = {n: digraph.nodes[n]["spec"] for n in self.order}
        self.outputs = dict(outputs)
        self.input_names = tuple(n for n in self.order if self.specs[n].kind == "input")
        self.profile = profile
        self.nodes = nn.ModuleDict(
            {n: s.module for n, s in self.specs.items() if s.module is not None}
        )
        self.segments: tuple[Segment, ...] = ()
        self.current_plan: Plan | None = None
        self._runners: list[InvertibleRunner | NodesRunner] = []
        self._release: list[list[str]] = []
        self._drift_runs: dict[str, int] = {}

    # -- planning ---------------------------------------------------------------------------
    def plan(
        self,
        memory_budget: Budget | int | float | str | None = None,
        *,
        pin: Mapping[str, Strategy | str] | None = None,
        batch_size: int | None = None,
        max_inverted_run: int | None = None,
    ) -> Plan:
        """Choose and apply a strategy per segment; return the plan.

        Args:
            memory_budget: bound of the estimated peak memory of a training step: parameter
                gradients, plus the bytes kept for backward, plus the largest working set of a
                segment (see :mod:`hybridflow.graph.estimates`). Bytes, or a string such as
                ``"512MiB"`` or ``"2GB"``, or a :class:`~hybridflow.graph.Budget`; ``math.inf``
                or ``"unlimited"`` stores everything that saves compute. ``None``: the cheapest
                plan whose memory does not grow with the depth of invertible segments
                (``invert`` for those, ``store`` elsewhere).
            pin: strategies fixed per node name; nodes with different pins never share a
                segment.
            batch_size: the batch size to plan for; kept for later calls (default: the last
                one given, at first the ``batch_size`` of ``build`` or the sample's).
            max_inverted_run: rebuild at most this many nodes by inversion from one kept
                tensor (invertible segments keep anchors as needed); bounds float32 drift.
                Drift the segments' guards measured since the last plan tightens it where
                it exceeded the tolerance: a node whose reconstruction drifted after ``d``
                rebuilt nodes gets anchors at least every ``d // 2`` nodes
                (:meth:`drift_reports` shows the measurements).

        Raises:
            BudgetError: if no plan fits; its message and ``minimum`` give the smallest peak.
            ValueError: naming the node, for a bad pin (unknown node, a strategy its segment
                cannot use, micro-batches for modules that couple samples).
        """
        budget = Budget.parse(memory_budget)
        batch = self.batch_size if batch_size is None else batch_size
        positive_int(batch, "batch_size", "Graph.plan")
        integer(max_inverted_run, "max_inverted_run", "Graph.plan", minimum=1, optional=True)
        pins = self._check_pins(pin or {})
        segments = segment_graph(self.specs, self.order, self.outputs, pins)
        modules = {n: s.module for n, s in self.specs.items()}
        costs = CostModel(self.profile, batch)
        self._note_measured_drift()
        options = [
            [
                costs.choice(s, estimate(segment, s, costs))
                for s in strategy_options(
                    segment,
                    modules,
                    batch,
                    self._run_bound(segment, max_inverted_run),
                    budget.flat,
                    self.profile,
                )
            ]
            for segment in segments
        ]
        for segment, opts in zip(segments, options, strict=True):
            if not opts:
                raise ValueError(
                    f"Graph node {segment.nodes[0]!r}: no strategy of its segment rebuilds at "
                    f"most max_inverted_run={max_inverted_run} nodes"
                )
        choices, minimum = search(segments, options, costs, budget)
        plan = self._make_plan(segments, choices, costs, budget, minimum)
        self._install(segments, [c.strategy for c in choices])
        self.current_plan = plan
        self.batch_size = batch
        return plan

    def drift_reports(self) -> dict[str, DriftReport]:
        """What the drift guard of each invert-mode segment measured on its last checked
        backward, by the segment's first node (segments not yet checked are left out)."""
        return {
            runner.segment.nodes[0]: runner.chain.drift_report
            for runner in self._runners
            if isinstance(runner, InvertibleRunner) and runner.chain.drift_report is not None
        }

    def _note_measured_drift(self) -> None:
        """Remember, per node, how many nodes reconstruction may rebuild from one kept tensor
        before the measured drift exceeded its tolerance (half the run that exceeded it);
        :meth:`plan` then keeps anchors at least that often in segments holding the node."""
        for runner in self._runners:
            if not isinstance(runner, InvertibleRunner) or runner.chain.drift_report is None:
                continue
            after = runner.chain.drift_report.exceeded_after()
            if after is None:
                continue
            anchor = runner.strategy.anchor_every or len(runner.segment.nodes)
            bound = max(1, min(after, anchor) // 2)
            for node in runner.segment.nodes:
                self._drift_runs[node] = min(self._drift_runs.get(node, bound), bound)

    def _run_bound(self, segment: Segment, max_inverted_run: int | None) -> int | None:
        """``max_inverted_run`` tightened by the drift measured in the segment's nodes."""
        bounds = [self._drift_runs[n] for n in segment.nodes if n in self._drift_runs]
        if max_inverted_run is not None:
            bounds.append(max_inverted_run)
        return min(bounds, default=None)

    def _check_pins(self, pin: Mapping[str, Strategy | str]) -> dict[str, Strategy]:
        if not isinstance(pin, Mapping):
            raise TypeError(f"Graph.plan: pin must map node names to strategies, got {pin!r}")
        pins: dict[str, Strategy] = {}
        for name, value in pin.items():
            spec = self.specs.get(name)
            if spec is None or spec.kind == "input":
                raise ValueError(
                    f"Graph.plan: pin names {name!r}, which is not a node of the graph "
                    f"(nodes: {[n for n in self.order if self.specs[n].kind != 'input']})"
                )
            strategy = Strategy.parse(value, f"Graph {spec.describe()}")
            if strategy.kind == "invert" and spec.kind != "invertible":
                raise ValueError(
                    f"Graph {spec.describe()}: pinned to {str(strategy)!r}, but only invertible "
                    "nodes can be rebuilt by inversion; use 'store' or 'checkpoint'"
                )
            if strategy.micro_batches > 1 and spec.module is not None:
                check_acts_per_sample(spec.module, f"Graph {spec.describe()}")
            pins[name] = strategy
        return pins

    def _make_plan(
        self,
        segments: Sequence[Segment],
        choices: Sequence[Choice],
        costs: CostModel,
        budget: Budget,
        minimum: float,
    ) -> Plan:
        """The :class:`Plan` of ``choices``, a tensor kept by several segments counted once."""
        rows = tuple(
            SegmentPlan(
                index=segment.index,
                kind=segment.kind,
                nodes=segment.nodes,
                strategy=choice.strategy,
                pinned=segment.pin is not None,
                kept_bytes=kept,
                working_bytes=choice.estimate.working_bytes,
                extra_cost=choice.estimate.extra_cost,
            )
            for segment, choice, kept in zip(
                segments, choices, costs.kept_bytes(choices), strict=True
            )
        )
        score = costs.score(choices)
        return Plan(
            segments=rows,
            budget=budget,
            batch_size=costs.batch_size,
            kept_bytes=score.kept,
            peak_bytes=score.peak,
            minimum_peak_bytes=minimum,
            param_grad_bytes=float(self.profile.param_grad_bytes),
            extra_cost=score.extra,
            forward_cost=costs.forward_cost,
            cost_unit=self.profile.cost_unit,
        )

    def explain(self, print_table: bool = True) -> Plan:
        """Print the current plan as a table (see :meth:`Plan.table`) and return it."""
        if self.current_plan is None:
            raise RuntimeError("Graph.explain: the graph has no plan yet; call plan()")
        if print_table:
            print(self.current_plan.table())
        return self.current_plan

    # -- applying a plan --------------------------------------------------------------------
    def _install(self, segments: Sequence[Segment], strategies: Sequence[Strategy]) -> None:
        tuples = self.profile.tuples
        runners: list[InvertibleRunner | NodesRunner] = [
            InvertibleRunner(segment, strategy, self.specs, tuples)
            if segment.kind == "invertible"
            else NodesRunner(segment, strategy, self.specs, tuples)
            for segment, strategy in zip(segments, strategies, strict=True)
        ]
        # free each tensor once the last segment that reads it has run
        last_read: dict[str, int] = {}
        for segment in segments:
            for key in self._items(segment.reads):
                last_read[key] = segment.index
        release: list[list[str]] = [[] for _ in segments]
        outputs = set(self._items(self.outputs.values()))
        for key, index in last_read.items():
            if key not in outputs:
                release[index].append(key)
        self.segments = tuple(segments)
        self._runners = runners
        self._release = release

    def _items(self, ports: Iterable[Port]) -> list[str]:
        """The tensor keys behind ``ports`` (a tuple port stands for its items)."""
        tuples = self.profile.tuples
        return [item for p in ports for item in tuples.get(str(p), (str(p),))]

    # -- running ----------------------------------------------------------------------------
    def forward(self, *args: Tensor, **kwargs: Tensor) -> dict[str, Tensor]:
        """Run the graph; inputs by name (or positionally in declaration order).

        Returns:
            The named outputs (a tensor each; a tuple for an autograd node's tuple).
        """
        if self.current_plan is None:
            raise RuntimeError("Graph: the graph has no plan yet; call plan()")
        values = self._bind(args, kwargs)
        with validation_scope(False):  # checked once, at the graph's entry
            for runner, release in zip(self._runners, self._release, strict=True):
                runner(values)
                for key in release:
                    del values[key]
        return {
            name: read_port(values, self.profile.tuples, port)
            for name, port in self.outputs.items()
        }

    def _bind(self, args: Sequence[Tensor], kwargs: Mapping[str, Tensor]) -> dict[str, Any]:
        names = self.input_names
        if len(args) > len(names):
            raise TypeError(f"Graph: takes {len(names)} inputs {list(names)}, got {len(args)}")
        bound = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in names:
                raise TypeError(f"Graph: got an unknown input {name!r}; inputs are {list(names)}")
            if name in bound:
                raise TypeError(f"Graph: input {name!r} given twice")
            bound[name] = value
        finite = data_checks(self.validate)
        for name in names:
            place = f"Graph input {name!r}"
            if name not in bound:
                raise InputTypeError(f"missing; inputs are {list(names)}", where=(place,))
            value = check_batch(bound[name], place)
            if finite and value.is_floating_point():
                check_finite(value, place, validate=True, fix="repair or drop such samples")
        return bound

    def extra_repr(self) -> str:
        kinds = Counter(s.kind for s in self.specs.values())
        return ", ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
