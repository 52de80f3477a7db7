"""``Standardize``: a fixed affine map that z-scores observations, fitted on training data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hybridflow.arguments import number
from hybridflow.config import Configurable
from hybridflow.errors import InputError

__all__ = ["Standardize"]


def _shape(shape: object) -> tuple[int, ...]:
    if isinstance(shape, (Tensor, str)) or not isinstance(shape, Sequence):
        raise TypeError(
            "Standardize: pass the shape of one observation, e.g. Standardize((D,)), or fit "
            f"one with Standardize.from_data(x); got {type(shape).__name__}"
        )
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"Standardize: shape must hold positive ints, got {tuple(shape)!r}")
    return tuple(shape)


class Standardize(nn.Module, Configurable):
    r"""Entrywise :math:`(x - \mu) / \sigma` with fixed :math:`\mu, \sigma` (buffers).

    Put it in front of a summary network, ``Sequential(Standardize.from_data(x), MLP(...))``
    (:class:`~hybridflow.summary.Sequential` saves; ``nn.Sequential`` does not), so that the
    network sees inputs of unit scale whatever the simulator's units: neural posterior
    estimation trains much better that way. The statistics are buffers, saved in
    ``state_dict`` and moved by ``.to()``; they do not train.

    The module is built from the shape of one observation (:math:`\mu = 0`,
    :math:`\sigma = 1`, the identity) and fitted with :meth:`fit`, or both at once with
    :meth:`from_data`; its config holds the shape only, so :func:`hybridflow.save` writes it
    as plain data and :func:`hybridflow.load` restores the fitted statistics from the weights.

    Args:
        shape: the shape of one observation (``(D,)``, ``(C, H, W)``).
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

    def __init__(self, shape: Sequence[int], eps: float = 1e-8) -> None:
        super().__init__()
        self.shape = _shape(shape)
        self.eps = float(number(eps, "eps", "Standardize", minimum=0, open_low=True))
        self.register_buffer("mean", torch.zeros(self.shape))
        self.register_buffer("std", torch.ones(self.shape))

    def extra_repr(self) -> str:
        return f"shape={self.shape}"

    def config_arguments(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "eps": self.eps}

    def fit(self, x: Tensor) -> Standardize:
        """Set :math:`\\mu, \\sigma` per entry from a batch ``(N, *shape)``, ``N >= 2``
        (unbiased standard deviation, floored at ``eps``); returns the module.

        Raises:
            InputError: fewer than two observations, another shape, or NaN/Inf values.
        """
        where = ("Standardize.fit",)
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(f"expected a batch (N >= 2, ...), got {got}", where=where)
        if tuple(x.shape[1:]) != self.shape:
            raise InputError(
                f"observations of shape {tuple(x.shape[1:])} do not match the module's shape "
                f"{self.shape}",
                where=where,
            )
        if not torch.isfinite(x).all():
            raise InputError("the data have NaN/Inf values", where=where)
        with torch.no_grad():
            self.mean.copy_(x.mean(0))
            self.std.copy_(x.std(0).clamp_min(self.eps))
        return self

    @classmethod
    def from_data(cls, x: Tensor, eps: float = 1e-8) -> Standardize:
        """A module fitted on a batch ``(N, *shape)``, ``N >= 2`` (see :meth:`fit`)."""
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(
                f"expected a batch (N >= 2, ...), got {got}", where=("Standardize.from_data",)
            )
        return cls(tuple(x.shape[1:]), eps).to(x.dtype).fit(x)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std
