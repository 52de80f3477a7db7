"""Graph runtime and planner: invertible, autograd and operator nodes in one graph."""

from hybridflow.graph.builder import Graph
from hybridflow.graph.cost import Budget
from hybridflow.graph.explain import Plan, SegmentPlan
from hybridflow.graph.planner import BudgetError
from hybridflow.graph.runtime import GraphModule
from hybridflow.graph.strategy import Strategy, StrategyKind
from hybridflow.sizes import format_bytes, parse_bytes

__all__ = [
    "Budget",
    "BudgetError",
    "Graph",
    "GraphModule",
    "Plan",
    "SegmentPlan",
    "Strategy",
    "StrategyKind",
    "format_bytes",
    "parse_bytes",
]
