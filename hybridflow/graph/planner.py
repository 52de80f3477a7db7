"""The planner: a strategy per segment that fits a memory budget with the least extra compute.

A plan's estimated peak is the parameter gradients, plus the bytes every segment keeps (a
tensor kept by several segments counted once), plus the largest working set of a segment
(:class:`~hybridflow.graph.cost.CostModel`; one segment's estimates come from
:mod:`hybridflow.graph.estimates`). Among the plans whose peak fits the budget, the planner
takes the least extra compute, then the smallest peak, then the least float32 drift (the
longest run rebuilt by inversion). Anchors cost memory and save no compute, so they are
used to meet a bound on the drift (``max_inverted_run``), not to fill the budget: memory the
plan does not need stays free for what the estimates miss.

The search is exhaustive over the segments' strategies once dominated ones are dropped (a
strategy is dominated when another keeps a subset of its tensors and is no worse in any
other respect), which is exact for graphs of a few segments. Past :data:`EXHAUSTIVE_LIMIT`
combinations it becomes greedy: start from the plan of least memory and keep taking the
single change of strategy that saves the most compute while still fitting.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

from hybridflow.graph.cost import Budget, Choice, CostModel, Score
from hybridflow.graph.segments import Segment
from hybridflow.sizes import format_bytes

__all__ = ["EXHAUSTIVE_LIMIT", "BudgetError", "Choice", "search"]

EXHAUSTIVE_LIMIT = 50_000
"""Largest number of strategy combinations searched exhaustively."""


class BudgetError(ValueError):
    """No plan fits the memory budget. ``minimum`` is the smallest estimated peak (bytes)."""

    def __init__(self, budget: float, minimum: float, detail: str) -> None:
        super().__init__(
            f"Graph.plan: memory_budget {format_bytes(budget)} ({budget:.0f} bytes) is below "
            f"the smallest estimated peak of any plan, {format_bytes(minimum)} ({minimum:.0f} "
            f"bytes){detail}; raise the budget to at least that, unpin segments, or train on "
            "smaller batches"
        )
        self.budget = budget
        self.minimum = minimum


def search(
    segments: Sequence[Segment],
    options: Sequence[Sequence[Choice]],
    costs: CostModel,
    budget: Budget,
) -> tuple[list[Choice], float]:
    """The best choice per segment under ``budget``, and the smallest peak of any plan.

    Args:
        segments: the segments.
        options: per segment, its strategies with their estimates
            (:meth:`CostModel.choice <hybridflow.graph.cost.CostModel.choice>`).
        costs: the cost model at the planned batch size.
        budget: the bound of the estimated peak.

    Raises:
        BudgetError: if no plan fits; it states the smallest peak.
    """
    candidates = [_prune(list(opts)) for opts in options]
    total = math.prod(len(c) for c in candidates)
    best: tuple[Choice, ...] | None = None
    best_rank: tuple[float, ...] | None = None
    minimum = math.inf
    if total <= EXHAUSTIVE_LIMIT:
        for plan in itertools.product(*candidates):
            s = costs.score(plan)
            minimum = min(minimum, s.peak)
            if budget.fits(s.peak) and (best_rank is None or s.rank() < best_rank):
                best, best_rank = plan, s.rank()
    else:
        plan_list = [min(c, key=costs.footprint) for c in candidates]
        minimum = costs.score(plan_list).peak
        if budget.fits(minimum):
            best = tuple(_greedy(plan_list, candidates, budget, costs.score))
    if best is None:
        pinned = [s for s in segments if s.pin is not None]
        detail = f" with {len(pinned)} pinned segment(s)" if pinned else ""
        raise BudgetError(budget.bound, minimum, detail)
    return list(best), minimum


def _prune(options: list[Choice]) -> list[Choice]:
    """Drop options that another option beats or equals in every respect."""
    kept: list[Choice] = []
    for i, a in enumerate(options):
        dominated = False
        for j, b in enumerate(options):
            if i == j:
                continue
            ea, eb = a.estimate, b.estimate
            no_worse = (
                eb.extra_cost <= ea.extra_cost
                and eb.drift <= ea.drift
                and eb.working_bytes <= ea.working_bytes
                and eb.own_bytes <= ea.own_bytes
                and b.aliases <= a.aliases
            )
            equal = (
                eb.extra_cost == ea.extra_cost
                and eb.drift == ea.drift
                and eb.working_bytes == ea.working_bytes
                and eb.own_bytes == ea.own_bytes
                and b.aliases == a.aliases
            )
            if no_worse and (not equal or j < i):
                dominated = True
                break
        if not dominated:
            kept.append(a)
    return kept


def _greedy(
    plan: list[Choice],
    candidates: Sequence[Sequence[Choice]],
    budget: Budget,
    score: Callable[[Sequence[Choice]], Score],
) -> list[Choice]:
    """Improve ``plan`` one segment at a time while the budget holds."""
    current = list(plan)
    current_rank = score(current).rank()
    while True:
        best_move: tuple[tuple[float, ...], int, Choice] | None = None
        for i, options in enumerate(candidates):
            for option in options:
                if option is current[i]:
                    continue
                trial = [*current[:i], option, *current[i + 1 :]]
                s = score(trial)
                better = best_move is None or s.rank() < best_move[0]
                if budget.fits(s.peak) and s.rank() < current_rank and better:
                    best_move = (s.rank(), i, option)
        if best_move is None:
            return current
        current_rank, i, option = best_move
        current[i] = option
