"""Linear Gaussian inverse problems, whose posterior is Gaussian and known in closed form."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from hybridflow.arguments import positive_int
from hybridflow.operators import Identity, LinearOperator
from hybridflow.sbi.tasks.base import Task

__all__ = ["GaussianLinear", "LinearInverseProblem"]


def _positive(name: str, value: object, where: str) -> float:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{where}: {name} must be a positive number, got {value!r}")
    return float(value)


class LinearInverseProblem(Task):
    r"""A linear inverse problem with Gaussian prior and noise (any linear operator; the
    sbibm benchmark with :math:`A = I` is :class:`GaussianLinear`):
    :math:`\theta \sim N(0, \tau^2 I)`, :math:`x = A\theta + \sigma \varepsilon`,
    :math:`\varepsilon \sim N(0, I)`.

    :math:`A` is a :class:`~hybridflow.operators.LinearOperator` (a blur, a mask, a matrix),
    applied with its hand-written adjoint, so :meth:`log_likelihood` is differentiable and
    the task serves physics-based (reverse-KL) training. The posterior is Gaussian,

    .. math::
        \Sigma_{\text{post}} = \Big(\frac{A^T A}{\sigma^2} + \frac{I}{\tau^2}\Big)^{-1}, \qquad
        \mu_{\text{post}}(x) = \Sigma_{\text{post}} \frac{A^T x}{\sigma^2},

    computed from the dense matrix of :math:`A` (built once by applying the operator to the
    unit vectors, so keep :math:`n` moderate). Parameters and observations have the
    operator's per-sample shapes; the moments refer to them flattened (row-major).

    Args:
        operator: the forward operator :math:`A`, real, without trainable parameters.
        prior_std: :math:`\tau`.
        noise_std: :math:`\sigma`.
        dtype: floating-point type.
    """

    name = "linear_gaussian"
    differentiable = True

    def __init__(
        self,
        operator: LinearOperator,
        prior_std: float = 1.0,
        noise_std: float = 0.1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(dtype)
        where = type(self).__name__
        if not isinstance(operator, LinearOperator):
            raise TypeError(
                f"{where}: operator must be a hybridflow.operators.LinearOperator, got "
                f"{type(operator).__name__}"
            )
        if operator.complex_input or operator.complex_output:
            raise ValueError(f"{where}: the operator must be real, got {operator!r}")
        self.operator = operator
        self.prior_std = _positive("prior_std", prior_std, where)
        self.noise_std = _positive("noise_std", noise_std, where)
        n = math.prod(operator.in_shape)
        with torch.no_grad():
            basis = torch.eye(n, dtype=torch.float64).reshape(n, *operator.in_shape)
            matrix = operator(basis).reshape(n, -1).T  # (m, n), column i = A e_i
        identity = torch.eye(n, dtype=torch.float64)
        precision = matrix.T @ matrix / self.noise_std**2 + identity / self.prior_std**2
        covariance = torch.linalg.inv(precision)
        self._matrix = matrix
        self._covariance = (covariance + covariance.T) / 2

    @property
    def theta_shape(self) -> tuple[int, ...]:
        return tuple(self.operator.in_shape)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.operator.out_shape)

    @property
    def prior(self) -> Distribution:
        zeros = torch.zeros(self.theta_shape, dtype=self.dtype)
        return Independent(
            Normal(zeros, torch.full_like(zeros, self.prior_std), validate_args=False),
            len(self.theta_shape),
            validate_args=False,
        )

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        shape = (num, *self.theta_shape)
        return self.prior_std * torch.randn(shape, generator=generator, dtype=self.dtype)

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        with torch.no_grad():
            clean = self.operator(theta)
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype).to(clean)
        return clean + self.noise_std * noise

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r""":math:`-\|A\theta - x\|^2 / (2\sigma^2) - \tfrac{m}{2}\log(2\pi\sigma^2)`, ``(B,)``;
        the gradient in :math:`\theta` goes through the operator's adjoint."""
        self.check_theta(theta, f"{type(self).__name__}.log_likelihood")
        self.check_observation(x, f"{type(self).__name__}.log_likelihood")
        residual = (self.operator(theta) - x).flatten(1)
        m = residual.shape[1]
        return -0.5 * residual.square().sum(1) / self.noise_std**2 - 0.5 * m * math.log(
            2 * math.pi * self.noise_std**2
        )

    def log_prior(self, theta: Tensor) -> Tensor:
        r""":math:`-\|\theta\|^2 / (2\tau^2) - \tfrac{n}{2}\log(2\pi\tau^2)`, ``(B,)``."""
        self.check_theta(theta, f"{type(self).__name__}.log_prior")
        flat = theta.flatten(1)
        n = flat.shape[1]
        return -0.5 * flat.square().sum(1) / self.prior_std**2 - 0.5 * n * math.log(
            2 * math.pi * self.prior_std**2
        )

    def posterior_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The exact posterior mean ``(B, n)`` and covariance ``(n, n)`` (float64, flattened
        parameters) for observations ``x`` ``(B, *x_shape)``."""
        self.check_observation(x, f"{type(self).__name__}.posterior_moments")
        flat = x.detach().to(torch.float64).cpu().flatten(1)
        mean = flat @ self._matrix @ self._covariance / self.noise_std**2
        return mean, self._covariance.clone()

    def posterior(self, x: Tensor) -> MultivariateNormal:
        """The exact posterior over flattened parameters, ``batch_shape == (B,)``, float64."""
        mean, covariance = self.posterior_moments(x)
        return MultivariateNormal(mean, covariance_matrix=covariance)

    def reference_posterior(
        self, x_o: Tensor, num: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Exact posterior samples ``(num, *theta_shape)`` for one observation ``x_o``."""
        if not isinstance(x_o, Tensor) or tuple(x_o.shape) != self.x_shape:
            got = tuple(x_o.shape) if isinstance(x_o, Tensor) else type(x_o).__name__
            raise ValueError(
                f"{type(self).__name__}.reference_posterior: x_o must have shape {self.x_shape}, "
                f"got {got}"
            )
        mean, covariance = self.posterior_moments(x_o.unsqueeze(0))
        factor = torch.linalg.cholesky(covariance)
        eps = torch.randn(num, mean.shape[1], generator=generator, dtype=torch.float64)
        samples = mean + eps @ factor.T
        return samples.to(self.dtype).reshape(num, *self.theta_shape)


class GaussianLinear(LinearInverseProblem):
    r"""sbibm's Gaussian linear task: :math:`\theta \sim N(0, 0.1 I_d)`,
    :math:`x \sim N(\theta, 0.1 I_d)`; posterior :math:`N(x / 2, 0.05 I_d)`.

    The :class:`LinearInverseProblem` with :math:`A = I` and :math:`\tau^2 = \sigma^2 = 0.1`.

    Args:
        dim: dimension :math:`d` of parameters and observations.
        dtype: floating-point type.

    Example:
        >>> import torch
        >>> from hybridflow.sbi import GaussianLinear
        >>> task = GaussianLinear(dim=3)
        >>> mean, cov = task.posterior_moments(torch.ones(1, 3))
        >>> mean.tolist(), round(float(cov[0, 0]), 6)
        ([[0.5, 0.5, 0.5]], 0.05)

    References:
        Lueckmann et al., "Benchmarking simulation-based inference", 2021.
    """

    name = "gaussian_linear"

    def __init__(self, dim: int = 10, dtype: torch.dtype = torch.float32) -> None:
        positive_int(dim, "dim", "GaussianLinear")
        super().__init__(Identity((dim,)), math.sqrt(0.1), math.sqrt(0.1), dtype)
