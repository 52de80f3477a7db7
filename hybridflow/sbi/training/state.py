"""What a checkpoint holds of a run besides the weights: the random state, and the checked
restore of a run (weights, optimiser, schedule, random state, history) when resuming."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hybridflow.errors import CheckpointMismatch, FileFormatError
from hybridflow.io import check_state_dict

__all__ = [
    "forked_rng",
    "model_device",
    "restore_rng",
    "restore_run",
    "restored_history",
    "rng_state",
]


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
