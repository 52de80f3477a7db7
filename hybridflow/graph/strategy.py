"""How a segment of a graph runs: store, reconstruct by inversion, or checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from hybridflow.arguments import integer
from hybridflow.autograd.tiling import TileSize, check_tile_size

__all__ = ["Strategy", "StrategyKind"]

StrategyKind = Literal["store", "invert", "checkpoint"]
"""What a segment keeps for backward.

* ``"store"``: plain autograd; every activation the segment's operations save is kept.
* ``"invert"``: invertible segments only; one reconstructing :class:`~hybridflow.Chain` keeps
  the segment's output and condition (and optional anchors) and rebuilds the rest by
  inversion during backward.
* ``"checkpoint"``: ``torch.utils.checkpoint`` (non-reentrant) keeps the segment's inputs and
  recomputes its forward pass during backward.
"""


@dataclass(frozen=True)
class Strategy:
    """A strategy for one segment.

    Args:
        kind: see :data:`StrategyKind`.
        anchor_every: ``"invert"`` only: also keep the activation after every ``m``-th node of
            the segment and restart the reconstruction from it. Inversion then runs over at
            most ``m`` nodes, which bounds float32 drift, at the memory of those activations.
        micro_batches: ``"invert"`` only: run the segment's no-grad forward pass and each
            node's reconstruction on this many slices of the batch, one after another. The
            gradients are the same; the working set of a node (its conditioner's activations)
            shrinks by this factor. Refused for modules that couple samples (BatchNorm or
            Dropout in training mode).
        tile_size: ``"invert"`` only: run the segment's couplings tile by tile over space
            (cores of this edge plus the conditioner's halo) in the no-grad forward pass and
            while reconstructing (see :class:`~hybridflow.Chain`). The gradients are the same;
            a coupling's working set shrinks to about one tile's. Refused for conditioners
            whose receptive field is unbounded or that couple positions.

    Example:
        >>> str(Strategy("invert", anchor_every=4, micro_batches=2))
        'invert(anchor_every=4, micro_batches=2)'
        >>> str(Strategy("invert", micro_batches=4, tile_size=128))
        'invert(micro_batches=4, tile_size=128)'
        >>> Strategy.parse("checkpoint", "node 'summary'")
        Strategy(kind='checkpoint', anchor_every=None, micro_batches=1, tile_size=None)
    """

    kind: StrategyKind
    anchor_every: int | None = None
    micro_batches: int = 1
    tile_size: TileSize | None = None

    def __post_init__(self) -> None:
        if self.kind not in get_args(StrategyKind):
            raise ValueError(
                f"Strategy: kind must be one of {get_args(StrategyKind)}, got {self.kind!r}"
            )
        for name, value, allow_none in (
            ("anchor_every", self.anchor_every, True),
            ("micro_batches", self.micro_batches, False),
        ):
            integer(value, name, "Strategy", minimum=1, optional=allow_none)
        object.__setattr__(self, "tile_size", check_tile_size(self.tile_size, "Strategy"))
        if self.kind != "invert" and (
            self.anchor_every is not None or self.micro_batches > 1 or self.tile_size is not None
        ):
            raise ValueError(
                f"Strategy: anchor_every, micro_batches and tile_size apply to 'invert' only, "
                f"got kind={self.kind!r} with anchor_every={self.anchor_every!r}, "
                f"micro_batches={self.micro_batches!r}, tile_size={self.tile_size!r}"
            )

    @classmethod
    def parse(cls, value: Strategy | str, where: str) -> Strategy:
        """A :class:`Strategy` from itself or from a kind name; ``where`` names the owner in
        error messages."""
        if isinstance(value, Strategy):
            return value
        if isinstance(value, str) and value in get_args(StrategyKind):
            return cls(value)  # type: ignore[arg-type]
        raise ValueError(
            f"{where}: a strategy is one of {get_args(StrategyKind)} or a Strategy, got {value!r}"
        )

    def __str__(self) -> str:
        options = []
        if self.anchor_every is not None:
            options.append(f"anchor_every={self.anchor_every}")
        if self.micro_batches > 1:
            options.append(f"micro_batches={self.micro_batches}")
        if self.tile_size is not None:
            options.append(f"tile_size={self.tile_size}")
        return f"{self.kind}({', '.join(options)})" if options else self.kind
