"""Fixed channel permutations: a seeded random shuffle and the reversal."""

from __future__ import annotations

import torch
from torch import Tensor

from hybridflow.arguments import integer, positive_int
from hybridflow.autograd.checks import check_input
from hybridflow.layers.volume_preserving import VolumePreserving

__all__ = ["ChannelPermutation", "Permute", "Reverse"]


class ChannelPermutation(VolumePreserving):
    """A fixed permutation of the ``num_features`` channels (dimension 1) of ``(B, C, *S)``.

    Args:
        num_features: the number of channels ``C``.
    """

    draws_random_numbers = False

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = positive_int(num_features, "num_features", type(self).__name__)

    def extra_repr(self) -> str:
        return f"{self.num_features}"

    def _check(self, x: Tensor, where: str) -> None:
        check_input(x, where, self.num_features, None)


class Permute(ChannelPermutation):
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

    draws_random_numbers = False

    def __init__(self, num_features: int, seed: int | None = None) -> None:
        super().__init__(num_features)
        integer(seed, "seed", "Permute", minimum=0, optional=True)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        permutation = torch.randperm(num_features, generator=generator)
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def _map(self, x: Tensor) -> Tensor:
        return x[:, self.permutation]

    def _unmap(self, y: Tensor) -> Tensor:
        return y[:, self.inverse_permutation]


class Reverse(ChannelPermutation):
    r"""Reversal of the channel order: :math:`y_{:, i} = x_{:, C - 1 - i}`, logdet 0.

    Its own inverse. Works on ``(B, C)``, ``(B, C, L)``, ``(B, C, H, W)`` and
    ``(B, C, D, H, W)``. Between two coupling layers it swaps the roles of the two halves
    (for even ``C``).

    Args:
        num_features: the number of channels ``C``.

    References:
        Dinh et al., "NICE: Non-linear Independent Components Estimation", 2015.
    """

    draws_random_numbers = False

    def _map(self, x: Tensor) -> Tensor:
        return x.flip(1)

    def _unmap(self, y: Tensor) -> Tensor:
        return y.flip(1)
