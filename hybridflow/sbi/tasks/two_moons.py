"""The two moons task: a crescent-shaped, bimodal posterior in two dimensions."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Uniform

from hybridflow.sbi.tasks.base import Task

__all__ = ["TwoMoons"]

_SQRT2 = math.sqrt(2.0)


class TwoMoons(Task):
    r"""Two moons (Greenberg et al. 2019; sbibm's ``two_moons``).

    Prior :math:`\theta \sim U([-1, 1]^2)`. Simulator: :math:`a \sim U(-\pi/2, \pi/2)`,
    :math:`r \sim N(0.1, 0.01^2)`, :math:`p = (r \cos a + 0.25,\ r \sin a)` and

    .. math::
        x = p + \Big(-\frac{|\theta_1 + \theta_2|}{\sqrt 2},\
        \frac{-\theta_1 + \theta_2}{\sqrt 2}\Big).

    The posterior of an observation is a crescent, mirrored into two modes by the absolute
    value. **Reference posterior (exact).** On each half-plane
    :math:`\pm(\theta_1 + \theta_2) > 0` the shift
    :math:`g(\theta)` is affine with :math:`|\det \partial g / \partial \theta| = 1`, so with
    :math:`p \sim p(p)`, :math:`q = x_o - p` and a fair sign :math:`s`, the point
    :math:`\theta = g_s^{-1}(q)` (kept when :math:`q_1 < 0`) has density
    :math:`\tfrac12 p(x_o \mid \theta)`; rejecting points outside the prior's box leaves
    samples of the posterior :math:`\propto p(x_o \mid \theta)\, 1_{[-1, 1]^2}(\theta)`.

    Args:
        dtype: floating-point type.

    Example:
        >>> import torch
        >>> from hybridflow.sbi import TwoMoons
        >>> task = TwoMoons()
        >>> theta, x = task.sample_joint(4, torch.Generator().manual_seed(0))
        >>> tuple(theta.shape), tuple(x.shape)
        ((4, 2), (4, 2))

    References:
        Greenberg, Nonnenmacher & Macke, "Automatic posterior transformation for
        likelihood-free inference", 2019; Lueckmann et al., "Benchmarking simulation-based
        inference", 2021.
    """

    name = "two_moons"

    theta_shape = (2,)
    x_shape = (2,)

    @property
    def prior(self) -> Distribution:
        low = torch.full((2,), -1.0, dtype=self.dtype)
        return Independent(Uniform(low, -low, validate_args=False), 1, validate_args=False)

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        return 2 * torch.rand(num, 2, generator=generator, dtype=self.dtype) - 1

    def _moon(self, num: int, generator: torch.Generator | None) -> Tensor:
        """``num`` points ``p`` of the noisy half circle, ``(num, 2)``."""
        angle = math.pi * (torch.rand(num, generator=generator, dtype=self.dtype) - 0.5)
        radius = 0.1 + 0.01 * torch.randn(num, generator=generator, dtype=self.dtype)
        return torch.stack([radius * torch.cos(angle) + 0.25, radius * torch.sin(angle)], dim=1)

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        p = self._moon(theta.shape[0], generator).to(theta)
        shift = torch.stack(
            [-(theta[:, 0] + theta[:, 1]).abs() / _SQRT2, (theta[:, 1] - theta[:, 0]) / _SQRT2],
            dim=1,
        )
        return p + shift

    def reference_posterior(
        self, x_o: Tensor, num: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Exact posterior samples ``(num, 2)`` for one observation ``x_o`` ``(2,)`` (see the
        class docstring); raises ``ValueError`` if ``x_o`` has another shape or is not
        finite, ``RuntimeError`` if the observation is so unlikely that rejection stalls."""
        if not isinstance(x_o, Tensor) or tuple(x_o.shape) != (2,):
            got = tuple(x_o.shape) if isinstance(x_o, Tensor) else type(x_o).__name__
            raise ValueError(f"TwoMoons.reference_posterior: x_o must have shape (2,), got {got}")
        if not torch.isfinite(x_o).all():
            raise ValueError("TwoMoons.reference_posterior: x_o has NaN/Inf values")
        x_o = x_o.to(self.dtype).cpu()
        accepted: list[Tensor] = []
        have = 0
        for _ in range(1000):
            batch = max(4 * (num - have), 1024)
            q = x_o - self._moon(batch, generator)
            sign = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
            u = sign.to(self.dtype) * (-_SQRT2 * q[:, 0])  # theta_1 + theta_2
            v = _SQRT2 * q[:, 1]  # theta_2 - theta_1
            theta = torch.stack([(u - v) / 2, (u + v) / 2], dim=1)
            keep = (q[:, 0] < 0) & (theta.abs() <= 1).all(dim=1)
            accepted.append(theta[keep])
            have += int(keep.sum())
            if have >= num:
                return torch.cat(accepted)[:num]
        raise RuntimeError(
            f"TwoMoons.reference_posterior: rejection accepted only {have} of {num} samples; "
            f"the observation {x_o.tolist()} is (nearly) impossible under the prior"
        )
