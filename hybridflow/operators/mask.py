"""Masking (inpainting) operators: keep some pixels, as a masked image or as a list."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from hybridflow.operators.linear import LinearOperator
from hybridflow.operators.validation import Shape, as_constant, as_shape

__all__ = ["Mask", "gather", "mask_layout", "scatter"]


def mask_layout(
    mask: Tensor, in_shape: Sequence[int] | None, subsample: bool, where: str
) -> tuple[Shape, Shape, Tensor | None]:
    """Shapes of a masking operator and the flat indices of the kept entries.

    The mask covers the last ``mask.dim()`` dimensions of ``in_shape`` (``mask.shape`` by
    default) and is shared by the leading ones. Without ``subsample`` the output has the
    input's shape; with it, those dimensions are replaced by one of the kept entries.

    Returns:
        ``(in_shape, out_shape, indices)``, ``indices`` the flat positions of the ``True``
        entries (row-major) when ``subsample``, else ``None``.
    """
    shape = tuple(mask.shape) if in_shape is None else as_shape(in_shape, where, "in_shape")
    lead = len(shape) - mask.dim()
    if lead < 0 or shape[lead:] != tuple(mask.shape):
        raise ValueError(
            f"{where}: the mask of shape {tuple(mask.shape)} must match the last dimensions of "
            f"in_shape {shape}"
        )
    if not subsample:
        return shape, shape, None
    if mask.dtype != torch.bool:
        raise TypeError(f"{where}: subsample=True needs a boolean mask, got {mask.dtype}")
    indices = mask.reshape(-1).nonzero().reshape(-1)
    return shape, (*shape[:lead], indices.numel()), indices


def gather(x: Tensor, indices: Tensor, dims: int) -> Tensor:
    """Entries of the last ``dims`` dimensions of ``x`` at flat ``indices``."""
    return x.flatten(start_dim=x.dim() - dims).index_select(-1, indices.to(x.device))


def scatter(y: Tensor, indices: Tensor, shape: Sequence[int]) -> Tensor:
    """Zeros of trailing ``shape`` with ``y``'s last dimension put at flat ``indices``."""
    grid = y.new_zeros(*y.shape[:-1], math.prod(shape))
    return grid.index_copy(-1, indices.to(y.device), y).unflatten(-1, tuple(shape))


class Mask(LinearOperator):
    r"""Masking :math:`y = m \odot x` (inpainting, missing pixels), self-adjoint.

    ``mask`` is boolean (keep or drop) or real (weights). With ``subsample=True`` (boolean
    masks only) the output lists the kept entries instead, :math:`y = S x` with :math:`S`
    the rows of the identity at the kept positions (row-major order), and the adjoint puts
    them back in a zero image, :math:`S^T y`.

    Args:
        mask: boolean or real tensor (or array) covering the last ``mask.dim()`` dimensions
            of the input; leading per-sample dimensions (channels) share it.
        in_shape: per-sample input shape; ``mask.shape`` by default.
        subsample: output the kept entries ``(B, *lead, M)`` rather than a masked image.

    Example:
        >>> import torch
        >>> from hybridflow.operators import Mask
        >>> keep = torch.tensor([True, False, True])
        >>> Mask(keep)(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[1., 0., 3.]])
        >>> Mask(keep, subsample=True)(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[1., 3.]])
    """

    def __init__(
        self,
        mask: Tensor | np.ndarray,
        in_shape: Sequence[int] | None = None,
        subsample: bool = False,
    ) -> None:
        name = type(self).__name__
        mask = as_constant(mask, name, "mask")
        if mask.is_complex() or not (mask.dtype == torch.bool or mask.is_floating_point()):
            raise TypeError(f"{name}: the mask must be boolean or real floating, got {mask.dtype}")
        if mask.dim() == 0:
            raise ValueError(f"{name}: the mask needs at least one dimension")
        shape, out_shape, indices = mask_layout(mask, in_shape, subsample, name)
        super().__init__(shape, out_shape)
        self.subsample = subsample
        self.register_buffer("mask", mask)
        self.register_buffer("indices", indices, persistent=False)

    def _weights(self, like: Tensor) -> Tensor:
        return self.mask.to(device=like.device, dtype=like.dtype.to_real())

    def _forward_map(self, x: Tensor) -> Tensor:
        if self.subsample:
            return gather(x, self.indices, self.mask.dim())
        return x * self._weights(x)

    def _adjoint_map(self, y: Tensor) -> Tensor:
        if self.subsample:
            return scatter(y, self.indices, self.mask.shape)
        return y * self._weights(y)
