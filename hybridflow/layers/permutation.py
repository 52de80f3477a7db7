"""Fixed channel permutations: a seeded random shuffle and the reversal."""

from __future__ import annotations

import torch
from torch import Tensor

from hybridflow.arguments import integer, positive_int
from hybridflow.autograd.checks import check_finite, check_input
from hybridflow.autograd.module import InvertibleModule, Reconstruction

__all__ = ["Permute", "Reverse"]


class Permute(InvertibleModule):
    r"""Fixed permutation of the channels: :math:`y_{:, i} = x_{:, \pi(i)}`, logdet 0.

    Works on vectors ``(B, C)``, sequences ``(B, C, L)``, images ``(B, C, H, W)`` and volumes
    ``(B, C, D, H, W)``; only dimension 1 is shuffled. The permutation is drawn once at
    construction and kept as the buffers ``permutation`` and ``inverse_permutation`` (saved in
    ``state_dict``), so a reloaded model permutes the same way. Between coupling layers it lets
    every channel be transformed and condition the others in turn.

    Args:
        num_features: the number of channels ``C``.
        seed: seed of the permutation (``None`` draws from torch's global RNG).

    Example:
        >>> import torch
        >>> from hybridflow.layers import Permute
        >>> layer = Permute(4, seed=0)
        >>> x = torch.arange(4.0).view(1, 4)
        >>> y, logdet = layer(x)
        >>> torch.equal(y, x[:, layer.permutation]), torch.equal(layer.inverse(y)[0], x)
        (True, True)

    References:
        Dinh et al., "NICE: Non-linear Independent Components Estimation", 2015;
        Kruse et al., "HINT: Hierarchical Invertible Neural Transport", 2021.
    """

    def __init__(self, num_features: int, seed: int | None = None) -> None:
        super().__init__()
        positive_int(num_features, "num_features", "Permute")
        integer(seed, "seed", "Permute", minimum=0, optional=True)
        self.num_features = num_features
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        permutation = torch.randperm(num_features, generator=generator)
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def extra_repr(self) -> str:
        return f"{self.num_features}"

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, "Permute", self.num_features, None)
        return x[:, self.permutation], x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(y, "Permute.inverse", self.num_features, None)
        check_finite(y, "Permute.inverse")
        return y[:, self.inverse_permutation], y.new_zeros(y.shape[0])

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        """Hand-written rule: a permutation's VJP is the inverse permutation of the gradient."""
        undo = self.permutation if inverse else self.inverse_permutation
        return Reconstruction(output[:, undo], grad_output[:, undo], None, ())


class Reverse(InvertibleModule):
    r"""Reversal of the channel order: :math:`y_{:, i} = x_{:, C - 1 - i}`, logdet 0.

    Its own inverse. Works on ``(B, C)``, ``(B, C, L)``, ``(B, C, H, W)`` and
    ``(B, C, D, H, W)``. Between two coupling layers it swaps the roles of the two halves
    (for even ``C``).

    Args:
        num_features: the number of channels ``C``.

    References:
        Dinh et al., "NICE: Non-linear Independent Components Estimation", 2015.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        positive_int(num_features, "num_features", "Reverse")
        self.num_features = num_features

    def extra_repr(self) -> str:
        return f"{self.num_features}"

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, "Reverse", self.num_features, None)
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(y, "Reverse.inverse", self.num_features, None)
        check_finite(y, "Reverse.inverse")
        return y.flip(1), y.new_zeros(y.shape[0])

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        """Hand-written rule: the reversal is its own inverse and its own VJP."""
        return Reconstruction(output.flip(1), grad_output.flip(1), None, ())
