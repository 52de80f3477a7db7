"""Pieces shared by the trainers: optimiser, schedule, random state, progress, resuming."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from hybridflow import arguments
from hybridflow.errors import ArgumentError, CheckpointMismatch, FileFormatError
from hybridflow.sbi.checkpoint import load_checkpoint
from hybridflow.serialization import check_state_dict

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
    "restore_run",
    "restored_history",
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
    """A config field's check (:func:`hybridflow.arguments.integer` or
    :func:`~hybridflow.arguments.number`): raises ``ArgumentTypeError``/``ArgumentError``
    naming the field unless ``value`` is a finite number (an int) in range."""
    if integer:
        if open_low or open_high:
            raise AssertionError("integer ranges are closed")
        arguments.integer(
            value,
            name,
            where,
            minimum=None if minimum is None else int(minimum),
            maximum=None if maximum is None else int(maximum),
            optional=optional,
        )
    else:
        arguments.number(
            value,
            name,
            where,
            minimum=minimum,
            maximum=maximum,
            open_low=open_low,
            open_high=open_high,
            optional=optional,
        )


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
    required: tuple[str, ...] = ("model", "optimizer", "scheduler", "history", "rng"),
) -> dict[str, Any] | None:
    """The checkpoint a trainer resumes from, checked: its checksum, its format, that it has
    the entries ``required`` and that its settings match ``config``; ``None`` when there is
    no file yet. ``kind`` names the checkpoint in errors ("an NPE", "a reverse-KL").

    Raises:
        ArgumentError: ``path`` is ``None`` (resuming needs a checkpoint path).
        FileFormatError: the file is damaged, not a checkpoint, or lacks an entry.
        CheckpointMismatch: a checkpoint of another trainer, or of other settings.
    """
    if path is None:
        raise ArgumentError(
            f"{owner}.fit: resume=True needs a checkpoint path", argument="checkpoint"
        )
    if not path.exists():
        return None
    state = load_checkpoint(path, map_location=model_device(flow))
    if state.get("format") != expected_format:
        raise CheckpointMismatch(
            f"{path} is not {kind} checkpoint (format {state.get('format')!r}, expected "
            f"{expected_format!r})",
            path=path,
        )
    missing = [key for key in ("config", *required) if key not in state]
    if missing or not isinstance(state["config"], dict):
        raise FileFormatError(
            f"{path}: {kind} checkpoint without {missing or 'a config dict'}", path=path
        )
    check_config_matches(state["config"], config, may_change, owner, path)
    return state


def check_config_matches(
    saved: dict[str, Any],
    current: dict[str, Any],
    may_change: tuple[str, ...],
    where: str,
    path: Path | None = None,
) -> None:
    """Refuse to resume a run whose settings changed (other than those in ``may_change``).

    Raises:
        CheckpointMismatch: naming each changed setting, old and new value.
    """
    changed = sorted(
        key
        for key in set(saved) | set(current)
        if key not in may_change and saved.get(key) != current.get(key)
    )
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        source = "the checkpoint" if path is None else str(path)
        raise CheckpointMismatch(
            f"{where}: {source} was written with other settings ({details}); resume with "
            "the same configuration, or start afresh with resume=False",
            path=path,
        )


def _check_optimizer_state(optimizer: torch.optim.Optimizer, saved: Any, path: Path) -> None:
    """Check that a saved optimiser state has this optimiser's groups, parameter counts and,
    per parameter, state tensors of the parameter's shape."""
    if not (
        isinstance(saved, dict)
        and isinstance(saved.get("state"), dict)
        and isinstance(saved.get("param_groups"), list)
        and all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in saved["param_groups"]
        )
    ):
        raise FileFormatError(
            f"{path}: its optimizer state is not an optimizer state_dict", path=path
        )
    groups = optimizer.param_groups
    counts = [len(g["params"]) for g in saved["param_groups"]]
    if counts != [len(g["params"]) for g in groups]:
        raise CheckpointMismatch(
            f"{path}: the optimizer state is for {counts} trainable parameters per group, "
            f"this flow has {[len(g['params']) for g in groups]}",
            path=path,
        )
    params = {
        index: param
        for saved_group, group in zip(saved["param_groups"], groups, strict=True)
        for index, param in zip(saved_group["params"], group["params"], strict=True)
    }
    for index, entry in saved["state"].items():
        param = params.get(index)
        if param is None or not isinstance(entry, dict):
            raise FileFormatError(
                f"{path}: optimizer state for unknown parameter {index!r}", path=path
            )
        for name, value in entry.items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise CheckpointMismatch(
                    f"{path}: optimizer state {name!r} of parameter {index} has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(param.shape)}",
                    path=path,
                )


def _check_rng_state(saved: Any, generator: torch.Generator, path: Path) -> None:
    expected = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    for key, reference in expected.items():
        value = saved.get(key) if isinstance(saved, dict) else None
        if not (
            isinstance(value, Tensor)
            and value.dtype == reference.dtype
            and value.shape == reference.shape
        ):
            raise FileFormatError(
                f"{path}: its random state {key!r} is not a generator state", path=path
            )


def restore_run(
    state: dict[str, Any],
    path: Path,
    flow: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    device: torch.device,
    models: tuple[str, ...] = ("model",),
) -> None:
    """Check that every part of a checkpoint fits this run, then restore it: the flow's
    weights, the optimiser's and the schedule's state and the random state (call inside
    :func:`forked_rng`). When a part does not fit, nothing has changed.

    Args:
        state: a checkpoint from :func:`load_run_checkpoint`.
        path: its file, named in errors.
        flow, optimizer, scheduler, generator, device: the run's.
        models: the entries holding weights of ``flow`` (``None`` entries are skipped; the
            first is loaded into ``flow``).

    Raises:
        CheckpointMismatch: weights of another architecture (all mismatches named), or an
            optimiser state for other parameters.
        FileFormatError: an entry that is not what the trainer wrote.
    """
    for key in models:
        if state[key] is not None or key == models[0]:
            check_state_dict(flow, state[key], source=path)
    _check_optimizer_state(optimizer, state["optimizer"], path)
    if (scheduler is None) != (state["scheduler"] is None):
        raise CheckpointMismatch(
            f"{path}: the checkpoint's learning-rate schedule differs", path=path
        )
    _check_rng_state(state["rng"], generator, path)
    flow.load_state_dict(state[models[0]])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"], generator, device)


def restored_history(cls: type, saved: Any, path: Path) -> Any:
    """A history dataclass ``cls`` rebuilt from its saved ``asdict`` form.

    Raises:
        FileFormatError: ``saved`` does not have exactly the fields of ``cls``.
    """
    names = {field.name for field in dataclasses.fields(cls)}
    if not isinstance(saved, dict) or set(saved) != names:
        got = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise FileFormatError(
            f"{path}: its history has fields {got}, expected {sorted(names)}", path=path
        )
    return cls(**saved)


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
