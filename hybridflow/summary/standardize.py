"""``Standardize``: a fixed affine map that z-scores observations, fitted on training data."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hybridflow.arguments import number
from hybridflow.errors import ArgumentError, ArgumentTypeError, InputError

__all__ = ["Standardize"]


class Standardize(nn.Module):
    r"""Entrywise :math:`(x - \mu) / \sigma` with fixed :math:`\mu, \sigma` (buffers).

    Put it in front of a summary network, ``nn.Sequential(Standardize.from_data(x), MLP(...))``,
    so that the network sees inputs of unit scale whatever the simulator's units: neural
    posterior estimation trains much better that way. The statistics are buffers, saved in
    ``state_dict`` and moved by ``.to()``; they do not train.

    Args:
        mean: :math:`\mu`, broadcastable against one observation.
        std: :math:`\sigma`, same shape; entries below ``eps`` are raised to ``eps``.
        eps: floor of :math:`\sigma` (constant entries would divide by zero).

    Example:
        >>> import torch
        >>> from hybridflow.summary import Standardize
        >>> x = torch.tensor([[0.0, 0.0], [1.0, 10.0], [2.0, 20.0]])
        >>> Standardize.from_data(x)(x)  # unbiased standard deviation: 1 and 10
        tensor([[-1., -1.],
                [ 0.,  0.],
                [ 1.,  1.]])
    """

    def __init__(self, mean: Tensor, std: Tensor, eps: float = 1e-8) -> None:
        super().__init__()
        where = ("Standardize",)
        if not isinstance(mean, Tensor) or not isinstance(std, Tensor):
            raise ArgumentTypeError("mean and std must be tensors", argument="mean", where=where)
        if mean.shape != std.shape:
            raise ArgumentError(
                f"mean {tuple(mean.shape)} and std {tuple(std.shape)} differ in shape",
                argument="std",
                where=where,
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ArgumentError("mean and std must be finite", argument="mean", where=where)
        number(eps, "eps", "Standardize", minimum=0, open_low=True)
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clamp_min(eps).clone())

    @classmethod
    def from_data(cls, x: Tensor, eps: float = 1e-8) -> Standardize:
        """Fit :math:`\\mu, \\sigma` per entry on a batch ``(N, *shape)``, ``N >= 2``."""
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(
                f"expected a batch (N >= 2, ...), got {got}", where=("Standardize.from_data",)
            )
        if not torch.isfinite(x).all():
            raise InputError("Standardize.from_data: the data have NaN/Inf values")
        return cls(x.mean(0), x.std(0), eps)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std
