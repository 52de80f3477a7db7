"""Simulated data sets: validation of ``(theta, x)`` pairs, NaN/Inf handling, splits."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from hybridflow.arguments import positive_int
from hybridflow.sbi.tasks.base import Task

__all__ = [
    "NonFinitePolicy",
    "NonFiniteSimulationWarning",
    "Observations",
    "Simulations",
    "check_simulations",
    "simulate",
]

NonFinitePolicy = Literal["drop", "raise"]
"""What to do with simulations that hold NaN/Inf: drop them with a warning that gives the
count, or refuse the data set with a ``ValueError``."""

Observations = Tensor | tuple[Tensor, ...]
"""Observations: one tensor ``(N, ...)``, or a tuple of tensors with the same first size
(e.g. a padded set and its mask), passed to the flow (and its summary network) as
``flow(*parts)``."""


class NonFiniteSimulationWarning(UserWarning):
    """Simulations with NaN/Inf values were dropped from a data set."""


@dataclass(frozen=True)
class Simulations:
    """Checked pairs ``(theta, x)``: parameters ``(N, *theta_shape)`` and observations.

    Attributes:
        theta: the parameters.
        x: the observations, a tensor ``(N, ...)`` or a tuple of such tensors.
        dropped: how many pairs were dropped for NaN/Inf values.
    """

    theta: Tensor
    x: Observations
    dropped: int = 0

    def __len__(self) -> int:
        return self.theta.shape[0]

    @property
    def parts(self) -> tuple[Tensor, ...]:
        """The observations as a tuple of tensors."""
        return self.x if isinstance(self.x, tuple) else (self.x,)

    def subset(self, index: Tensor) -> Simulations:
        """The pairs at ``index`` (a 1-D index tensor), with the same structure."""
        parts = tuple(p[index] for p in self.parts)
        return Simulations(self.theta[index], parts if isinstance(self.x, tuple) else parts[0])


def _parts(x: object, where: str) -> tuple[Tensor, ...]:
    parts = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    if len(parts) == 0:
        raise ValueError(f"{where}: observations are an empty tuple")
    for i, part in enumerate(parts):
        if not isinstance(part, Tensor):
            raise TypeError(
                f"{where}: observations must be a tensor or a tuple of tensors, got "
                f"{type(part).__name__} at position {i}"
            )
    return parts


def check_simulations(
    theta: Tensor,
    x: Observations | Sequence[Tensor],
    *,
    nonfinite: NonFinitePolicy = "drop",
    theta_shape: Sequence[int] | None = None,
    x_shape: Sequence[int] | None = None,
    where: str = "simulations",
) -> Simulations:
    """Validate a simulated data set and deal with NaN/Inf values.

    Args:
        theta: parameters ``(N, *theta_shape)``.
        x: observations ``(N, ...)``, or a tuple of tensors with first size ``N``.
        nonfinite: ``"drop"`` pairs whose parameters or observations hold NaN/Inf (with a
            :class:`NonFiniteSimulationWarning` that gives the count), or ``"raise"``.
        theta_shape: expected shape of one parameter, checked when given.
        x_shape: expected shape of one observation (the first tensor), checked when given.
        where: name for messages.

    Returns:
        The checked :class:`Simulations` (``x`` a tensor, or a tuple when given a tuple).

    Raises:
        ValueError: an empty data set (before or after dropping), sizes that differ, wrong
            shapes, or NaN/Inf with ``nonfinite="raise"``.
        TypeError: non-tensor inputs or non-floating parameters.
    """
    if nonfinite not in get_args(NonFinitePolicy):
        raise ValueError(
            f"{where}: nonfinite must be one of {get_args(NonFinitePolicy)}, got {nonfinite!r}"
        )
    if not isinstance(theta, Tensor):
        raise TypeError(f"{where}: theta must be a tensor, got {type(theta).__name__}")
    if not theta.is_floating_point() or theta.dim() < 2:
        raise ValueError(
            f"{where}: theta must be a floating tensor (N, *theta_shape), got "
            f"{tuple(theta.shape)} {theta.dtype}"
        )
    as_tuple = isinstance(x, (tuple, list))
    parts = _parts(x, where)
    n = theta.shape[0]
    if n == 0:
        raise ValueError(f"{where}: the data set is empty (0 simulations); simulate some first")
    for i, part in enumerate(parts):
        if part.dim() < 1 or part.shape[0] != n:
            raise ValueError(
                f"{where}: observation tensor {i} has shape {tuple(part.shape)} but theta has "
                f"{n} rows; each simulation needs one observation"
            )
    if theta_shape is not None and tuple(theta.shape[1:]) != tuple(theta_shape):
        raise ValueError(
            f"{where}: theta has shape {tuple(theta.shape)}, expected (N, "
            f"{', '.join(map(str, theta_shape))})"
        )
    if x_shape is not None and tuple(parts[0].shape[1:]) != tuple(x_shape):
        raise ValueError(
            f"{where}: observations have shape {tuple(parts[0].shape)}, expected (N, "
            f"{', '.join(map(str, x_shape))})"
        )
    finite = torch.isfinite(theta).flatten(1).all(1)
    for part in parts:
        if part.is_floating_point() or part.is_complex():
            finite &= torch.isfinite(part).reshape(n, -1).all(1)
    bad = int((~finite).sum())
    if bad and nonfinite == "raise":
        raise ValueError(
            f"{where}: {bad} of {n} simulations have NaN/Inf values; drop them (nonfinite="
            "'drop') or fix the simulator"
        )
    if bad:
        if bad == n:
            raise ValueError(
                f"{where}: all {n} simulations have NaN/Inf values; the data set is empty after "
                "dropping them"
            )
        warnings.warn(
            f"{where}: dropped {bad} of {n} simulations with NaN/Inf values",
            NonFiniteSimulationWarning,
            stacklevel=3,
        )
        theta = theta[finite]
        parts = tuple(p[finite] for p in parts)
    return Simulations(theta, parts if as_tuple else parts[0], bad)


def simulate(
    task: Task,
    num_simulations: int,
    *,
    seed: int = 0,
    nonfinite: NonFinitePolicy = "drop",
    chunk_size: int = 10_000,
) -> Simulations:
    """Draw ``num_simulations`` pairs from a task's joint distribution, reproducibly.

    Args:
        task: the task.
        num_simulations: the number of pairs, at least 1.
        seed: seed of the generator that drives the prior and the simulator.
        nonfinite: see :func:`check_simulations`.
        chunk_size: simulations per call of the simulator.

    Returns:
        Checked :class:`Simulations`.
    """
    if not isinstance(task, Task):
        raise TypeError(f"simulate: task must be a Task, got {type(task).__name__}")
    positive_int(num_simulations, "num_simulations", "simulate")
    generator = torch.Generator().manual_seed(seed)
    thetas, xs = [], []
    for start in range(0, num_simulations, chunk_size):
        theta, x = task.sample_joint(min(chunk_size, num_simulations - start), generator)
        thetas.append(theta)
        xs.append(x)
    return check_simulations(
        torch.cat(thetas),
        torch.cat(xs),
        nonfinite=nonfinite,
        theta_shape=task.theta_shape,
        x_shape=task.x_shape,
        where=f"simulate({task.name})",
    )
