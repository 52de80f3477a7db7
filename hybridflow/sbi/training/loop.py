"""The training loop both trainers share; an :class:`Objective` says what one unit of work is.

The loop owns what every run needs: the AdamW optimiser over the flow's trainable
parameters, the learning-rate schedule, torch's global generator forked and seeded (so a run
is reproducible and leaves the caller's random state alone) and the loop's own generator, the
checked resume from a checkpoint, the progress bar, gradient clipping, the drift record and
the checkpoint written every ``checkpoint_every`` units and at the end. An objective (neural
posterior estimation, one epoch a unit; reverse KL, one gradient step a unit) computes losses,
records them in its history and decides when the run is over (early stopping).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import torch
from torch import Tensor, nn

from hybridflow.arguments import boolean, integer, number
from hybridflow.autograd.drift import max_drift
from hybridflow.distributions.ensemble import FlowEnsemble
from hybridflow.io import load_run_checkpoint, save_checkpoint
from hybridflow.sbi.training.progress import progress_bar
from hybridflow.sbi.training.schedule import ScheduleKind, build_scheduler, scheduler_step
from hybridflow.sbi.training.state import (
    forked_rng,
    model_device,
    restore_run,
    restored_history,
    rng_state,
)

__all__ = [
    "CheckpointSpec",
    "LoopSettings",
    "Objective",
    "TrainerConfig",
    "TrainingLoop",
    "UnitResult",
    "check_loop_settings",
    "checked_trainer_arguments",
]

C = TypeVar("C")


def checked_trainer_arguments(
    owner: str, flow: object, config: C | None, config_type: type[C]
) -> C:
    """A trainer's ``flow`` checked and its ``config`` (``config_type()`` when ``None``).

    Raises:
        TypeError: ``flow`` is not an ``nn.Module`` or ``config`` not a ``config_type``.
    """
    if not isinstance(flow, nn.Module):
        raise TypeError(f"{owner}: flow must be an nn.Module, got {type(flow).__name__}")
    config = config_type() if config is None else config
    if not isinstance(config, config_type):
        raise TypeError(
            f"{owner}: config must be a {config_type.__name__}, got {type(config).__name__}"
        )
    return config


class LoopSettings(Protocol):
    """The settings the loop reads from a trainer's config (a dataclass)."""

    learning_rate: float
    weight_decay: float
    schedule: ScheduleKind
    min_learning_rate: float
    clip_grad_norm: float | None
    seed: int
    checkpoint_every: int
    progress: bool


def check_loop_settings(config: LoopSettings, where: str) -> None:
    """Check the fields of a trainer's config that the loop reads (its ``schedule`` is the
    trainer's to check: each allows its own).

    Raises:
        ArgumentTypeError, ArgumentError: naming the field and ``where``.
    """
    number(config.learning_rate, "learning_rate", where, minimum=0, open_low=True)
    number(config.weight_decay, "weight_decay", where, minimum=0)
    number(config.min_learning_rate, "min_learning_rate", where, minimum=0)
    number(config.clip_grad_norm, "clip_grad_norm", where, minimum=0, open_low=True, optional=True)
    integer(config.seed, "seed", where, minimum=0)
    integer(config.checkpoint_every, "checkpoint_every", where, minimum=1)
    boolean(config.progress, "progress", where)


class TrainerConfig:
    """Base of a trainer's settings, a dataclass holding the :class:`LoopSettings` fields and
    the trainer's own: once built, it checks the trainer's fields (:meth:`_check_fields`),
    then the loop's (:func:`check_loop_settings`); errors name the config's class.
    """

    def __post_init__(self) -> None:
        where = type(self).__name__
        self._check_fields(where)
        check_loop_settings(self, where)  # type: ignore[arg-type]

    def _check_fields(self, where: str) -> None:
        """Check the fields only this trainer reads, and its ``schedule`` (each trainer
        allows its own)."""
        raise NotImplementedError


@dataclass(frozen=True)
class CheckpointSpec:
    """How a trainer's checkpoints are told apart and checked.

    Attributes:
        format: the ``"format"`` entry (refused on resume when it differs).
        kind: the checkpoint named in errors ("an NPE", "a reverse-KL").
        may_change: settings a resumed run may change (they do not alter the units run).
        entries: what the checkpoint holds besides its format and config.
        models: the entries holding weights of the flow; the first is loaded into it.
    """

    format: str
    kind: str
    may_change: tuple[str, ...]
    entries: tuple[str, ...] = ("model", "optimizer", "scheduler", "history", "rng")
    models: tuple[str, ...] = ("model",)


class UnitResult(NamedTuple):
    """What one unit gave: the loss a plateau schedule watches, and the progress bar's
    figures."""

    monitored: float
    postfix: dict[str, float]


class Objective(ABC):
    """What a trainer adds to the loop. ``history`` is a dataclass with (at least) the lists
    ``learning_rate`` and ``drift``, which the loop fills, one entry per unit."""

    spec: CheckpointSpec
    label: str
    history: Any

    @abstractmethod
    def units_done(self) -> int:
        """Units run so far (including those before a resume)."""

    @abstractmethod
    def train_unit(self, loop: TrainingLoop) -> UnitResult:
        """Run one unit (gradient steps through :meth:`TrainingLoop.gradient_step`) and
        record its losses in ``history``."""

    @abstractmethod
    def finish_unit(self, unit: int, result: UnitResult) -> bool:
        """After the unit's record is complete: whether the run is over (early stopping,
        the last unit). Restores the weights to keep when it is."""

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint this objective cannot continue (before anything changes)."""
        return None

    def restore(self, state: dict[str, Any], history: Any) -> bool:
        """Take over a checked checkpoint's state; whether the saved run had finished."""
        self.history = history
        return False

    def saved_state(self, finished: bool) -> dict[str, Any]:
        """The checkpoint entries of this objective besides the loop's."""
        return {}

    def report(self, unit: int, result: UnitResult) -> None:
        """Called after each unit and its checkpoint (the user's callback)."""
        return None


