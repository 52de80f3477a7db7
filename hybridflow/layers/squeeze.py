"""Space-to-depth squeezing of sequences, images and volumes."""

from __future__ import annotations

from torch import Tensor

from hybridflow.arguments import positive_int
from hybridflow.errors import InputError
from hybridflow.layers.volume_preserving import VolumePreserving, check_field

__all__ = ["Squeeze"]


class Squeeze(VolumePreserving):
    r"""Space-to-depth: ``(B, C, *S)`` to ``(B, C f^d, *S/f)`` for ``d`` spatial dimensions.

    Each block of :math:`f^d` neighbouring positions becomes :math:`f^d` channels (channel
    ``c f^d + k`` holds offset ``k`` of channel ``c``). A permutation: logdet 0.
    Works for sequences ``(B, C, L)``, images ``(B, C, H, W)`` and volumes ``(B, C, D, H, W)``.

    Args:
        factor: the block side ``f``; every spatial size must be divisible by it.

    References:
        Dinh et al., "Density estimation using Real NVP", 2017.
    """

    draws_random_numbers = False

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        positive_int(factor, "factor", "Squeeze")
        self.factor = factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"

    def _check(self, x: Tensor, where: str) -> None:
        check_field(x, where)

    def squeeze(self, x: Tensor) -> Tensor:
        """Space to depth ``(B, C, *S) -> (B, C f^d, *S/f)``."""
        f, d = self.factor, x.dim() - 2
        b, c, *sizes = x.shape
        if any(s % f for s in sizes):
            raise InputError(
                f"spatial sizes {tuple(sizes)} are not divisible by factor {f}", where=("Squeeze",)
            )
        split = [b, c]
        for s in sizes:
            split += [s // f, f]
        x = x.reshape(split)
        # (B, C, S1/f, f, S2/f, f, ...) -> (B, C, f, f, ..., S1/f, S2/f, ...)
        order = [0, 1, *range(3, 3 + 2 * d, 2), *range(2, 2 + 2 * d, 2)]
        return x.permute(order).reshape(b, c * f**d, *(s // f for s in sizes))

    def unsqueeze(self, y: Tensor) -> Tensor:
        """Depth to space, the inverse of :meth:`squeeze`."""
        f, d = self.factor, y.dim() - 2
        b, c, *sizes = y.shape
        if c % f**d:
            raise InputError(
                f"{c} channels are not divisible by factor**{d} = {f**d}",
                where=("Squeeze.inverse",),
            )
        y = y.reshape(b, c // f**d, *([f] * d), *sizes)
        # (B, C, f, ..., S1, ...) -> (B, C, S1, f, S2, f, ...)
        order = [0, 1]
        for i in range(d):
            order += [2 + d + i, 2 + i]
        return y.permute(order).reshape(b, c // f**d, *(s * f for s in sizes))

    def _map(self, x: Tensor) -> Tensor:
        return self.squeeze(x)

    def _unmap(self, y: Tensor) -> Tensor:
        return self.unsqueeze(y)
