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

What a checked pass keeps is its :class:`~hybridflow.autograd.record.PassRecord`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from hybridflow.arguments import integer, number, one_of
from hybridflow.autograd.record import PassRecord, Path
from hybridflow.errors import DriftWarning, ReconstructionError

__all__ = ["DriftGuard", "DriftPolicy", "DriftReport", "default_tolerance", "max_drift"]

DriftPolicy = Literal["warn", "raise", "repair"]


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
    guards = [getattr(m, "drift_guard", None) for m in module.modules()]
    reports = [g.report for g in guards if isinstance(g, DriftGuard)]
    errors = [r.max_error for r in reports if r is not None]
    return max(errors) if errors else math.nan


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
        self.check_next = every > 0
        self.first_pending = True
        self.warned = False

    def count_call(self) -> None:
        """Count a differentiable call; decide whether to check the next.

        The forward pass reads only the flags ``check_next`` and ``first_pending``. An eager
        call is counted in its forward pass; a compiled one in its backward, which runs
        eagerly: a compiled forward then has one graph per value of the flags, where reading
        (or changing) the count would recompile it at every call. A compiled call whose
        backward never runs is not counted (the next one is checked in its place).
        """
        self.calls += 1
        self.first_pending = False
        self.check_next = self.every > 0 and self.calls % self.every == 0

    def pass_record(self, batch: int, anchor_every: int | None, layers: int) -> PassRecord | None:
        """What a chain of ``layers`` records in this differentiable call: fingerprints when
        the guard checks it, anchors (its repair anchors, and the input of every
        ``anchor_every``-th layer after the first) when there are any; ``None`` for
        neither."""
        every = range(0) if anchor_every is None else range(anchor_every, layers, anchor_every)
        anchors = self.repair_paths | frozenset((index,) for index in every)
        if not self.check_next and not anchors:
            return None
        return PassRecord(batch, anchors, fingerprints=self.check_next, first=self.first_pending)

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
