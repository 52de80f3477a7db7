"""Neural posterior estimation: train a conditional flow on simulated ``(theta, x)`` pairs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from hybridflow.arguments import integer, number, one_of
from hybridflow.sbi.data import NonFinitePolicy, Observations, check_simulations
from hybridflow.sbi.training.loop import (
    TrainerConfig,
    TrainingLoop,
    checked_trainer_arguments,
)
from hybridflow.sbi.training.npe_objective import (
    EpochRecord,
    NPEHistory,
    NPEObjective,
    split_simulations,
)
from hybridflow.sbi.training.schedule import ScheduleKind

__all__ = ["EpochRecord", "NPEConfig", "NPEHistory", "NPETrainer"]


@dataclass
class NPEConfig(TrainerConfig):
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
        schedule: learning-rate schedule, see :data:`~hybridflow.sbi.ScheduleKind`.
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

    def _check_fields(self, w: str) -> None:
        integer(self.max_epochs, "max_epochs", w, minimum=1)
        integer(self.batch_size, "batch_size", w, minimum=1)
        number(
            self.validation_fraction, "validation_fraction", w, minimum=0, maximum=1, open_high=True
        )
        integer(self.patience, "patience", w, minimum=1, optional=True)
        number(
            self.schedule_factor,
            "schedule_factor",
            w,
            minimum=0,
            maximum=1,
            open_low=True,
            open_high=True,
        )
        integer(self.schedule_patience, "schedule_patience", w, minimum=0)
        one_of(self.schedule, "schedule", w, ("constant", "cosine", "plateau"))
        one_of(self.nonfinite, "nonfinite", w, ("drop", "raise"))


class NPETrainer:
    r"""Neural posterior estimation: fit :math:`q(\theta \mid x)` by minimising
    :math:`-\frac1N \sum_i \log q(\theta_i \mid x_i)` over simulated pairs.

    ``flow`` is any module whose call ``flow(*x_parts)`` returns a distribution over
    :math:`\theta` with ``batch_shape == (B,)`` (a
    :class:`~hybridflow.distributions.ConditionalFlow`, whose summary network then trains
    jointly), or a :class:`~hybridflow.distributions.FlowEnsemble` of ``K`` such flows, whose
    members are trained together, each on its own loss and clipped on its own, as it would
    train alone on the same batches, but for the learning-rate schedule and early stopping,
    which follow their mean loss (the loss reported). A
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
        config = checked_trainer_arguments("NPETrainer", flow, config, NPEConfig)
        self.flow = flow
        self.config = config
        self.checkpoint = None if checkpoint is None else Path(checkpoint)

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
            The :class:`NPEHistory`; the flow holds the parameters of the best epoch and is
            left in eval mode (dropout off) to sample.

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
        train_index, validation_index = split_simulations(len(data), cfg)
        loop = TrainingLoop(
            "NPETrainer",
            self.flow,
            cfg,
            cfg.max_epochs,
            self.checkpoint,
            schedule_factor=cfg.schedule_factor,
            schedule_patience=cfg.schedule_patience,
        )
        objective = NPEObjective(self.flow, cfg, data, train_index, validation_index, on_epoch_end)
        loop.run(objective, resume=resume)
        return objective.history
