"""A plan as data and as a table: per segment, the strategy, bytes kept and extra compute."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from hybridflow.graph.cost import Budget
from hybridflow.graph.segments import SegmentKind
from hybridflow.graph.strategy import Strategy
from hybridflow.sizes import format_bytes

__all__ = ["Plan", "SegmentPlan"]


@dataclass(frozen=True, kw_only=True)
class SegmentPlan:
    """The plan of one segment.

    Attributes:
        index: the segment's position in the order of execution.
        kind: ``"invertible"``, ``"autograd"`` or ``"operator"``.
        nodes: its nodes, in order.
        strategy: the chosen strategy.
        pinned: whether the user fixed it.
        kept_bytes: estimated bytes it keeps for backward (a tensor kept by several segments
            is counted in the first).
        working_bytes: estimated memory it needs on top of that while it runs.
        extra_cost: estimated compute beyond plain autograd (seconds or FLOPs).
    """

    index: int
    kind: SegmentKind
    nodes: tuple[str, ...]
    strategy: Strategy
    pinned: bool
    kept_bytes: float
    working_bytes: float
    extra_cost: float


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What the planner chose for a graph, with its estimates.

    Attributes:
        segments: one :class:`SegmentPlan` per segment, in the order of execution.
        budget: the :class:`~hybridflow.graph.cost.Budget` planned for (its ``limit``, also
            :attr:`memory_budget`: bytes, ``math.inf`` for unlimited, ``None`` when no budget
            was given and the plan is the cheapest flat in depth).
        batch_size: the batch size the estimates are for.
        kept_bytes: estimated bytes kept for backward at the end of the forward pass.
        peak_bytes: estimated peak of a training step: parameter gradients, plus what is
            kept, plus the largest working set.
        minimum_peak_bytes: the smallest peak any plan (with the pins) reaches.
        param_grad_bytes: bytes of the parameter gradients (part of the peak).
        extra_cost: estimated compute beyond plain autograd.
        forward_cost: estimated cost of one forward pass, for scale.
        cost_unit: ``"s"`` (measured time) or ``"FLOP"``.
    """

    segments: tuple[SegmentPlan, ...]
    budget: Budget
    batch_size: int
    kept_bytes: float
    peak_bytes: float
    minimum_peak_bytes: float
    param_grad_bytes: float
    extra_cost: float
    forward_cost: float
    cost_unit: str

    @property
    def memory_budget(self) -> float | None:
        """The budget in bytes (``math.inf``: unlimited), ``None`` when none was given."""
        return self.budget.limit

    def strategies(self) -> dict[str, Strategy]:
        """The strategy of every node, by name."""
        return {node: s.strategy for s in self.segments for node in s.nodes}

    def records(self) -> list[dict[str, Any]]:
        """The table as a list of dicts, one per segment (strategies as strings)."""
        rows = []
        for segment in self.segments:
            row = asdict(segment)
            row["strategy"] = str(segment.strategy)
            row["nodes"] = list(segment.nodes)
            rows.append(row)
        return rows

    def summary(self) -> dict[str, Any]:
        """The totals as a dict."""
        return {
            "memory_budget": self.memory_budget,
            "batch_size": self.batch_size,
            "kept_bytes": self.kept_bytes,
            "peak_bytes": self.peak_bytes,
            "minimum_peak_bytes": self.minimum_peak_bytes,
            "param_grad_bytes": self.param_grad_bytes,
            "extra_cost": self.extra_cost,
            "forward_cost": self.forward_cost,
            "cost_unit": self.cost_unit,
        }

    def _cost(self, value: float) -> str:
        share = value / self.forward_cost if self.forward_cost > 0 else 0.0
        if self.cost_unit == "FLOP":
            scaled, prefix = value, ""
            for next_prefix in ("k", "M", "G", "T"):
                if abs(scaled) < 1000:
                    break
                scaled, prefix = scaled / 1000, next_prefix
            text = f"{scaled:.3g} {prefix}FLOP"
        elif value >= 1:
            text = f"{value:.3g} s"
        else:
            text = f"{value * 1e3:.3g} ms"
        return f"{text} ({share:+.0%} fwd)"

    def table(self) -> str:
        """The plan as a fixed-width table, with the totals against the budget."""
        header = ("seg", "kind", "nodes", "strategy", "kept", "working", "extra compute")
        rows = [
            (
                str(s.index),
                s.kind,
                _label(s.nodes),
                str(s.strategy) + (" (pinned)" if s.pinned else ""),
                format_bytes(s.kept_bytes),
                format_bytes(s.working_bytes),
                self._cost(s.extra_cost),
            )
            for s in self.segments
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        budget = str(self.budget)
        limit = self.budget.limit
        if limit is not None and not math.isinf(limit):
            budget += f" ({self.peak_bytes / limit:.0%} used)"
        lines += [
            "",
            f"batch {self.batch_size}: kept {format_bytes(self.kept_bytes)}, peak "
            f"{format_bytes(self.peak_bytes)} (parameter gradients "
            f"{format_bytes(self.param_grad_bytes)}); {budget}; smallest possible peak "
            f"{format_bytes(self.minimum_peak_bytes)}",
            f"extra compute {self._cost(self.extra_cost)}",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _label(nodes: tuple[str, ...]) -> str:
    if len(nodes) <= 3:
        return ", ".join(nodes)
    return f"{nodes[0]} ... {nodes[-1]} ({len(nodes)})"
