"""Convolution (blur) with a fixed kernel, computed with FFTs, circular or zero boundary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hybridflow.operators.linear import LinearOperator
from hybridflow.operators.validation import as_constant, as_shape

__all__ = ["Boundary", "Convolution"]

Boundary = Literal["circular", "zero"]
"""How :class:`Convolution` treats values beyond the edges: periodic or zero."""


class Convolution(LinearOperator):
    r"""Convolution with a fixed real kernel :math:`h`, output the size of the input.

    In each convolved dimension, with :math:`K` the kernel size and :math:`c = (K-1) // 2` its
    centre,

    .. math::
        y_i = \sum_{j=0}^{K-1} h_j \, x_{i + c - j}, \qquad i = 0, \dots, N - 1.

    ``boundary`` decides what :math:`x` is beyond the edges:

    * ``"circular"``: periodic, :math:`x_{i} = x_{i \bmod N}` (needs :math:`K \le N`); the
      operator is diagonal in Fourier space, the cheapest case;
    * ``"zero"``: zero, which is ``scipy.signal.convolve(x, h, mode="same")``; computed on a
      grid zero-padded to :math:`N + K - 1` so that nothing wraps around, then cropped.

    The adjoint is the correlation with :math:`h` (the conjugate spectrum), with the same
    boundary. A ``d``-dimensional kernel (``d`` = 1, 2 or 3) convolves the last ``d``
    dimensions of the input; leading per-sample dimensions (channels) are convolved one by one
    with the same kernel. The kernel is a buffer, cast to the input's precision at each call,
    so one operator serves float32 and float64 inputs; complex inputs are convolved part by
    part.

    Args:
        kernel: real kernel :math:`h` of shape ``(K,)``, ``(K_1, K_2)`` or ``(K_1, K_2, K_3)``.
        in_shape: per-sample input shape, e.g. ``(1, 64, 64)`` for one-channel images.
        boundary: ``"circular"`` or ``"zero"``, see :data:`Boundary`.

    Example:
        >>> import torch
        >>> from hybridflow.operators import Convolution
        >>> blur = Convolution(torch.tensor([0.25, 0.5, 0.25]), in_shape=(5,), boundary="zero")
        >>> y = blur(torch.tensor([[0.0, 0.0, 4.0, 0.0, 0.0]]))
        >>> torch.allclose(y, torch.tensor([[0.0, 1.0, 2.0, 1.0, 0.0]]), atol=1e-6)
        True
    """

    def __init__(
        self,
        kernel: Tensor | np.ndarray,
        in_shape: Sequence[int],
        boundary: Boundary = "circular",
    ) -> None:
        name = type(self).__name__
        kernel = as_constant(kernel, name, "kernel")
        shape = as_shape(in_shape, name, "in_shape")
        if not kernel.is_floating_point():
            raise TypeError(f"{name}: the kernel must be real floating point, got {kernel.dtype}")
        if not 1 <= kernel.dim() <= min(3, len(shape)):
            raise ValueError(
                f"{name}: the kernel must have 1 to 3 dimensions and no more than in_shape "
                f"{shape}; got kernel shape {tuple(kernel.shape)}"
            )
        if boundary not in get_args(Boundary):
            raise ValueError(
                f"{name}: boundary must be one of {get_args(Boundary)}, got {boundary!r}"
            )
        spatial = shape[len(shape) - kernel.dim() :]
        sizes = tuple(kernel.shape)
        if boundary == "circular" and any(k > n for k, n in zip(sizes, spatial, strict=True)):
            raise ValueError(
                f"{name}: a circular convolution needs a kernel no larger than the input; got "
                f"kernel shape {sizes} for spatial shape {spatial}"
            )
        super().__init__(shape, shape)
        self.register_buffer("kernel", kernel)
        self.boundary: Boundary = boundary
        self.spatial: tuple[int, ...] = spatial
        if boundary == "circular":
            self.grid: tuple[int, ...] = spatial
        else:
            self.grid = tuple(n + k - 1 for n, k in zip(spatial, sizes, strict=True))

    def extra_repr(self) -> str:
        kernel = tuple(self.kernel.shape)
        return f"{super().extra_repr()}, kernel={kernel}, boundary={self.boundary!r}"

    def _spectrum(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """FFT of the kernel on the grid, its centre moved to index 0."""
        kernel = self.kernel.to(device=device, dtype=dtype)
        padding: list[int] = []
        for k, p in zip(reversed(kernel.shape), reversed(self.grid), strict=True):
            padding += [0, p - k]
        placed = F.pad(kernel, padding)
        centre = [-((k - 1) // 2) for k in kernel.shape]
        placed = torch.roll(placed, shifts=centre, dims=tuple(range(kernel.dim())))
        return torch.fft.fftn(placed)

    def _filter(self, x: Tensor, conjugate: bool) -> Tensor:
        dims = tuple(range(-len(self.grid), 0))
        spectrum = self._spectrum(x.dtype.to_real(), x.device)
        if conjugate:
            spectrum = spectrum.conj()
        if x.is_complex():
            out = torch.fft.ifftn(torch.fft.fftn(x, s=self.grid, dim=dims) * spectrum, dim=dims)
        else:
            half = spectrum[..., : self.grid[-1] // 2 + 1]
            out = torch.fft.irfftn(
                torch.fft.rfftn(x, s=self.grid, dim=dims) * half, s=self.grid, dim=dims
            )
        crop = (..., *(slice(0, n) for n in self.spatial))
        return out[crop].contiguous()

    def _forward_map(self, x: Tensor) -> Tensor:
        return self._filter(x, conjugate=False)

    def _adjoint_map(self, y: Tensor) -> Tensor:
        return self._filter(y, conjugate=True)
