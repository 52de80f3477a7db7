"""Pieces shared by the trainers: optimiser, schedule, random state, progress, resuming."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from hybridflow.sbi.checkpoint import load_checkpoint

__all__ = [
    "Progress",
    "ScheduleKind",
    "build_scheduler",
    "check_config_matches",
    "check_number",
    "forked_rng",
    "idle_at_floor",
    "load_run_checkpoint",
    "model_device",
    "progress_bar",
    "restore_rng",
    "rng_state",
    "scheduler_step",
]

ScheduleKind = Literal["constant", "cosine", "plateau"]
"""Learning-rate schedule: constant; cosine annealing from the initial rate to the minimum
over the whole run; or halving (``factor``) when the monitored loss stops improving for
``patience`` epochs (:class:`torch.optim.lr_scheduler.ReduceLROnPlateau`)."""


def check_number(
    where: str,
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    integer: bool = False,
    open_low: bool = False,
    open_high: bool = False,
    optional: bool = False,
) -> None:
    """Raise ``ValueError`` quoting ``value`` unless it is a finite number in range."""
    if optional and value is None:
        return
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if open_low else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if open_high else value <= maximum
    if not ok:
        low = "" if minimum is None else f"{'>' if open_low else '>='} {minimum}"
        high = "" if maximum is None else f"{'<' if open_high else '<='} {maximum}"
        bounds = " and ".join(b for b in (low, high) if b)
        what = "an int" if integer else "a number"
        none = " or None" if optional else ""
        raise ValueError(f"{where}: {name} must be {what} {bounds}{none}, got {value!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: ScheduleKind,
    total: int,
    *,
    factor: float,
    patience: int,
    min_learning_rate: float,
) -> Any:
    """The scheduler for ``kind`` (``None`` for ``"constant"``); ``total`` is the number of
    scheduler steps of the whole run (cosine)."""
    if kind not in get_args(ScheduleKind):
        raise ValueError(f"schedule must be one of {get_args(ScheduleKind)}, got {kind!r}")
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(total, 1), eta_min=min_learning_rate
        )
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=factor, patience=patience, min_lr=min_learning_rate
        )
    return None


def idle_at_floor(
    learning_rates: Sequence[float], losses: Sequence[float], floor: float, window: int
) -> bool:
    """Whether the last ``window`` epochs ran at the learning-rate ``floor`` without improving
    the best earlier loss by the plateau schedule's relative threshold (1e-4): a plateau
    schedule has nothing left to try. Read from the history alone, so a resumed run decides
    alike.

    Example:
        >>> idle_at_floor([1e-3, 1e-5, 1e-5], [1.0, 0.99995, 0.99999], 1e-5, 2)
        True
    """
    if len(learning_rates) <= window or len(losses) <= window:
        return False
    if any(lr > floor * (1 + 1e-6) for lr in learning_rates[-window:]):
        return False
    before = min(losses[:-window])
    return min(losses[-window:]) > before - 1e-4 * abs(before)


def scheduler_step(scheduler: Any, monitored: float) -> None:
    """Advance the schedule by one unit (``monitored``: the loss a plateau schedule watches)."""
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(monitored)
    else:
        scheduler.step()


def model_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (CPU when it has none)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def forked_rng(device: torch.device) -> Iterator[None]:
    """Run the body with torch's global generators (CPU, and ``device`` if CUDA) forked: what
    the body seeds or draws does not change the caller's random state."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    """The random state a resumed run needs: the global CPU (and CUDA) generator's and the
    trainer's own ``generator``'s, as tensors."""
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Tensor], generator: torch.Generator, device: torch.device) -> None:
    """Restore what :func:`rng_state` captured (call inside :func:`forked_rng`)."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_run_checkpoint(
    path: Path | None,
    flow: nn.Module,
    expected_format: str,
    config: dict[str, Any],
    may_change: tuple[str, ...],
    owner: str,
    kind: str,
) -> dict[str, Any] | None:
    """The checkpoint a trainer resumes from, checked (its format and that its settings match
    ``config``); ``None`` when there is no file yet. ``kind`` names the checkpoint in errors
    ("an NPE", "a reverse-KL")."""
    if path is None:
        raise ValueError(f"{owner}.fit: resume=True needs a checkpoint path")
    if not path.exists():
        return None
    state = load_checkpoint(path, map_location=model_device(flow))
    if state.get("format") != expected_format:
        raise ValueError(
            f"{owner}: {path} is not {kind} checkpoint (format {state.get('format')!r}, "
            f"expected {expected_format!r})"
        )
    check_config_matches(state["config"], config, may_change, owner)
    return state


def check_config_matches(
    saved: dict[str, Any], current: dict[str, Any], may_change: tuple[str, ...], where: str
) -> None:
    """Refuse to resume a run whose settings changed (other than those in ``may_change``)."""
    changed = sorted(
        key
        for key in set(saved) | set(current)
        if key not in may_change and saved.get(key) != current.get(key)
    )
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"{where}: the checkpoint was written with other settings ({details}); resume with "
            "the same configuration, or start afresh with resume=False"
        )


class Progress:
    """A progress bar (tqdm) or nothing; ``update(n, **postfix)`` and ``close()``."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def update(self, count: int = 1, **postfix: float) -> None:
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def progress_bar(enabled: bool, total: int, initial: int, description: str) -> Progress:
    """A tqdm bar over ``total`` units starting at ``initial`` when ``enabled`` (tqdm is then
    imported; it is an optional dependency), else a silent stand-in."""
    if not enabled:
        return Progress(None)
    try:
        from tqdm.auto import tqdm
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "progress=True needs tqdm: pip install 'hybridflow[sbi]' (or pass progress=False)"
        ) from error
    return Progress(tqdm(total=total, initial=initial, desc=description, dynamic_ncols=True))
