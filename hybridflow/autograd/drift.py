"""The drift guard: measure how far reconstruction drifts from the forward pass, and act.

Reconstruction rebuilds every layer's input from its output. In exact arithmetic that is the
input the forward pass saw; in floating point, round-off grows through ill-conditioned
inverses ("exploding inverses", Behrmann et al. 2021), and a block whose inverse is slightly
wrong rebuilds something else altogether. Either way the gradients are wrong, silently.

The guard keeps a :mod:`fingerprint <hybridflow.autograd.fingerprint>` of every layer's input
during a checked forward pass (a few numbers per sample), recomputes it on the rebuilt input
during backward and reports the relative error per layer (:class:`DriftReport`). A policy then
acts on errors above the tolerance:

* ``"warn"`` (default): one :class:`~hybridflow.errors.DriftWarning` per chain, naming the
  layer where the drift first exceeded the tolerance and the fix;
* ``"raise"``: :class:`~hybridflow.errors.ReconstructionError` before any gradient is
  returned (the optimizer never sees the step);
* ``"repair"``: keep anchor activations from the next call on, spaced to hold the drift under
  the tolerance (said once, with the memory it costs).

Rebuilt values that are NaN or Inf where the forward pass's were finite always raise
:class:`~hybridflow.errors.ReconstructionError`, whatever the policy, on checked calls and on
unchecked ones alike (there the final rebuilt input and its gradient are checked).

While a chain runs a checked pass, a :class:`PassRecord` is *active*: chains nested in it
(run as its layers) record and check their layers under the same record, keyed by the path of
layer indices, so drift is measured per leaf layer at any nesting depth. Anchors are kept in
the same record, by the same paths.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import Tensor

from hybridflow.arguments import integer, number, one_of
from hybridflow.autograd.fingerprint import fingerprint as fingerprint_of
from hybridflow.autograd.fingerprint import relative_error
from hybridflow.errors import DriftWarning, ReconstructionError

__all__ = [
    "DriftGuard",
    "DriftPolicy",
    "DriftReport",
    "PassRecord",
    "at_layer",
    "default_tolerance",
    "max_drift",
    "recording",
    "rows",
]

DriftPolicy = Literal["warn", "raise", "repair"]

Path = tuple[int, ...]


def default_tolerance(dtype: torch.dtype) -> float:
    """The default relative drift tolerance for activations of ``dtype``: ``1e-5`` in float32
    (healthy chains of a few hundred layers drift 1e-6 to 1e-5 from round-off), ``1e-9`` in
    float64, ``5e-2`` in half precisions."""
    if dtype == torch.float64:
        return 1e-9
    if dtype in (torch.float16, torch.bfloat16):
        return 5e-2
    return 1e-5


@dataclass(frozen=True)
class DriftReport:
    """What one checked backward measured.

    Attributes:
        errors: estimated relative error ``||h' - h|| / ||h||`` (worst sample) of every rebuilt
            layer input, by layer name, in the order reconstruction rebuilt them (last layer
            first). ``inf``/``nan`` where the rebuilt values were not finite.
        tolerance: the tolerance they were compared with.
        call: the number of the differentiable call that was checked (1 = the first).
        paths: the path of layer indices of every layer in ``errors`` (outermost first).
    """

    errors: dict[str, float]
    tolerance: float
    call: int
    paths: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def exceeded_after(self) -> int | None:
        """How many top-level layers reconstruction had rebuilt when the drift first
        exceeded the tolerance (counting the layer itself), or ``None``."""
        first = self.exceeded
        if first is None:
            return None
        tops = list(dict.fromkeys(path[0] for path in self.paths.values() if path))
        top = self.paths[first][0] if self.paths.get(first) else tops[-1]
        return tops.index(top) + 1

    @property
    def max_error(self) -> float:
        """The largest error (``nan`` counts as ``inf``); 0 for an empty chain."""
        return max((_as_inf(e) for e in self.errors.values()), default=0.0)

    @property
    def worst_layer(self) -> str | None:
        """The layer with the largest error."""
        if not self.errors:
            return None
        return max(self.errors, key=lambda name: _as_inf(self.errors[name]))

    @property
    def exceeded(self) -> str | None:
        """The first layer (in reconstruction order) whose error exceeds the tolerance."""
        for name, error in self.errors.items():
            if not error <= self.tolerance:  # nan exceeds too
                return name
        return None

    def __str__(self) -> str:
        worst = self.worst_layer
        where = f" at {worst}" if worst else ""
        return f"max drift {self.max_error:.2e}{where} (tolerance {self.tolerance:.0e})"


def _as_inf(error: float) -> float:
    return math.inf if math.isnan(error) else error


def max_drift(module: torch.nn.Module) -> float:
    """The largest drift any invert-mode chain in ``module`` measured on its last checked
    backward (``nan`` when none has been checked yet), for logs."""
    from hybridflow.autograd.chain import Chain  # the chain imports this module

    reports = [m.drift_report for m in module.modules() if isinstance(m, Chain)]
    errors = [r.max_error for r in reports if r is not None]
    return max(errors) if errors else math.nan


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

    # -- forward -------------------------------------------------------------------------
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


class DriftGuard:
    """A chain's drift-guard settings and what it has measured.

    Args:
        on_drift: the policy (:data:`DriftPolicy`).
        tolerance: relative error above which the policy acts; ``None`` for
            :func:`default_tolerance` of the activations' dtype.
        every: check one differentiable call in ``every`` (the first always); ``0`` checks
            none (NaN/Inf are still caught).
        owner: the chain's name in argument errors.
    """

    def __init__(
        self, on_drift: DriftPolicy, tolerance: float | None, every: int, owner: str
    ) -> None:
        one_of(on_drift, "on_drift", owner, get_args(DriftPolicy))
        number(tolerance, "drift_tolerance", owner, minimum=0, open_low=True, optional=True)
        integer(every, "drift_every", owner, minimum=0)
        self.on_drift: DriftPolicy = on_drift
        self.tolerance = tolerance
        self.every = every
        self.calls = 0
        self.report: DriftReport | None = None
        self.repair_every: int | None = None
        self.repair_paths: frozenset[Path] = frozenset()
        self.check_next = False
        self.warned = False

    def next_call_checked(self) -> bool:
        """Count a differentiable call; whether to fingerprint it."""
        self.calls += 1
        if self.check_next:
            self.check_next = False
            return True
        return self.every > 0 and (self.calls - 1) % self.every == 0

    def _repair(self, record: PassRecord, report: DriftReport) -> None:
        """Space anchors so that no run of rebuilt layers reaches the tolerance.

        The drift first exceeded the tolerance ``d`` rebuilt layers after the last exact
        point (the output or an anchor): keep the input of every ``max(1, d // 2)``-th layer,
        counted in reconstruction order.
        """
        order = list(dict.fromkeys(record.measured))
        errors = {path: report.errors.get(record.names.get(path, ""), 0.0) for path in order}
        since = 0
        for path in order:
            since = 0 if path in record.anchor_paths else since + 1
            if not errors[path] <= report.tolerance:
                break
        spacing = max(1, since // 2)
        if self.repair_every is None or spacing < self.repair_every:
            self.repair_every = spacing
            self.repair_paths = frozenset(order[spacing - 1 :: spacing])

    def conclude(self, record: PassRecord, dtype: torch.dtype, where: str) -> None:
        """Turn a checked backward's measurements into a report and act on it; ``where``
        names the chain in messages."""
        tolerance = default_tolerance(dtype) if self.tolerance is None else self.tolerance
        errors: dict[str, float] = {}
        paths: dict[str, Path] = {}
        for path, value in record.measurements():
            name = record.names.get(path, str(path))
            errors[name] = max(errors.get(name, 0.0), value) if not math.isnan(value) else value
            paths[name] = path
        report = DriftReport(errors, tolerance, self.calls, paths)
        self.report = report
        first = report.exceeded
        if first is None:
            return
        if self.on_drift == "repair":
            self._repair(record, report)
        broken = next((n for n, e in errors.items() if not math.isfinite(e)), None)
        if broken is not None:
            repaired = (
                " (anchors are placed for the next call)" if self.on_drift == "repair" else ""
            )
            raise ReconstructionError(
                f"reconstruction produced NaN/Inf at {broken} where the forward pass was "
                "finite; the inverse is unstable there: keep activations with anchor_every "
                f"or on_drift='repair', or use mode='store' for this chain{repaired}",
                layer=broken,
                error=errors[broken],
                where=(where,),
            )
        error = errors[first]
        fix = (
            "pass anchor_every=m to keep an activation every m layers, on_drift='repair' to "
            "let the chain place them, or mode='store'; check a custom block with "
            "hybridflow.testing.check_invertible_module"
        )
        detail = (
            f"rebuilt input of {first} is off by {error:.2e} (relative; tolerance "
            f"{tolerance:.0e}); gradients computed from it are off by that much times their "
            "sensitivity to it, which can be far more"
        )
        if self.on_drift == "raise":
            raise ReconstructionError(f"{detail}; {fix}", layer=first, error=error, where=(where,))
        if self.on_drift == "repair":
            warnings.warn(
                f"{where}: {detail}; repaired from the next call on: the input of every "
                f"{self.repair_every}th layer is kept ({len(self.repair_paths)} activations)",
                DriftWarning,
                stacklevel=3,
            )
            return
        if not self.warned:
            self.warned = True
            warnings.warn(f"{where}: {detail}; {fix}", DriftWarning, stacklevel=3)
