"""Learning-rate schedules of the trainers, and the plateau schedule's stopping test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch

__all__ = ["ScheduleKind", "build_scheduler", "idle_at_floor", "scheduler_step"]

ScheduleKind = Literal["constant", "cosine", "plateau"]
"""Learning-rate schedule: constant; cosine annealing from the initial rate to the minimum
over the whole run; or halving (``factor``) when the monitored loss stops improving for
``patience`` epochs (:class:`torch.optim.lr_scheduler.ReduceLROnPlateau`)."""


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
