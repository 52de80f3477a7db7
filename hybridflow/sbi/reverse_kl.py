"""Physics-based (reverse-KL) amortized training from a differentiable likelihood."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from hybridflow.arguments import boolean, one_of
from hybridflow.autograd.drift import max_drift
from hybridflow.sbi.checkpoint import save_checkpoint
from hybridflow.sbi.task import Task
from hybridflow.sbi.training import (
    build_scheduler,
    check_number,
    forked_rng,
    load_run_checkpoint,
    model_device,
    progress_bar,
    restore_run,
    restored_history,
    rng_state,
    scheduler_step,
)

__all__ = ["ReverseKLConfig", "ReverseKLHistory", "ReverseKLTrainer", "reverse_kl_loss"]

_FORMAT = "hybridflow.sbi.reverse_kl/1"
_MAY_CHANGE = ("progress", "checkpoint_every")


@dataclass
class ReverseKLConfig:
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

    def __post_init__(self) -> None:
        w = "ReverseKLConfig"
        check_number(w, "steps", self.steps, minimum=1, integer=True)
        check_number(w, "batch_size", self.batch_size, minimum=1, integer=True)
        check_number(w, "num_samples", self.num_samples, minimum=1, integer=True)
        check_number(w, "learning_rate", self.learning_rate, minimum=0, open_low=True)
        check_number(w, "weight_decay", self.weight_decay, minimum=0)
        check_number(w, "min_learning_rate", self.min_learning_rate, minimum=0)
        check_number(
            w, "clip_grad_norm", self.clip_grad_norm, minimum=0, open_low=True, optional=True
        )
        check_number(w, "seed", self.seed, minimum=0, integer=True)
        check_number(w, "checkpoint_every", self.checkpoint_every, minimum=1, integer=True)
        # no "plateau": the loss is a noisy estimate, with no plateau to watch
        one_of(self.schedule, "schedule", w, ("constant", "cosine"))
        boolean(self.progress, "progress", w)


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
        if not isinstance(flow, nn.Module):
            raise TypeError(
                f"ReverseKLTrainer: flow must be an nn.Module, got {type(flow).__name__}"
            )
        if not isinstance(task, Task):
            raise TypeError(f"ReverseKLTrainer: task must be a Task, got {type(task).__name__}")
        if not task.differentiable:
            raise ValueError(
                f"ReverseKLTrainer: task {task.name!r} has no differentiable likelihood and "
                "prior density; train it with NPETrainer"
            )
        config = ReverseKLConfig() if config is None else config
        if not isinstance(config, ReverseKLConfig):
            raise TypeError(
                f"ReverseKLTrainer: config must be a ReverseKLConfig, got {type(config).__name__}"
            )
        self.flow = flow
        self.task = task
        self.config = config
        self.checkpoint = None if checkpoint is None else Path(checkpoint)

    def _observations(self, observations: Tensor | None, generator: torch.Generator) -> Tensor:
        if observations is None:
            return self.task.sample_joint(self.config.batch_size, generator)[1]
        index = torch.randint(len(observations), (self.config.batch_size,), generator=generator)
        return observations[index]

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
        cfg = self.config
        if observations is not None:
            self.task.check_observation(observations, "ReverseKLTrainer.fit")
            if len(observations) == 0:
                raise ValueError("ReverseKLTrainer.fit: observations are empty")
            if not torch.isfinite(observations).all():
                raise ValueError("ReverseKLTrainer.fit: observations have NaN/Inf values")
        device = model_device(self.flow)
        params = [p for p in self.flow.parameters() if p.requires_grad]
        if not params:
            raise ValueError("ReverseKLTrainer: the flow has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scheduler = build_scheduler(
            optimizer,
            cfg.schedule,
            cfg.steps,
            factor=0.5,
            patience=0,
            min_learning_rate=cfg.min_learning_rate,
        )
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        history = ReverseKLHistory()
        with forked_rng(device):
            torch.manual_seed(cfg.seed)
            state = self._load() if resume else None
            if state is not None:
                path = self.checkpoint
                history = restored_history(ReverseKLHistory, state["history"], path)
                restore_run(state, path, self.flow, optimizer, scheduler, generator, device)
            bar = progress_bar(cfg.progress, cfg.steps, history.steps, "reverse KL")
            self.flow.train()
            try:
                while history.steps < cfg.steps:
                    step = history.steps + 1
                    x = self._observations(observations, generator).to(device)
                    lr = optimizer.param_groups[0]["lr"]
                    loss = reverse_kl_loss(self.flow, self.task, x, cfg.num_samples)
                    if not torch.isfinite(loss):
                        raise RuntimeError(
                            f"ReverseKLTrainer: the loss is {float(loss)} at step {step}; lower "
                            "the learning rate"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.clip_grad_norm is not None:
                        nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
                    optimizer.step()
                    value = float(loss.detach())
                    scheduler_step(scheduler, value)
                    history.loss.append(value)
                    history.learning_rate.append(lr)
                    history.drift.append(max_drift(self.flow))
                    if self.checkpoint is not None and (
                        step == cfg.steps or step % cfg.checkpoint_every == 0
                    ):
                        state = self._state(optimizer, scheduler, history, generator, device)
                        save_checkpoint(state, self.checkpoint)
                    bar.update(1, loss=history.loss[-1])
                    if on_step_end is not None:
                        on_step_end(step, history.loss[-1])
            finally:
                bar.close()
        return history

    def _state(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        history: ReverseKLHistory,
        generator: torch.Generator,
        device: torch.device,
    ) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "config": asdict(self.config),
            "model": self.flow.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "history": asdict(history),
            "rng": rng_state(generator, device),
        }

    def _load(self) -> dict[str, Any] | None:
        return load_run_checkpoint(
            self.checkpoint,
            self.flow,
            _FORMAT,
            asdict(self.config),
            _MAY_CHANGE,
            "ReverseKLTrainer",
            "a reverse-KL",
        )
