"""The cost model's arithmetic, written once: sizes at a batch size, a plan's peak and score.

:class:`CostModel` turns the sample run (:class:`~hybridflow.graph.profile.GraphProfile`)
and a batch size into bytes and compute: tensors whose first dimension is the batch, and the
nodes' own activations and costs, scale linearly with the batch (:attr:`CostModel.scale`); a
storage kept by several segments is counted once (:meth:`CostModel.kept_bytes`); the peak of
a training step is the parameter gradients, plus everything kept, plus the largest working
set of a segment (:meth:`CostModel.peak`). The planner ranks plans by :meth:`CostModel.score`,
the runtime's :class:`~hybridflow.graph.Plan` reports the same numbers, and
:mod:`hybridflow.graph.estimates` prices one segment under one strategy with them.
:class:`Budget` is what the plan must fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from hybridflow.graph.profile import GraphProfile
from hybridflow.graph.strategy import Strategy
from hybridflow.sizes import format_bytes, parse_bytes

__all__ = ["Budget", "Choice", "CostModel", "Estimate", "Score"]


@dataclass(frozen=True)
class Budget:
    """A memory budget: the bound of a plan's estimated peak.

    Attributes:
        limit: bytes (``math.inf``: unlimited, store everything that saves compute), or
            ``None`` for no budget: the cheapest plan whose memory does not grow with the
            depth of invertible segments.

    Example:
        >>> Budget.parse("2GiB").limit == 2 * 2**30, Budget.parse(None).flat
        (True, True)
        >>> str(Budget.parse("unlimited")), str(Budget.parse(2**20))
        ('budget unlimited', 'budget 1.00 MiB')
    """

    limit: float | None = None

    @classmethod
    def parse(cls, value: Budget | int | float | str | None) -> Budget:
        """A budget from itself, ``None`` (no budget), bytes, or a size such as ``"512MiB"``,
        ``"2GB"``, ``"unlimited"`` (:func:`~hybridflow.graph.parse_bytes`)."""
        if isinstance(value, Budget):
            return value
        return cls(None if value is None else parse_bytes(value))

    @property
    def flat(self) -> bool:
        """Whether no budget was given (plan flat in depth rather than to a bound)."""
        return self.limit is None

    @property
    def bound(self) -> float:
        """The peak allowed, in bytes (``math.inf`` without a bound)."""
        return math.inf if self.limit is None else self.limit

    def fits(self, peak: float) -> bool:
        """Whether a plan of estimated ``peak`` bytes fits."""
        return peak <= self.bound

    def __str__(self) -> str:
        if self.limit is None:
            return "no budget (cheapest plan flat in depth)"
        return f"budget {format_bytes(self.limit)}"


@dataclass(frozen=True)
class Estimate:
    """The estimated cost of one segment under one strategy.

    Attributes:
        own_bytes: activations kept for backward that are not ports of the graph.
        kept_ports: ports kept for backward (counted once per storage across segments).
        working_bytes: memory the segment needs on top of what is kept, while it runs.
        extra_cost: compute beyond plain autograd, in the profile's cost unit.
        drift: the longest run of nodes rebuilt by inversion from one kept tensor (0 when
            nothing is inverted); float32 reconstruction error grows with it.
    """

    own_bytes: float
    kept_ports: frozenset[str]
    working_bytes: float
    extra_cost: float
    drift: int


@dataclass(frozen=True)
class Choice:
    """One option of one segment: a strategy, its estimate, and the storages it keeps."""

    strategy: Strategy
    estimate: Estimate
    aliases: frozenset[int]


@dataclass(frozen=True)
class Score:
    """What the planner compares plans by (see :meth:`CostModel.score`)."""

    kept: float
    peak: float
    extra: float
    drift: int

    def rank(self) -> tuple[float, ...]:
        """Least extra compute first, then the smallest peak, then the least drift."""
        return (self.extra, self.peak, self.drift)


@dataclass(frozen=True)
class CostModel:
    """Bytes and compute of a graph at ``batch_size``, from its sample run ``profile``."""

    profile: GraphProfile
    batch_size: int

    @cached_property
    def scale(self) -> float:
        """How many times the sample's batch the planned batch is."""
        return self.batch_size / self.profile.batch_size

    def port_bytes(self, port: str) -> float:
        """Bytes of the tensor at ``port`` (scaled when batched)."""
        meta = self.profile.ports[port]
        return meta.nbytes * (self.scale if meta.batched else 1.0)

    @cached_property
    def storage_bytes(self) -> dict[int, float]:
        """Bytes of each storage (ports sharing one, by their ``alias``: the largest)."""
        sizes: dict[int, float] = {}
        for port, meta in self.profile.ports.items():
            sizes[meta.alias] = max(sizes.get(meta.alias, 0.0), self.port_bytes(port))
        return sizes

    def choice(self, strategy: Strategy, estimate: Estimate) -> Choice:
        """``strategy`` with its ``estimate`` and the storages it keeps."""
        aliases = frozenset(self.profile.ports[p].alias for p in estimate.kept_ports)
        return Choice(strategy, estimate, aliases)

    def kept_bytes(self, plan: Sequence[Choice]) -> list[float]:
        """Bytes each segment of ``plan`` keeps for backward, a storage kept by several
        segments counted in the first."""
        seen: set[int] = set()
        kept = []
        for choice in plan:
            new = choice.aliases - seen
            seen |= new
            kept.append(choice.estimate.own_bytes + self._storages(new))
        return kept

    def footprint(self, choice: Choice) -> float:
        """What one option needs alone: what it keeps plus its working set."""
        estimate = choice.estimate
        return estimate.own_bytes + self._storages(choice.aliases) + estimate.working_bytes

    def peak(self, kept: float, working: float) -> float:
        """The estimated peak of a training step keeping ``kept`` bytes, whose largest
        working set is ``working``: the parameter gradients come on top."""
        return float(self.profile.param_grad_bytes) + kept + working

    def score(self, plan: Sequence[Choice]) -> Score:
        """Kept bytes, peak, extra compute and longest inverted run of ``plan``."""
        aliases: set[int] = set()
        for choice in plan:
            aliases |= choice.aliases
        kept = sum(c.estimate.own_bytes for c in plan) + self._storages(aliases)
        working = max((c.estimate.working_bytes for c in plan), default=0.0)
        return Score(
            kept,
            self.peak(kept, working),
            sum(c.estimate.extra_cost for c in plan),
            max((c.estimate.drift for c in plan), default=0),
        )

    @cached_property
    def forward_cost(self) -> float:
        """The cost of one forward pass of the whole graph, for scale."""
        return sum(n.cost for n in self.profile.nodes.values()) * self.scale

    def _storages(self, aliases: Iterable[int]) -> float:
        return sum(self.storage_bytes[a] for a in aliases)
