"""Subsampled 2D Fourier transform, the forward model of MRI: images in, k-space samples out."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from hybridflow.operators.linear import LinearOperator
from hybridflow.operators.mask import gather, mask_layout, scatter
from hybridflow.operators.validation import as_constant

__all__ = ["MaskedFourier"]

_DIMS = (-2, -1)


class MaskedFourier(LinearOperator):
    r"""Orthonormal 2D discrete Fourier transform, sampled on a mask: :math:`y = S F x`.

    :math:`F` is the unitary DFT over the last two dimensions (``norm="ortho"``, so
    :math:`F^H F = I`) and :math:`S` keeps the k-space entries where ``mask`` is ``True``:
    as a list ``(B, *lead, M)`` (``subsample=True``, row-major order) or as a full grid with
    zeros elsewhere (``subsample=False``). The adjoint is :math:`F^H S^T y`.

    With ``real_input=True`` (the default) the operator maps real images to complex k-space
    (a real-to-complex :class:`LinearOperator`): complex images are refused, and the adjoint
    returns the real part :math:`\mathrm{Re}(F^H S^T y)`, the adjoint for the real inner
    product, which is what back-propagation to a real image needs. With ``real_input=False``
    it is a complex operator on complex images.

    ``centered=True`` puts the zero frequency at the centre of the grid and of the image
    (:math:`F_c = \mathrm{fftshift} \circ F \circ \mathrm{ifftshift}`, the usual MRI
    convention); the mask is then given in centred coordinates. Outputs are complex64 for
    float32 inputs and complex128 for float64.

    Args:
        mask: boolean sampling pattern of shape ``(H, W)``.
        in_shape: per-sample image shape ``(*lead, H, W)`` (e.g. ``(coils, H, W)``); the mask
            is shared by the leading dimensions. ``(H, W)`` by default.
        real_input: whether images are real.
        subsample: output the sampled entries only, rather than the masked grid.
        centered: use centred k-space and image coordinates.

    Example:
        >>> import torch
        >>> from hybridflow.operators import MaskedFourier
        >>> mask = torch.zeros(4, 4, dtype=torch.bool)
        >>> mask[:, :2] = True
        >>> A = MaskedFourier(mask)
        >>> x = torch.ones(1, 4, 4)
        >>> A(x).shape, A(x).dtype
        (torch.Size([1, 8]), torch.complex64)
        >>> float(A(x)[0, 0].real)  # the DC coefficient: sum(x) / sqrt(16)
        4.0
    """

    def __init__(
        self,
        mask: Tensor | np.ndarray,
        in_shape: Sequence[int] | None = None,
        *,
        real_input: bool = True,
        subsample: bool = True,
        centered: bool = False,
    ) -> None:
        name = type(self).__name__
        mask = as_constant(mask, name, "mask")
        if mask.dtype != torch.bool or mask.dim() != 2:
            raise TypeError(
                f"{name}: the mask must be a 2D boolean sampling pattern (H, W), got "
                f"{mask.dtype} of shape {tuple(mask.shape)}"
            )
        shape, out_shape, indices = mask_layout(mask, in_shape, subsample=True, where=name)
        super().__init__(
            shape,
            out_shape if subsample else shape,
            complex_input=not real_input,
            complex_output=True,
        )
        self.real_input = real_input
        self.subsample = subsample
        self.centered = centered
        self.register_buffer("mask", mask)
        self.register_buffer("indices", indices, persistent=False)

    def extra_repr(self) -> str:
        flags = f"subsample={self.subsample}, centered={self.centered}"
        return (
            f"{super().extra_repr()}, sampled={self.indices.numel()}/{self.mask.numel()}, {flags}"
        )

    def _shifted(self, transform: Callable[..., Tensor], x: Tensor) -> Tensor:
        if not self.centered:
            return transform(x, dim=_DIMS, norm="ortho")
        inner = transform(torch.fft.ifftshift(x, dim=_DIMS), dim=_DIMS, norm="ortho")
        return torch.fft.fftshift(inner, dim=_DIMS)

    def _forward_map(self, x: Tensor) -> Tensor:
        kspace = self._shifted(torch.fft.fft2, x)
        if self.subsample:
            return gather(kspace, self.indices, 2)
        return kspace * self.mask.to(device=kspace.device, dtype=kspace.dtype.to_real())

    def _adjoint_map(self, y: Tensor) -> Tensor:
        if self.subsample:
            grid = scatter(y, self.indices, self.mask.shape)
        else:
            grid = y * self.mask.to(device=y.device, dtype=y.dtype.to_real())
        # For real images the base class keeps the real part (the real-domain adjoint).
        return self._shifted(torch.fft.ifft2, grid)
