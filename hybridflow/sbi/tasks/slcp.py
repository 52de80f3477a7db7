"""SLCP: simple likelihood, complex posterior (four symmetric modes in five dimensions)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Uniform

from hybridflow.sbi.tasks.base import Task

__all__ = ["SLCP"]

_BOUND = 3.0
_DRAWS = 4  # observed points per simulation
_JITTER = 1e-6  # added to the covariance's diagonal, as in sbibm


class SLCP(Task):
    r"""Simple likelihood, complex posterior (Papamakarios et al. 2019; sbibm's ``slcp``).

    Prior :math:`\theta \sim U([-3, 3]^5)`. With :math:`m = (\theta_1, \theta_2)`,
    :math:`s_1 = \theta_3^2`, :math:`s_2 = \theta_4^2`, :math:`\rho = \tanh \theta_5`, an
    observation is four iid draws of

    .. math::
        N\Big(m, \begin{pmatrix} s_1^2 & \rho s_1 s_2 \\ \rho s_1 s_2 & s_2^2 \end{pmatrix}\Big),

    flattened to 8 numbers. The likelihood is a Gaussian (:meth:`log_likelihood`), but the
    posterior has four modes: it is invariant under the sign flips of :math:`\theta_3` and
    :math:`\theta_4`.

    **Reference posterior (approximate, MCMC).** Chains live on the folded space
    :math:`\theta_3, \theta_4 \ge 0`, where the posterior has one mode up to the remaining
    ambiguities: they start from importance resampling of prior draws, and run random-walk
    Metropolis with reflection at 0 and a diagonal proposal adapted during warm-up; the kept
    states get independent random signs for :math:`\theta_3, \theta_4`, which restores the four
    modes with their exact equal weights. It is the usual kind of reference (sbibm's are MCMC
    too), good enough for C2ST at the resolution a benchmark needs; it is not exact.

    Args:
        dtype: floating-point type.

    References:
        Papamakarios, Sterratt & Murray, "Sequential neural likelihood", 2019;
        Lueckmann et al., "Benchmarking simulation-based inference", 2021.
    """

    name = "slcp"

    theta_shape = (5,)
    x_shape = (2 * _DRAWS,)

    @property
    def prior(self) -> Distribution:
        low = torch.full((5,), -_BOUND, dtype=self.dtype)
        return Independent(Uniform(low, -low, validate_args=False), 1, validate_args=False)

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        return _BOUND * (2 * torch.rand(num, 5, generator=generator, dtype=self.dtype) - 1)

    @staticmethod
    def _scale_tril(theta: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(B, 2)`` and Cholesky factor ``(B, 2, 2)`` of the per-draw Gaussian."""
        s1, s2, rho = theta[:, 2] ** 2, theta[:, 3] ** 2, torch.tanh(theta[:, 4])
        a = s1**2 + _JITTER
        b = rho * s1 * s2
        c = s2**2 + _JITTER
        l11 = a.sqrt()
        l21 = b / l11
        l22 = (c - l21**2).clamp_min(0).sqrt()
        zero = torch.zeros_like(l11)
        tril = torch.stack([torch.stack([l11, zero], -1), torch.stack([l21, l22], -1)], -2)
        return theta[:, :2], tril

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        mean, tril = self._scale_tril(theta)
        eps = torch.randn(theta.shape[0], _DRAWS, 2, generator=generator, dtype=theta.dtype)
        draws = mean.unsqueeze(1) + torch.einsum("bij,bkj->bki", tril, eps.to(theta))
        return draws.reshape(theta.shape[0], 2 * _DRAWS)

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r""":math:`\sum_{k=1}^4 \log N(x_k; m, S)` per pair, ``(B,)`` (differentiable)."""
        self.check_theta(theta, "SLCP.log_likelihood")
        self.check_observation(x, "SLCP.log_likelihood")
        mean, tril = self._scale_tril(theta)
        centered = x.reshape(-1, _DRAWS, 2) - mean.unsqueeze(1)
        # Solve the 2x2 triangular system by hand: cheap and batched.
        l11, l21, l22 = tril[:, 0, 0, None], tril[:, 1, 0, None], tril[:, 1, 1, None]
        w1 = centered[..., 0] / l11
        w2 = (centered[..., 1] - l21 * w1) / l22
        mahalanobis = (w1**2 + w2**2).sum(1)
        log_det = 2 * _DRAWS * (l11.log() + l22.log()).squeeze(1)  # log det S, per draw x 4
        return -0.5 * mahalanobis - 0.5 * log_det - _DRAWS * math.log(2 * math.pi)

    def reference_posterior(
        self,
        x_o: Tensor,
        num: int,
        generator: torch.Generator | None = None,
        *,
        chains: int = 1000,
        warmup: int = 400,
        thin: int = 10,
        proposals: int = 100_000,
    ) -> Tensor:
        """Approximate posterior samples ``(num, 5)`` for one observation ``x_o`` ``(8,)`` by
        folded, reflected random-walk Metropolis (see the class docstring).

        Args:
            x_o: the observation.
            num: the number of samples.
            generator: random generator.
            chains: parallel chains (each gives ``ceil(num / chains)`` samples).
            warmup: warm-up steps, during which the proposal adapts.
            thin: steps between kept states.
            proposals: prior draws for the importance-resampled starting points.
        """
        if not isinstance(x_o, Tensor) or tuple(x_o.shape) != self.x_shape:
            got = tuple(x_o.shape) if isinstance(x_o, Tensor) else type(x_o).__name__
            raise ValueError(f"SLCP.reference_posterior: x_o must have shape (8,), got {got}")
        x = x_o.detach().to(torch.float64).cpu().unsqueeze(0)
        task = SLCP(torch.float64)

        def log_target(theta: Tensor) -> Tensor:
            inside = (theta.abs() <= _BOUND).all(1)
            value = task.log_likelihood(theta.clamp(-_BOUND, _BOUND), x.expand(len(theta), -1))
            return torch.where(inside, value, torch.full_like(value, -math.inf))

        with torch.no_grad():
            start = task.sample_prior(proposals, generator)
            start[:, 2:4] = start[:, 2:4].abs()
            weights = torch.softmax(log_target(start), 0)
            state = start[torch.multinomial(weights, chains, True, generator=generator)]
            current = log_target(state)
            scale = state.std(0).clamp_min(1e-3) * 2.38 / math.sqrt(5)
            per_chain = math.ceil(num / chains)
            kept: list[Tensor] = []
            accepted = torch.zeros(chains, dtype=torch.float64)
            for step in range(warmup + per_chain * thin):
                eps = torch.randn(state.shape, generator=generator, dtype=torch.float64)
                proposal = state + scale * eps
                proposal[:, 2:4] = proposal[:, 2:4].abs()  # reflection keeps the walk symmetric
                proposed = log_target(proposal)
                u = torch.rand(chains, generator=generator, dtype=torch.float64)
                accept = u.log() < proposed - current
                state = torch.where(accept[:, None], proposal, state)
                current = torch.where(accept, proposed, current)
                accepted += accept
                if step < warmup and (step + 1) % 50 == 0:  # aim at 20-35% acceptance
                    rate = float(accepted.mean()) / 50
                    scale = scale * (1.25 if rate > 0.35 else 0.8 if rate < 0.2 else 1.0)
                    accepted.zero_()
                if step >= warmup and (step - warmup + 1) % thin == 0:
                    kept.append(state.clone())
            samples = torch.cat(kept)[torch.randperm(len(kept) * chains, generator=generator)]
            samples = samples[:num]
            signs = torch.where(torch.rand(num, 2, generator=generator) < 0.5, -1.0, 1.0)
            samples[:, 2:4] = samples[:, 2:4] * signs.to(samples)
        return samples.to(self.dtype)