class TrainingLoop:
    """The shared part of a training run (see the module docstring).

    Args:
        owner: the trainer, named in errors ("NPETrainer").
        flow: the module trained.
        config: the trainer's settings (:class:`LoopSettings`; stored in checkpoints).
        total: units of the whole run (epochs, steps).
        checkpoint: the checkpoint file, or ``None``.
        schedule_factor: the plateau schedule's multiplier.
        schedule_patience: units without improvement before the plateau schedule acts.

    Raises:
        ValueError: the flow has no trainable parameters.
    """

    def __init__(
        self,
        owner: str,
        flow: nn.Module,
        config: LoopSettings,
        total: int,
        checkpoint: str | os.PathLike[str] | None,
        *,
        schedule_factor: float = 0.5,
        schedule_patience: int = 0,
    ) -> None:
        self.owner = owner
        self.flow = flow
        self.config = config
        self.total = total
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.device = model_device(flow)
        self.parameters = [p for p in flow.parameters() if p.requires_grad]
        if not self.parameters:
            raise ValueError(f"{owner}: the flow has no trainable parameters")
        # an ensemble's members are clipped one by one, each as if it trained alone
        members = flow.members if isinstance(flow, FlowEnsemble) else [flow]
        self.clip_groups = [[p for p in m.parameters() if p.requires_grad] for m in members]
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            config.schedule,
            total,
            factor=schedule_factor,
            patience=schedule_patience,
            min_learning_rate=config.min_learning_rate,
        )
        self.generator = torch.Generator().manual_seed(config.seed + 1)

    @property
    def learning_rate(self) -> float:
        """The optimiser's current learning rate."""
        return self.optimizer.param_groups[0]["lr"]

    def gradient_step(self, loss: Tensor, at: str, advice: str, *, scale: float = 1.0) -> float:
        """One optimiser step on ``scale * loss`` (gradients clipped); the value of ``loss``.

        Raises:
            RuntimeError: the loss is NaN/Inf (``at`` says where, ``advice`` what to do).
        """
        if not torch.isfinite(loss):
            raise RuntimeError(f"{self.owner}: the loss is {float(loss)} at {at}; {advice}")
        self.optimizer.zero_grad(set_to_none=True)
        (loss * scale).backward()
        if self.config.clip_grad_norm is not None:
            for group in self.clip_groups:
                nn.utils.clip_grad_norm_(group, self.config.clip_grad_norm)
        self.optimizer.step()
        return float(loss.detach())

    def run(self, objective: Objective, *, resume: bool) -> None:
        """Run ``objective`` unit by unit until it is over or ``total`` units have run,
        continuing from the checkpoint with ``resume`` (when it exists). The flow is left in
        eval mode, ready to sample (dropout off, as sbi leaves its estimators)."""
        with forked_rng(self.device):
            torch.manual_seed(self.config.seed)
            finished = self._resume(objective) if resume else False
            bar = progress_bar(
                self.config.progress, self.total, objective.units_done(), objective.label
            )
            try:
                while not finished and objective.units_done() < self.total:
                    unit = objective.units_done() + 1
                    learning_rate = self.learning_rate
                    result = objective.train_unit(self)
                    scheduler_step(self.scheduler, result.monitored)
                    objective.history.learning_rate.append(learning_rate)
                    objective.history.drift.append(max_drift(self.flow))
                    finished = objective.finish_unit(unit, result)
                    if self.checkpoint is not None and (
                        finished or unit % self.config.checkpoint_every == 0
                    ):
                        self._save(objective, finished)
                    bar.update(1, **result.postfix)
                    objective.report(unit, result)
            finally:
                bar.close()
                self.flow.eval()

    def _resume(self, objective: Objective) -> bool:
        """Check the checkpoint whole, then restore it; whether its run had finished
        (``False`` when there is no file yet)."""
        spec = objective.spec
        state = load_run_checkpoint(
            self.checkpoint,
            self.flow,
            spec.format,
            asdict(self.config),  # type: ignore[call-overload]
            spec.may_change,
            self.owner,
            spec.kind,
            spec.entries,
        )
        if state is None:
            return False
        path = self.checkpoint
        objective.check_resume(state, path)
        history = restored_history(type(objective.history), state["history"], path)
        restore_run(
            state,
            path,
            self.flow,
            self.optimizer,
            self.scheduler,
            self.generator,
            self.device,
            spec.models,
        )
        return objective.restore(state, history)

    def _save(self, objective: Objective, finished: bool) -> None:
        state = {
            "format": objective.spec.format,
            "config": asdict(self.config),  # type: ignore[call-overload]
            "model": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "history": asdict(objective.history),
            "rng": rng_state(self.generator, self.device),
            **objective.saved_state(finished),
        }
        save_checkpoint(state, self.checkpoint)
