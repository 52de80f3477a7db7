"""Physics-based (reverse-KL) amortized training from a differentiable likelihood."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from hybridflow.arguments import integer, one_of
from hybridflow.sbi.tasks.base import Task
from hybridflow.sbi.training.loop import (
    CheckpointSpec,
    Objective,
    TrainerConfig,
    TrainingLoop,
    UnitResult,
    checked_trainer_arguments,
)

__all__ = ["ReverseKLConfig", "ReverseKLHistory", "ReverseKLTrainer", "reverse_kl_loss"]

_CHECKPOINT = CheckpointSpec(
    format="hybridflow.sbi.reverse_kl/1",
    kind="a reverse-KL",
    may_change=("progress", "checkpoint_every"),
)


@dataclass
class ReverseKLConfig(TrainerConfig):
    """Settings of :class:`ReverseKLTrainer` (plain data: stored in checkpoints as a dict).

    Attributes:
        steps: gradient steps.
        batch_size: observations per step.
        num_samples: posterior samples per observation and step.
        learning_rate: Adam's initial learning rate.
        weight_decay: AdamW's decoupled weight decay.
        schedule: ``"constant"`` or ``"cosine"`` (over ``steps``).
        min_learning_rate: end of the cosine schedule.
        clip_grad_norm: clip the gradient's global norm to this (``None``: no clipping).
        seed: seed of the observations drawn and of torch's global generator in training.
        checkpoint_every: write the checkpoint every this many steps (and at the end).
        progress: show a tqdm progress bar over steps.
    """

    steps: int = 2000
    batch_size: int = 64
    num_samples: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "cosine"
    min_learning_rate: float = 1e-6
    clip_grad_norm: float | None = 5.0
    seed: int = 0
    checkpoint_every: int = 100
    progress: bool = False

    def _check_fields(self, w: str) -> None:
        integer(self.steps, "steps", w, minimum=1)
        integer(self.batch_size, "batch_size", w, minimum=1)
        integer(self.num_samples, "num_samples", w, minimum=1)
        # no "plateau": the loss is a noisy estimate, with no plateau to watch
        one_of(self.schedule, "schedule", w, ("constant", "cosine"))


@dataclass
class ReverseKLHistory:
    """The loss, learning rate and largest measured reconstruction drift (``nan``: none
    measured; :attr:`hybridflow.Chain.drift_report`) of every step, including steps before a
    resume."""

    loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    drift: list[float] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """Steps run."""
        return len(self.loss)


def reverse_kl_loss(flow: nn.Module, task: Task, x: Tensor, num_samples: int) -> Tensor:
    r"""Monte Carlo estimate of the amortized reverse KL, up to the evidence:

    .. math::
        \frac{1}{B K} \sum_{b, k} \Big[\log q(\theta_{bk} \mid x_b)
        - \log p(x_b \mid \theta_{bk}) - \log p(\theta_{bk})\Big],
        \qquad \theta_{bk} \sim q(\cdot \mid x_b),

    whose expectation is :math:`\mathbb{E}_x[\mathrm{KL}(q(\cdot \mid x) \,\|\, p(\cdot \mid x))
    - \log p(x)]`. The samples are reparametrised (``rsample_and_log_prob``: one inverse pass
    gives both :math:`\theta` and :math:`\log q`), so gradients flow through the flow's
    inverse (reconstructed, in ``"invert"`` mode), the summary network, and the task's
    likelihood (through a forward operator's adjoint).

    Args:
        flow: ``flow(x)`` returns a distribution with ``rsample_and_log_prob``.
        task: a task with ``differentiable = True``.
        x: observations ``(B, *x_shape)``.
        num_samples: samples ``K`` per observation.

    Returns:
        The scalar loss.
    """
    theta, log_q = flow(x).rsample_and_log_prob((num_samples,))
    flat = theta.reshape(num_samples * x.shape[0], *theta.shape[2:])
    repeated = x.unsqueeze(0).expand(num_samples, *x.shape).reshape(-1, *x.shape[1:])
    log_joint = task.log_likelihood(flat, repeated) + task.log_prior(flat)
    return (log_q.reshape(-1) - log_joint).mean()


class ReverseKLTrainer:
    r"""Amortized physics-based training: fit :math:`q(\theta \mid x)` to the posterior of a
    task with a differentiable likelihood, without posterior samples, by minimising
    :func:`reverse_kl_loss`.

    Each step draws ``batch_size`` observations (from the task's simulator, or from given
    ``observations``), ``num_samples`` reparametrised samples of the flow for each, and takes
    a gradient step. The flow's generative direction is its transform's ``inverse``, so with a
    :class:`~hybridflow.Chain` in ``"invert"`` mode the step keeps no activations of the flow,
    and a forward operator with a hand-written adjoint keeps none of its own either.
    Checkpoints work as in :class:`~hybridflow.sbi.NPETrainer` (atomic, resumable, plain
    data).

    Reverse KL is mode-seeking: with a multimodal posterior it may cover only some modes.

    Args:
        flow: the conditional flow (``flow(x)`` returns a distribution with
            ``rsample_and_log_prob``).
        task: a :class:`~hybridflow.sbi.Task` with ``differentiable = True``.
        config: the settings (defaults when ``None``).
        checkpoint: path of the checkpoint file, or ``None``.

    References:
        Rezende & Mohamed, "Variational inference with normalizing flows", 2015; Siahkoohi
        et al., "Reliable amortized variational inference with physics-based latent
        distribution correction", 2023; Orozco et al., "InvertibleNetworks.jl", 2023.
    """

    def __init__(
        self,
        flow: nn.Module,
        task: Task,
        config: ReverseKLConfig | None = None,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> None:
        config = checked_trainer_arguments("ReverseKLTrainer", flow, config, ReverseKLConfig)
        if not isinstance(task, Task):
            raise TypeError(f"ReverseKLTrainer: task must be a Task, got {type(task).__name__}")
        if not task.differentiable:
            raise ValueError(
                f"ReverseKLTrainer: task {task.name!r} has no differentiable likelihood and "
                "prior density; train it with NPETrainer"
            )
        self.flow = flow
        self.task = task
        self.config = config
        self.checkpoint = None if checkpoint is None else Path(checkpoint)

    def fit(
        self,
        observations: Tensor | None = None,
        *,
        resume: bool = False,
        on_step_end: Callable[[int, float], None] | None = None,
    ) -> ReverseKLHistory:
        """Train the flow.

        Args:
            observations: optional observations ``(N, *x_shape)`` to amortize over (drawn
                with replacement); by default, fresh simulations from the task at each step.
            resume: continue from the checkpoint file when it exists.
            on_step_end: called with ``(step, loss)`` after each step (and its checkpoint).

        Returns:
            The :class:`ReverseKLHistory`.

        Raises:
            ValueError: observations of the wrong shape, empty or not finite.
            CheckpointMismatch: on resume, a checkpoint of another architecture or other
                settings; the flow is left as it was.
            FileFormatError: on resume, a damaged checkpoint (the message names it).
            RuntimeError: the loss became NaN/Inf.
        """
        if observations is not None:
            self.task.check_observation(observations, "ReverseKLTrainer.fit")
            if len(observations) == 0:
                raise ValueError("ReverseKLTrainer.fit: observations are empty")
            if not torch.isfinite(observations).all():
                raise ValueError("ReverseKLTrainer.fit: observations have NaN/Inf values")
        loop = TrainingLoop(
            "ReverseKLTrainer", self.flow, self.config, self.config.steps, self.checkpoint
        )
        objective = _ReverseKLObjective(self, observations, on_step_end)
        loop.run(objective, resume=resume)
        return objective.history


class _ReverseKLObjective(Objective):
    """Reverse KL from the task's likelihood, one gradient step a unit, for all ``steps``."""

    spec = _CHECKPOINT
    label = "reverse KL"

    def __init__(
        self,
        trainer: ReverseKLTrainer,
        observations: Tensor | None,
        on_step_end: Callable[[int, float], None] | None,
    ) -> None:
        self.flow, self.task, self.config = trainer.flow, trainer.task, trainer.config
        self.observations = observations
        self.on_step_end = on_step_end
        self.history = ReverseKLHistory()

    def units_done(self) -> int:
        return self.history.steps

    def _batch(self, generator: torch.Generator) -> Tensor:
        """Observations of one step: simulated, or drawn with replacement from the given."""
        if self.observations is None:
            return self.task.sample_joint(self.config.batch_size, generator)[1]
        index = torch.randint(
            len(self.observations), (self.config.batch_size,), generator=generator
        )
        return self.observations[index]

    def train_unit(self, loop: TrainingLoop) -> UnitResult:
        self.flow.train()
        x = self._batch(loop.generator).to(loop.device)
        loss = reverse_kl_loss(self.flow, self.task, x, self.config.num_samples)
        at = f"step {self.history.steps + 1}"
        value = loop.gradient_step(loss, at, "lower the learning rate")
        self.history.loss.append(value)
        return UnitResult(value, {"loss": value})

    def finish_unit(self, unit: int, result: UnitResult) -> bool:
        return unit >= self.config.steps

    def report(self, unit: int, result: UnitResult) -> None:
        if self.on_step_end is not None:
            self.on_step_end(unit, self.history.loss[-1])
