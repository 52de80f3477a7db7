"""The record of one reconstructing pass: fingerprints and anchors of every layer's input.

While a chain runs a checked or anchored pass, a :class:`PassRecord` is *active*
(:func:`recording`): chains nested in it (run as its layers) record and check their layers
under the same record, keyed by the path of layer indices (:func:`at_layer`), so drift is
measured per leaf layer at any nesting depth, and anchors are kept by the same paths. A pass
run on slices of the batch records the rows of each slice (:func:`rows`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from hybridflow.autograd.data_init import all_initialized
from hybridflow.autograd.fingerprint import fingerprint as fingerprint_of
from hybridflow.autograd.fingerprint import relative_error
from hybridflow.autograd.running_stats import buffer_versions

__all__ = ["PassRecord", "Path", "at_layer", "recording", "rows"]

Path = tuple[int, ...]
"""A layer's place in nested chains: the index in each chain, outermost first."""


_CHUNK = 64
"""Fingerprints are kept many layers to a tensor (8, 16, 32, then 64 rows per chunk): a few
allocations instead of one small one per layer sitting among the pass's temporaries (glibc
then cannot return the freed memory between them, and a checked step's resident memory grew
with depth: +1.2 MiB at 97 layers of 32x32 images before, none after)."""


class PassRecord:
    """Fingerprints and anchors of one checked pass of a chain (and of chains nested in it).

    Args:
        batch: the batch size of the pass (fingerprint rows).
        anchor_paths: paths of the layers whose *input* is kept whole (repair anchors).
        fingerprints: whether to fingerprint (off: the record keeps anchors only).
        first: whether this is the chain's first recorded pass (layers are then watched for
            hidden state, :func:`~hybridflow.autograd.running_stats.check_no_hidden_state`).
    """

    def __init__(
        self, batch: int, anchor_paths: frozenset[Path], fingerprints: bool, first: bool
    ) -> None:
        self.batch = batch
        self.first = first
        self.anchor_paths = anchor_paths
        self.fingerprints = fingerprints
        self.recorded: dict[Path, Tensor] = {}
        self.names: dict[Path, str] = {}
        self.anchors: dict[Path, Tensor] = {}
        self.chunks: list[Tensor] = []
        self.used: list[int] = []
        self.slots: dict[Path, tuple[int, int]] = {}
        self.measured: list[Path] = []
        self.values: Tensor | None = None
        self.checking = False
        self.path: list[int] = []
        self.labels: list[str] = []
        self.rows: slice | None = None

    @property
    def watches_layers(self) -> bool:
        """Whether the forward pass measures every layer (fingerprints, hidden state)."""
        return self.fingerprints or self.first

    # -- forward -------------------------------------------------------------------------
    def watched_buffers(self, layer: nn.Module, is_chain: bool) -> list | None:
        """On the first recorded pass, the buffers of ``layer`` to watch for hidden state
        (not for layers that wait for their data-dependent initialisation, nor for chains,
        whose layers are watched one by one)."""
        if not self.first or is_chain or not all_initialized(layer):
            return None
        return buffer_versions(layer)

    def record_input(self, h: Tensor, fingerprint: bool = True) -> None:
        """Keep the fingerprint (unless not asked) and the anchor (when its path is one) of
        the current layer's input."""
        if not (isinstance(h, Tensor) and h.is_floating_point() and h.numel() > 0):
            return  # the layer refuses it with its own message
        path = tuple(self.path)
        if path in self.anchor_paths:
            if self.rows is None:
                self.anchors[path] = h.detach()
            else:  # a micro-batched pass: the batch is assembled row by row
                if path not in self.anchors:
                    self.anchors[path] = h.new_empty((self.batch, *h.shape[1:]))
                self.anchors[path][self.rows] = h.detach()
        if self.fingerprints and fingerprint:
            value = fingerprint_of(h)
            if path not in self.recorded:
                self.recorded[path] = self._slot(path, value)
                self.names[path] = " > ".join(self.labels)
            self.recorded[path][slice(None) if self.rows is None else self.rows] = value

    def _slot(self, path: Path, value: Tensor) -> Tensor:
        """A row ``(batch, width)`` of a chunk of fingerprints for ``path``."""
        shape = (self.batch, value.shape[1])
        for c in range(len(self.chunks) - 1, -1, -1):
            chunk, used = self.chunks[c], self.used[c]
            if used < len(chunk) and chunk.shape[1:] == shape and chunk.dtype == value.dtype:
                self.slots[path] = (c, used)
                self.used[c] += 1
                return chunk[used]
        rows = min(_CHUNK, 8 * 2 ** len(self.chunks))
        self.chunks.append(value.new_empty((rows, *shape)))
        self.used.append(1)
        self.slots[path] = (len(self.chunks) - 1, 0)
        return self.chunks[-1][0]

    # -- backward ------------------------------------------------------------------------
    def anchor(self) -> Tensor | None:
        """The kept input of the current layer (its rows of it), if one was kept."""
        anchor = self.anchors.get(tuple(self.path))
        if anchor is None or self.rows is None:
            return anchor
        return anchor[self.rows]

    def check_input(self, rebuilt: Tensor, exact: bool = False) -> None:
        """Measure the current layer's rebuilt input against its fingerprint (``exact``: it
        is the kept anchor itself, error 0)."""
        path = tuple(self.path)
        recorded = self.recorded.get(path)
        if recorded is None:
            return
        if self.rows is not None:
            recorded = recorded[self.rows]
        if recorded.shape[0] != rebuilt.shape[0]:
            return
        if self.values is None:  # one tensor for every measurement (see _CHUNK)
            self.values = rebuilt.new_zeros(len(self.recorded), dtype=torch.float64)
        slot = len(self.measured)
        if slot >= self.values.numel():  # a layer measured twice (shared): make room
            self.values = torch.cat([self.values, self.values.new_zeros(self.values.numel())])
        self.measured.append(path)
        if not exact:
            self.values[slot] = relative_error(fingerprint_of(rebuilt), recorded)

    def measurements(self) -> list[tuple[Path, float]]:
        """``(path, error)`` in the order they were measured (one device sync)."""
        if self.values is None:
            return []
        values = self.values[: len(self.measured)].cpu().tolist()
        return list(zip(self.measured, values, strict=True))

    def saved(self) -> tuple[dict[str, object], list[Tensor]]:
        """The tensors to save for backward (fingerprint chunks and anchors) and their
        layout; the record lets go of them (:meth:`restore` puts them back in backward)."""
        layout = {
            "chunks": len(self.chunks),
            "slots": dict(self.slots),
            "anchors": list(self.anchors),
        }
        tensors = [*self.chunks, *self.anchors.values()]
        self.recorded, self.anchors, self.chunks = {}, {}, []  # autograd holds them now
        return layout, tensors

    def restore(self, layout: dict[str, object], tensors: tuple[Tensor, ...]) -> None:
        """Put back what :meth:`saved` returned, for the backward pass."""
        count = layout["chunks"]
        chunks, anchors = tensors[:count], tensors[count:]  # type: ignore[misc]
        self.recorded = {path: chunks[c][r] for path, (c, r) in layout["slots"].items()}  # type: ignore[union-attr]
        self.anchors = dict(zip(layout["anchors"], anchors, strict=True))  # type: ignore[arg-type]


