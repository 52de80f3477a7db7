"""Neural posterior estimation: train a conditional flow on simulated ``(theta, x)`` pairs."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from hybridflow.arguments import boolean, one_of
from hybridflow.autograd.drift import max_drift
from hybridflow.distributions.ensemble import FlowEnsemble
from hybridflow.errors import CheckpointMismatch, InputError
from hybridflow.sbi.checkpoint import save_checkpoint
from hybridflow.sbi.data import NonFinitePolicy, Observations, Simulations, check_simulations
from hybridflow.sbi.training import (
    ScheduleKind,
    build_scheduler,
    check_number,
    forked_rng,
    idle_at_floor,
    load_run_checkpoint,
    model_device,
    progress_bar,
    restore_run,
    restored_history,
    rng_state,
    scheduler_step,
)

__all__ = ["EpochRecord", "NPEConfig", "NPEHistory", "NPETrainer"]

_FORMAT = "hybridflow.sbi.npe/1"
# Settings a resumed run may change: they do not alter the epochs already run.
_MAY_CHANGE = ("max_epochs", "patience", "progress", "checkpoint_every")
# What an NPE checkpoint holds besides its format and config.
_ENTRIES = (
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
)


@dataclass
class NPEConfig:
    """Settings of :class:`NPETrainer` (plain data: stored in checkpoints as a dict).

    Attributes:
        max_epochs: passes over the training set, at most.
        batch_size: pairs per gradient step.
        learning_rate: Adam's initial learning rate.
        weight_decay: AdamW's decoupled weight decay.
        validation_fraction: share of the pairs held out for validation (0 disables it;
            early stopping and the plateau schedule then watch the training loss).
        patience: stop after this many epochs without a better validation loss (``None``:
            never stop early). The parameters of the best epoch are restored at the end. With
            the plateau schedule, the run also stops once the learning rate has reached
            ``min_learning_rate`` and more than ``schedule_patience`` epochs there brought no
            improvement by the schedule's relative threshold (1e-4): nothing is left to try,
            so the run does not idle at the floor until ``patience`` runs out.
        schedule: learning-rate schedule, see :data:`~hybridflow.sbi.training.ScheduleKind`.
        schedule_factor: the plateau schedule's multiplier.
        schedule_patience: epochs without improvement before the plateau schedule acts.
        min_learning_rate: floor of the plateau schedule (1/100 of the default learning
            rate: seven halvings, the last one clipped), end of the cosine one.
        clip_grad_norm: clip the gradient's global norm to this (``None``: no clipping).
        seed: seed of the split, the shuffling and torch's global generator during training.
        nonfinite: what to do with simulations holding NaN/Inf (``"drop"`` or ``"raise"``).
        checkpoint_every: write the checkpoint every this many epochs (and at the end).
        progress: show a tqdm progress bar over epochs.
    """

    max_epochs: int = 200
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    validation_fraction: float = 0.1
    patience: int | None = 20
    schedule: ScheduleKind = "plateau"
    schedule_factor: float = 0.5
    schedule_patience: int = 5
    min_learning_rate: float = 1e-5
    clip_grad_norm: float | None = 5.0
    seed: int = 0
    nonfinite: NonFinitePolicy = "drop"
    checkpoint_every: int = 1
    progress: bool = False

    def __post_init__(self) -> None:
        w = "NPEConfig"
        check_number(w, "max_epochs", self.max_epochs, minimum=1, integer=True)
        check_number(w, "batch_size", self.batch_size, minimum=1, integer=True)
        check_number(w, "learning_rate", self.learning_rate, minimum=0, open_low=True)
        check_number(w, "weight_decay", self.weight_decay, minimum=0)
        check_number(
            w, "validation_fraction", self.validation_fraction, minimum=0, maximum=1, open_high=True
        )
        check_number(w, "patience", self.patience, minimum=1, integer=True, optional=True)
        check_number(
            w,
            "schedule_factor",
            self.schedule_factor,
            minimum=0,
            maximum=1,
            open_low=True,
            open_high=True,
        )
        check_number(w, "schedule_patience", self.schedule_patience, minimum=0, integer=True)
        check_number(w, "min_learning_rate", self.min_learning_rate, minimum=0)
        check_number(
            w, "clip_grad_norm", self.clip_grad_norm, minimum=0, open_low=True, optional=True
        )
        check_number(w, "seed", self.seed, minimum=0, integer=True)
        check_number(w, "checkpoint_every", self.checkpoint_every, minimum=1, integer=True)
        one_of(self.schedule, "schedule", w, ("constant", "cosine", "plateau"))
        one_of(self.nonfinite, "nonfinite", w, ("drop", "raise"))
        boolean(self.progress, "progress", w)


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


class NPETrainer:
    r"""Neural posterior estimation: fit :math:`q(\theta \mid x)` by minimising
    :math:`-\frac1N \sum_i \log q(\theta_i \mid x_i)` over simulated pairs.

    ``flow`` is any module whose call ``flow(*x_parts)`` returns a distribution over
    :math:`\theta` with ``batch_shape == (B,)`` (a
    :class:`~hybridflow.distributions.ConditionalFlow`, whose summary network then trains
    jointly), or a :class:`~hybridflow.distributions.FlowEnsemble` of ``K`` such flows, whose
    members are trained together, each on its own loss (the loss reported is their mean). A
    share of the pairs is held out for validation; training stops early when the
    validation loss has not improved for ``patience`` epochs, and the parameters of the best
    epoch are restored. The learning rate follows the configured schedule; gradients are
    clipped. Training runs with torch's global generator forked and seeded from
    ``config.seed``, so a run is reproducible and leaves the caller's random state alone.

    **Checkpoints.** With ``checkpoint`` set, the model, the optimiser, the schedule, the
    early-stopping state, the history, the random states and the configuration (as a plain
    dict) are written every ``checkpoint_every`` epochs, atomically (temporary file, then
    :func:`os.replace`), so an interrupted save never corrupts the previous checkpoint.
    ``fit(..., resume=True)`` continues from it and ends where an uninterrupted run with
    the same seed would; a finished run resumed with a larger ``max_epochs`` trains on
    (from the best epoch's parameters, with the early-stopping count reset). Checkpoints
    are read with ``torch.load(..., weights_only=True)`` and checksummed; a resume checks
    every part of the checkpoint before it restores anything.

    Args:
        flow: the conditional density estimator.
        config: the settings (defaults when ``None``).
        checkpoint: path of the checkpoint file, or ``None`` for none.

    Example:
        >>> import torch
        >>> from hybridflow.distributions import ConditionalFlow, coupling_flow
        >>> from hybridflow.sbi import GaussianLinear, NPEConfig, NPETrainer, simulate
        >>> task = GaussianLinear(dim=2)
        >>> data = simulate(task, 256, seed=0)
        >>> flow = ConditionalFlow(coupling_flow(2, 2, depth=2, hidden=16), event_shape=(2,))
        >>> history = NPETrainer(flow, NPEConfig(max_epochs=3, batch_size=64)).fit(data.theta, data.x)
        >>> history.epochs
        3

    References:
        Papamakarios & Murray, "Fast epsilon-free inference of simulation models with Bayesian
        conditional density estimation", 2016; Greenberg et al., "Automatic posterior
        transformation for likelihood-free inference", 2019.
    """

    def __init__(
        self,
        flow: nn.Module,
        config: NPEConfig | None = None,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(flow, nn.Module):
            raise TypeError(f"NPETrainer: flow must be an nn.Module, got {type(flow).__name__}")
        config = NPEConfig() if config is None else config
        if not isinstance(config, NPEConfig):
            raise TypeError(f"NPETrainer: config must be an NPEConfig, got {type(config).__name__}")
        self.flow = flow
        self.config = config
        self.checkpoint = None if checkpoint is None else Path(checkpoint)

    # -- data ------------------------------------------------------------------------------
    def _split(self, n: int) -> tuple[Tensor, Tensor]:
        """Training and validation indices, a function of ``(n, seed)`` only."""
        permutation = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed))
        fraction = self.config.validation_fraction
        n_val = 0 if fraction == 0 else max(1, round(fraction * n))
        if n - n_val < 1:
            raise InputError(
                f"NPETrainer: {n} simulation(s) leave none for training with "
                f"validation_fraction={fraction}; simulate more or lower the fraction"
            )
        return permutation[n_val:], permutation[:n_val]

    def _loss(self, data: Simulations, index: Tensor, device: torch.device) -> Tensor:
        theta = data.theta[index].to(device)
        parts = tuple(p[index].to(device) for p in data.parts)
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

    def _validation_loss(self, data: Simulations, index: Tensor, device: torch.device) -> float:
        if index.numel() == 0:
            return math.nan
        was_training = self.flow.training
        self.flow.eval()
        total = 0.0
        with torch.no_grad():
            for batch in index.split(self.config.batch_size):
                total += float(self._loss(data, batch, device)) * batch.numel()
        self.flow.train(was_training)
        return total / index.numel()

    @staticmethod
    def _fingerprint(data: Simulations) -> Tensor:
        """Cheap summary of the data set, stored to refuse resuming on other data."""
        values = [float(len(data))]
        for tensor in (data.theta, *data.parts):
            t = tensor.detach().to(torch.float64)
            values += [float(t.sum()), float(t.square().sum())]
        return torch.tensor(values, dtype=torch.float64)

    # -- training --------------------------------------------------------------------------
    def fit(
        self,
        theta: Tensor,
        x: Observations | Sequence[Tensor],
        *,
        resume: bool = False,
        on_epoch_end: Callable[[EpochRecord], None] | None = None,
    ) -> NPEHistory:
        """Train the flow on pairs ``(theta, x)``.

        Args:
            theta: parameters ``(N, *theta_shape)``.
            x: observations ``(N, ...)``, or a tuple of tensors with first size ``N`` (a padded
                set and its mask), passed to the flow as ``flow(*parts)``.
            resume: continue from the checkpoint file when it exists (else start afresh).
            on_epoch_end: called after each epoch (after its checkpoint is written).

        Returns:
            The :class:`NPEHistory`; the flow holds the parameters of the best epoch.

        Raises:
            ValueError: an empty data set, mismatched sizes, NaN/Inf with
                ``nonfinite="raise"``; too few simulations for ``validation_fraction``
                (:class:`~hybridflow.errors.InputError`).
            CheckpointMismatch: on resume, a checkpoint of another architecture, other
                settings or other data; the flow is left as it was.
            FileFormatError: on resume, a damaged checkpoint (the message names it).
            RuntimeError: the loss became NaN/Inf (lower the learning rate).
        """
        cfg = self.config
        data = check_simulations(theta, x, nonfinite=cfg.nonfinite, where="NPETrainer.fit")
        train_index, val_index = self._split(len(data))
        device = model_device(self.flow)
        params = [p for p in self.flow.parameters() if p.requires_grad]
        if not params:
            raise ValueError("NPETrainer: the flow has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scheduler = build_scheduler(
            optimizer,
            cfg.schedule,
            cfg.max_epochs,
            factor=cfg.schedule_factor,
            patience=cfg.schedule_patience,
            min_learning_rate=cfg.min_learning_rate,
        )
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        history = NPEHistory(dropped=data.dropped)
        best_loss, best_state, waited = math.inf, None, 0
        fingerprint = self._fingerprint(data)
        with forked_rng(device):
            torch.manual_seed(cfg.seed)
            state = self._load(fingerprint) if resume else None
            if state is not None:
                path = self.checkpoint
                history = restored_history(NPEHistory, state["history"], path)
                models = ("model", "best_model")
                restore_run(state, path, self.flow, optimizer, scheduler, generator, device, models)
                best_loss, best_state = state["best_loss"], state["best_model"]
                waited = state["waited"]
            bar = progress_bar(cfg.progress, cfg.max_epochs, history.epochs, "NPE")
            try:
                finished = state is not None and state["finished"]
                if finished and history.epochs < cfg.max_epochs:
                    # a finished run resumed with more epochs trains on from its best state
                    finished, waited, history.stopped_early = False, 0, False
                while not finished and history.epochs < cfg.max_epochs:
                    epoch = history.epochs + 1
                    lr = optimizer.param_groups[0]["lr"]
                    train_loss = self._epoch(data, train_index, generator, optimizer, device)
                    val_loss = self._validation_loss(data, val_index, device)
                    monitored = train_loss if math.isnan(val_loss) else val_loss
                    scheduler_step(scheduler, monitored)
                    history.train_loss.append(train_loss)
                    if not math.isnan(val_loss):
                        history.validation_loss.append(val_loss)
                    history.learning_rate.append(lr)
                    history.drift.append(max_drift(self.flow))
                    if monitored < best_loss:
                        best_loss, waited, history.best_epoch = monitored, 0, epoch
                        best_state = _copy_state(self.flow)
                    else:
                        waited += 1
                    if cfg.patience is not None and (
                        waited >= cfg.patience
                        or (
                            cfg.schedule == "plateau"
                            and idle_at_floor(
                                history.learning_rate,
                                history.validation_loss or history.train_loss,
                                cfg.min_learning_rate,
                                cfg.schedule_patience + 1,
                            )
                        )
                    ):
                        history.stopped_early = True
                    finished = history.stopped_early or epoch >= cfg.max_epochs
                    if finished and best_state is not None:
                        self.flow.load_state_dict(best_state)
                    if self.checkpoint is not None and (
                        finished or epoch % cfg.checkpoint_every == 0
                    ):
                        save_checkpoint(
                            {
                                "format": _FORMAT,
                                "config": asdict(cfg),
                                "finished": finished,
                                "model": self.flow.state_dict(),
                                "optimizer": optimizer.state_dict(),
                                "scheduler": None if scheduler is None else scheduler.state_dict(),
                                "best_model": best_state,
                                "best_loss": best_loss,
                                "waited": waited,
                                "history": asdict(history),
                                "rng": rng_state(generator, device),
                                "data": fingerprint,
                            },
                            self.checkpoint,
                        )
                    bar.update(1, train=train_loss, val=val_loss)
                    if on_epoch_end is not None:
                        reported = None if math.isnan(val_loss) else val_loss
                        on_epoch_end(
                            EpochRecord(epoch, train_loss, reported, lr, history.drift[-1])
                        )
                    if history.stopped_early:
                        break
            finally:
                bar.close()
        return history

    def _epoch(
        self,
        data: Simulations,
        train_index: Tensor,
        generator: torch.Generator,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
    ) -> float:
        """One pass over the shuffled training pairs; the mean training loss."""
        self.flow.train()
        order = train_index[torch.randperm(train_index.numel(), generator=generator)]
        total = 0.0
        for step, batch in enumerate(order.split(self.config.batch_size)):
            loss = self._loss(data, batch, device)
            if not torch.isfinite(loss):
                raise RuntimeError(
                    f"NPETrainer: the loss is {float(loss)} at step {step} of the epoch; lower "
                    "the learning rate or standardise the observations "
                    "(hybridflow.summary.Standardize)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(self.flow.parameters(), self.config.clip_grad_norm)
            optimizer.step()
            total += float(loss.detach()) * batch.numel()
        return total / train_index.numel()

    def _load(self, fingerprint: Tensor) -> dict[str, Any] | None:
        """The checkpoint to resume from, checked; ``None`` when there is no file."""
        state = load_run_checkpoint(
            self.checkpoint,
            self.flow,
            _FORMAT,
            asdict(self.config),
            _MAY_CHANGE,
            "NPETrainer",
            "an NPE",
            _ENTRIES,
        )
        if state is None:
            return None
        saved = state["data"]
        if not (
            isinstance(saved, Tensor)
            and saved.shape == fingerprint.shape
            and torch.allclose(saved.cpu(), fingerprint, rtol=1e-12)
        ):
            raise CheckpointMismatch(
                f"NPETrainer: {self.checkpoint} was written for another data set (size or "
                "values differ); resume with the same simulations",
                path=self.checkpoint,
            )
        return state


def _copy_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
