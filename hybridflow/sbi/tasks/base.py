"""``Task``: a simulation-based inference problem, a prior with a simulator."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["Task"]

# Offset between the seeds of training simulations and of reference observations, so that
# ``observation(i)`` never repeats a draw of ``sample_joint`` with a small seed.
_OBSERVATION_SEED = 1_000_003


class Task(ABC):
    r"""A simulation-based inference problem: prior :math:`p(\theta)` and simulator
    :math:`x \sim p(x \mid \theta)`.

    Subclasses give the shapes, the prior (as a ``torch.distributions.Distribution`` for
    densities and support checks), a seeded prior sampler and the simulator. They may also give
    a reference posterior sampler (for metrics) and, when the likelihood is differentiable in
    :math:`\theta` and the prior has a differentiable density on all of
    :math:`\mathbb{R}^n` (``differentiable = True``), :meth:`log_likelihood` and
    :meth:`log_prior` for physics-based (reverse-KL) training.

    Randomness is explicit: every sampler takes an optional ``torch.Generator`` (CPU), so a
    data set is reproducible from a seed without touching torch's global RNG.

    Attributes:
        name: short name of the task.
        differentiable: whether :meth:`log_likelihood` and :meth:`log_prior` are available and
            differentiable.
        dtype: floating-point type of parameters and observations.
    """

    name: ClassVar[str] = "task"
    differentiable: ClassVar[bool] = False

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"{type(self).__name__}: dtype must be a floating dtype, got {dtype!r}")
        self.dtype = dtype

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(theta_shape={self.theta_shape}, x_shape={self.x_shape}, "
            f"dtype={self.dtype})"
        )

    # -- what a task defines ---------------------------------------------------------------
    @property
    @abstractmethod
    def theta_shape(self) -> tuple[int, ...]:
        """Shape of one parameter."""

    @property
    @abstractmethod
    def x_shape(self) -> tuple[int, ...]:
        """Shape of one observation."""

    @property
    @abstractmethod
    def prior(self) -> Distribution:
        """The prior, ``batch_shape == ()``, ``event_shape == theta_shape``."""

    @abstractmethod
    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """``num`` parameters ``(num, *theta_shape)`` drawn from the prior."""

    @abstractmethod
    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        """Observations ``(B, *x_shape)`` for checked parameters ``(B, *theta_shape)``."""

    # -- optional --------------------------------------------------------------------------
    def reference_posterior(
        self, x_o: Tensor, num: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``num`` samples ``(num, *theta_shape)`` of the true posterior given one observation.

        Raises:
            NotImplementedError: the task has no reference posterior.
        """
        raise NotImplementedError(f"{type(self).__name__} has no reference posterior")

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r""":math:`\log p(x \mid \theta)` per pair, ``(B,)``, differentiable in ``theta``.

        Raises:
            NotImplementedError: the likelihood is not available.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no differentiable likelihood; reverse-KL training needs one"
        )

    def log_prior(self, theta: Tensor) -> Tensor:
        r""":math:`\log p(\theta)` per parameter, ``(B,)``."""
        return self.prior.log_prob(theta)

    # -- provided --------------------------------------------------------------------------
    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Run the simulator: observations ``(B, *x_shape)`` for ``theta`` ``(B, *theta_shape)``.

        Raises:
            ValueError: ``theta`` of the wrong shape.
            TypeError: ``theta`` not a floating-point tensor.
        """
        self.check_theta(theta, f"{type(self).__name__}.simulate")
        return self._simulate(theta, generator)

    def sample_joint(
        self, num: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(theta, x)``: ``num`` parameters from the prior and their simulations."""
        if not isinstance(num, int) or isinstance(num, bool) or num < 0:
            raise ValueError(f"{type(self).__name__}: num must be an int >= 0, got {num!r}")
        theta = self.sample_prior(num, generator)
        return theta, self.simulate(theta, generator)

    def observation(self, index: int = 0) -> tuple[Tensor, Tensor]:
        """Reference observation number ``index``: ``(theta_true, x_o)`` of shapes
        ``theta_shape`` and ``x_shape``, the same for the same index."""
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"{type(self).__name__}: index must be an int >= 0, got {index!r}")
        generator = torch.Generator().manual_seed(_OBSERVATION_SEED + index)
        theta, x = self.sample_joint(1, generator)
        return theta[0], x[0]

    def check_theta(self, theta: object, where: str) -> None:
        """Raise if ``theta`` is not a floating tensor ``(B, *theta_shape)``."""
        _check_batch(theta, self.theta_shape, where, "parameters")

    def check_observation(self, x: object, where: str) -> None:
        """Raise if ``x`` is not a floating tensor ``(B, *x_shape)``."""
        _check_batch(x, self.x_shape, where, "observations")


def _check_batch(value: object, shape: tuple[int, ...], where: str, what: str) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{where}: {what} must be a tensor, got {type(value).__name__}")
    if value.dim() != len(shape) + 1 or tuple(value.shape[1:]) != shape:
        raise ValueError(
            f"{where}: {what} must have shape (B, {', '.join(map(str, shape))}), got "
            f"{tuple(value.shape)}"
        )
    if not value.is_floating_point():
        raise TypeError(f"{where}: {what} must be floating point, got {value.dtype}")
