"""Errors of a posterior approximation's mean and covariance against known moments."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["MomentErrors", "moment_errors"]


class MomentErrors(NamedTuple):
    r"""How far sample moments are from the true ones.

    Attributes:
        mean_error: :math:`\max_i |\hat\mu_i - \mu_i| / \sqrt{\Sigma_{ii}}`, the worst mean
            error in posterior standard deviations.
        std_error: :math:`\max_i |\hat\sigma_i / \sigma_i - 1|`, the worst relative error of a
            marginal standard deviation.
        covariance_error: :math:`\|\hat\Sigma - \Sigma\|_F / \|\Sigma\|_F`.
    """

    mean_error: float
    std_error: float
    covariance_error: float


def moment_errors(samples: Tensor, mean: Tensor, covariance: Tensor) -> MomentErrors:
    r"""Compare the mean and covariance of ``samples`` with the true ``mean`` and
    ``covariance`` (computed in float64).

    With :math:`n` exact samples the errors are Monte Carlo noise: ``mean_error`` is about
    :math:`\sqrt{2 \log d / n}` and ``std_error`` about :math:`\sqrt{\log d / n}` for
    :math:`d` entries, which sets the floor of a test's tolerance.

    Args:
        samples: ``(n, ...)``, flattened per sample to ``d`` entries.
        mean: ``(d,)`` (or the shape of one sample).
        covariance: ``(d, d)``.

    Example:
        >>> import torch
        >>> from hybridflow.sbi import moment_errors
        >>> g = torch.Generator().manual_seed(0)
        >>> errors = moment_errors(torch.randn(100_000, 3, generator=g), torch.zeros(3), torch.eye(3))
        >>> all(e < 0.02 for e in errors)
        True
    """
    if not isinstance(samples, Tensor) or samples.dim() < 2 or samples.shape[0] < 2:
        got = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
        raise ValueError(f"moment_errors: samples must be (n >= 2, ...), got {got}")
    flat = samples.detach().to(torch.float64).cpu().reshape(samples.shape[0], -1)
    d = flat.shape[1]
    mean = mean.detach().to(torch.float64).cpu().reshape(-1)
    covariance = covariance.detach().to(torch.float64).cpu()
    if mean.shape != (d,) or covariance.shape != (d, d):
        raise ValueError(
            f"moment_errors: samples have {d} entries but mean is {tuple(mean.shape)} and "
            f"covariance {tuple(covariance.shape)}"
        )
    sample_cov = torch.cov(flat.T).reshape(d, d)
    std = covariance.diagonal().sqrt()
    return MomentErrors(
        mean_error=float(((flat.mean(0) - mean).abs() / std).max()),
        std_error=float((sample_cov.diagonal().sqrt() / std - 1).abs().max()),
        covariance_error=float(
            torch.linalg.matrix_norm(sample_cov - covariance) / torch.linalg.matrix_norm(covariance)
        ),
    )