class _Active:
    """The record of the chain pass running now, if any. A plain attribute for the reason
    given in ``checks._ChainDepth`` (torch.compile traces attribute updates)."""

    def __init__(self) -> None:
        self.record: PassRecord | None = None


_ACTIVE = _Active()


@contextmanager
def recording(record: PassRecord | None, *, checking: bool) -> Iterator[None]:
    """Make ``record`` the active one for the enclosed pass (``checking`` for backward)."""
    previous = _ACTIVE.record
    if record is not None:
        record.checking = checking
        record.path, record.labels = [], []
    _ACTIVE.record = record
    try:
        yield
    finally:
        _ACTIVE.record = previous


@contextmanager
def at_layer(index: int, layer: torch.nn.Module) -> Iterator[PassRecord | None]:
    """Enter layer ``index`` of the running chain: the active record's path gains it."""
    record = _ACTIVE.record
    if record is None:
        yield None
        return
    record.path.append(index)
    record.labels.append(f"layer {index} ({type(layer).__name__})")
    try:
        yield record
    finally:
        record.path.pop()
        record.labels.pop()


@contextmanager
def rows(start: int, stop: int) -> Iterator[None]:
    """The enclosed pass runs on rows ``start:stop`` of the batch (micro-batches)."""
    record = _ACTIVE.record
    if record is None:
        yield
        return
    previous = record.rows
    outer = 0 if previous is None else previous.start
    record.rows = slice(outer + start, outer + stop)
    try:
        yield
    finally:
        record.rows = previous
