"""Neural posterior estimation as an objective of the training loop: forward KL on simulated
pairs, one epoch a unit, early stopping on the validation loss; and the records of a run."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from hybridflow.distributions.ensemble import FlowEnsemble
from hybridflow.errors import CheckpointMismatch, InputError
from hybridflow.sbi.data import Simulations
from hybridflow.sbi.training.loop import CheckpointSpec, Objective, TrainingLoop, UnitResult
from hybridflow.sbi.training.schedule import idle_at_floor
from hybridflow.sbi.training.state import model_device

if TYPE_CHECKING:
    from hybridflow.sbi.training.npe import NPEConfig

__all__ = ["EpochRecord", "NPEHistory", "NPEObjective", "split_simulations"]

_CHECKPOINT = CheckpointSpec(
    format="hybridflow.sbi.npe/1",
    kind="an NPE",
    # settings a resumed run may change: they do not alter the epochs already run
    may_change=("max_epochs", "patience", "progress", "checkpoint_every"),
    entries=(
        "finished",
        "model",
        "optimizer",
        "scheduler",
        "best_model",
        "best_loss",
        "waited",
        "history",
        "rng",
        "data",
    ),
    models=("model", "best_model"),
)


class EpochRecord(NamedTuple):
    """What one epoch gave: its number (from 1), mean losses, the learning rate used and the
    largest reconstruction drift the flow's drift guard measured (``nan``: none measured;
    see :attr:`hybridflow.Chain.drift_report`)."""

    epoch: int
    train_loss: float
    validation_loss: float | None
    learning_rate: float
    drift: float = math.nan


@dataclass
class NPEHistory:
    """The course of a training run (including epochs run before a resume).

    Attributes:
        train_loss: mean negative log posterior density over the training pairs, per epoch.
        validation_loss: the same over the validation pairs (empty without validation).
        learning_rate: the learning rate of each epoch.
        drift: the largest reconstruction drift measured by the end of each epoch (``nan``
            where none was measured).
        best_epoch: the epoch whose parameters the flow holds at the end (from 1).
        stopped_early: whether early stopping ended the run.
        dropped: simulations dropped for NaN/Inf values.
    """

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    drift: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    dropped: int = 0

    @property
    def epochs(self) -> int:
        """Epochs run."""
        return len(self.train_loss)


def split_simulations(n: int, config: NPEConfig) -> tuple[Tensor, Tensor]:
    """Training and validation indices, a function of ``(n, seed)`` only."""
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    fraction = config.validation_fraction
    n_val = 0 if fraction == 0 else max(1, round(fraction * n))
    if n - n_val < 1:
        raise InputError(
            f"NPETrainer: {n} simulation(s) leave none for training with "
            f"validation_fraction={fraction}; simulate more or lower the fraction"
        )
    return permutation[n_val:], permutation[:n_val]


def _fingerprint(data: Simulations) -> Tensor:
    """Cheap summary of the data set, stored to refuse resuming on other data."""
    values = [float(len(data))]
    for tensor in (data.theta, *data.parts):
        t = tensor.detach().to(torch.float64)
        values += [float(t.sum()), float(t.square().sum())]
    return torch.tensor(values, dtype=torch.float64)


class NPEObjective(Objective):
    """Forward KL on simulations, one epoch a unit, with early stopping on the validation
    loss (the training loss without validation) and the best epoch's weights kept."""

    spec = _CHECKPOINT
    label = "NPE"

    def __init__(
        self,
        flow: nn.Module,
        config: NPEConfig,
        data: Simulations,
        train_index: Tensor,
        validation_index: Tensor,
        on_epoch_end: Callable[[EpochRecord], None] | None,
    ) -> None:
        self.flow, self.config, self.data = flow, config, data
        self.train_index, self.validation_index = train_index, validation_index
        self.on_epoch_end = on_epoch_end
        self.history = NPEHistory(dropped=data.dropped)
        self.fingerprint = _fingerprint(data)
        self.best_loss, self.best_state, self.waited = math.inf, None, 0
        self.device = model_device(flow)
        # each member of an ensemble trains on its own loss: the gradient step sums them
        # (the reported loss is their mean), so a member moves exactly as it would alone
        self.members = len(flow) if isinstance(flow, FlowEnsemble) else 1

    def units_done(self) -> int:
        return self.history.epochs

    def _loss(self, index: Tensor) -> Tensor:
        theta = self.data.theta[index].to(self.device)
        parts = tuple(p[index].to(self.device) for p in self.data.parts)
        if isinstance(self.flow, FlowEnsemble):  # each member on its own loss
            log_prob = self.flow.member_log_prob(theta, *parts).mean(0)
        else:
            log_prob = self.flow(*parts).log_prob(theta)
        if log_prob.shape != theta.shape[:1]:
            raise ValueError(
                f"NPETrainer: flow(x).log_prob(theta) has shape {tuple(log_prob.shape)}, expected "
                f"({theta.shape[0]},); the flow must return a distribution with batch_shape (B,)"
            )
        return -log_prob.mean()

    def _validation_loss(self) -> float:
        index = self.validation_index
        if index.numel() == 0:
            return math.nan
        was_training = self.flow.training
        self.flow.eval()
        total = 0.0
        with torch.no_grad():
            for batch in index.split(self.config.batch_size):
                total += float(self._loss(batch)) * batch.numel()
        self.flow.train(was_training)
        return total / index.numel()

    def train_unit(self, loop: TrainingLoop) -> UnitResult:
        """One pass over the shuffled training pairs, then the validation loss."""
        self.flow.train()
        index = self.train_index
        order = index[torch.randperm(index.numel(), generator=loop.generator)]
        total = 0.0
        for step, batch in enumerate(order.split(self.config.batch_size)):
            value = loop.gradient_step(
                self._loss(batch),
                f"step {step} of the epoch",
                "lower the learning rate or standardise the observations "
                "(hybridflow.summary.Standardize)",
                scale=self.members,  # an ensemble: the sum of the members' losses
            )
            total += value * batch.numel()
        train_loss = total / index.numel()
        validation_loss = self._validation_loss()
        self.history.train_loss.append(train_loss)
        if not math.isnan(validation_loss):
            self.history.validation_loss.append(validation_loss)
        monitored = train_loss if math.isnan(validation_loss) else validation_loss
        return UnitResult(monitored, {"train": train_loss, "val": validation_loss})

    def finish_unit(self, unit: int, result: UnitResult) -> bool:
        cfg, history = self.config, self.history
        monitored = result.monitored
        if monitored < self.best_loss:
            self.best_loss, self.waited, history.best_epoch = monitored, 0, unit
            self.best_state = {k: v.detach().clone() for k, v in self.flow.state_dict().items()}
        else:
            self.waited += 1
        history.stopped_early = cfg.patience is not None and (
            self.waited >= cfg.patience or self._idle_at_floor()
        )
        finished = history.stopped_early or unit >= cfg.max_epochs
        if finished and self.best_state is not None:
            self.flow.load_state_dict(self.best_state)
        return finished

    def _idle_at_floor(self) -> bool:
        """The plateau schedule has reached its floor and brings nothing more."""
        cfg, history = self.config, self.history
        return cfg.schedule == "plateau" and idle_at_floor(
            history.learning_rate,
            history.validation_loss or history.train_loss,
            cfg.min_learning_rate,
            cfg.schedule_patience + 1,
        )

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        saved = state["data"]
        if not (
            isinstance(saved, Tensor)
            and saved.shape == self.fingerprint.shape
            and torch.allclose(saved.cpu(), self.fingerprint, rtol=1e-12)
        ):
            raise CheckpointMismatch(
                f"NPETrainer: {path} was written for another data set (size or "
                "values differ); resume with the same simulations",
                path=path,
            )

    def restore(self, state: dict[str, Any], history: Any) -> bool:
        self.history = history
        self.best_loss, self.best_state = state["best_loss"], state["best_model"]
        self.waited = state["waited"]
        finished = bool(state["finished"])
        if finished and history.epochs < self.config.max_epochs:
            # a finished run resumed with more epochs trains on from its best state
            finished, self.waited, history.stopped_early = False, 0, False
        return finished

    def saved_state(self, finished: bool) -> dict[str, Any]:
        return {
            "finished": finished,
            "best_model": self.best_state,
            "best_loss": self.best_loss,
            "waited": self.waited,
            "data": self.fingerprint,
        }

    def report(self, unit: int, result: UnitResult) -> None:
        if self.on_epoch_end is None:
            return
        history = self.history
        validation = result.postfix["val"]
        self.on_epoch_end(
            EpochRecord(
                unit,
                history.train_loss[-1],
                None if math.isnan(validation) else validation,
                history.learning_rate[-1],
                history.drift[-1],
            )
        )
