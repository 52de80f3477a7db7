"""Orthonormal Haar wavelet squeeze of sequences, images and volumes."""

from __future__ import annotations

import math
from functools import reduce

import torch
from torch import Tensor

from hybridflow.errors import InputError, InputTypeError
from hybridflow.layers.squeeze import Squeeze
from hybridflow.layers.volume_preserving import VolumePreserving, check_field

__all__ = ["HaarSqueeze", "haar_matrix"]


def haar_matrix(spatial_dims: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    r"""The ``(2^d, 2^d)`` orthonormal Haar analysis matrix :math:`H^{\otimes d}`.

    :math:`H = \frac{1}{\sqrt 2}\begin{pmatrix} 1 & 1 \\ 1 & -1 \end{pmatrix}`: row 0 averages
    (low pass), row 1 differences (high pass). The Kronecker power is symmetric and orthogonal,
    hence its own inverse.
    """
    one = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / math.sqrt(2.0)
    return reduce(torch.kron, [one] * spatial_dims).to(dtype=dtype, device=device)


class HaarSqueeze(VolumePreserving):
    r"""Haar wavelet transform: ``(B, C, *S)`` to ``(B, 2^d C, *S/2)`` for ``d`` spatial dims.

    Every block of :math:`2^d` neighbouring positions (pairs in 1D, 2x2 in 2D, 2x2x2 in 3D) of
    every channel is mapped by the orthonormal matrix :math:`H^{\otimes d}`
    (:func:`haar_matrix`) to one low-pass (average) and :math:`2^d - 1` high-pass (detail)
    coefficients. In 2D, for a block :math:`\begin{pmatrix} a & b \\ c & d \end{pmatrix}`:
    :math:`(a + b + c + d) / 2`, :math:`(a - b + c - d) / 2`, :math:`(a + b - c - d) / 2`,
    :math:`(a - b - c + d) / 2`. Orthogonal, so the log determinant is 0 and the inverse is the
    transpose.

    Layout: sub-band major, output channel ``j * C + c`` is sub-band ``j`` of input channel
    ``c``. The first ``C`` channels are the low-pass band, a downscaled copy of the input
    (times :math:`2^{d/2}`): splitting off the last channels in a multiscale flow factors out
    the details and keeps the coarse image.

    Works on sequences ``(B, C, L)``, images ``(B, C, H, W)`` and volumes ``(B, C, D, H, W)``;
    every spatial size must be even.

    Example:
        >>> import torch
        >>> from hybridflow.layers import HaarSqueeze
        >>> y, logdet = HaarSqueeze()(torch.ones(1, 1, 2, 2))
        >>> y.flatten().tolist(), logdet.tolist()
        ([2.0, 0.0, 0.0, 0.0], [0.0])

    References:
        Haar, "Zur Theorie der orthogonalen Funktionensysteme", 1910;
        Ardizzone et al., "Guided Image Generation with Conditional Invertible Neural
        Networks", 2019 (Haar downsampling in invertible networks).
    """

    draws_random_numbers = False

    def __init__(self) -> None:
        super().__init__()
        self._pixels = Squeeze(2)

    def _check(self, x: Tensor, where: str) -> None:
        check_field(x, where)
        if not x.is_floating_point():
            raise InputTypeError(f"expected a floating-point tensor, got {x.dtype}", where=(where,))

    def squeeze(self, x: Tensor) -> Tensor:
        """The analysis transform ``(B, C, *S) -> (B, 2^d C, *S/2)``."""
        b, c, *sizes = x.shape
        d = len(sizes)
        if any(s % 2 for s in sizes):
            raise InputError(
                f"spatial sizes {tuple(sizes)} are not all even", where=("HaarSqueeze",)
            )
        blocks = self._pixels.squeeze(x).reshape(b, c, 2**d, -1)
        bands = torch.einsum("jk,bckn->bjcn", haar_matrix(d, x.dtype, x.device), blocks)
        return bands.reshape(b, c * 2**d, *(s // 2 for s in sizes))

    def unsqueeze(self, y: Tensor) -> Tensor:
        """The synthesis transform ``(B, 2^d C, *S) -> (B, C, *2S)``, inverse of :meth:`squeeze`."""
        b, channels, *sizes = y.shape
        d = len(sizes)
        if channels % 2**d:
            raise InputError(
                f"{channels} channels are not divisible by 2**{d} = {2**d}",
                where=("HaarSqueeze.inverse",),
            )
        c = channels // 2**d
        bands = y.reshape(b, 2**d, c, -1)
        blocks = torch.einsum("jk,bjcn->bckn", haar_matrix(d, y.dtype, y.device), bands)
        return self._pixels.unsqueeze(blocks.reshape(b, channels, *sizes))

    def _map(self, x: Tensor) -> Tensor:
        return self.squeeze(x)

    def _unmap(self, y: Tensor) -> Tensor:
        return self.unsqueeze(y)
