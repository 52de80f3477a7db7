"""Sets of observations of varying size: padding, masks and their checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hybridflow.autograd.checks import check_finite
from hybridflow.errors import InputError, InputTypeError

__all__ = ["as_padded_set", "pad_sets"]


def pad_sets(sets: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack sets of different sizes into one zero-padded batch and its mask.

    Args:
        sets: ``B`` tensors of shapes ``(N_b, D)`` (``N_b`` may be 0), same ``D``, dtype and
            device.

    Returns:
        ``(x, mask)``: ``x`` of shape ``(B, N, D)`` with ``N = max N_b``, zeros where a set has
        no element; ``mask`` of shape ``(B, N)``, ``True`` at real elements.

    Example:
        >>> import torch
        >>> from hybridflow.summary import pad_sets
        >>> x, mask = pad_sets([torch.ones(2, 3), torch.ones(1, 3)])
        >>> tuple(x.shape), mask.tolist()
        ((2, 2, 3), [[True, True], [True, False]])
    """
    if isinstance(sets, Tensor) or not isinstance(sets, Sequence) or len(sets) == 0:
        raise InputError(
            f"expected a non-empty list of (N_b, D) tensors, got {type(sets).__name__}",
            where=("pad_sets",),
        )
    first = sets[0]
    for b, s in enumerate(sets):
        if not isinstance(s, Tensor) or s.dim() != 2:
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise InputError(f"set {b} must be a tensor (N_b, D), got {got}", where=("pad_sets",))
        if s.shape[1] != first.shape[1] or s.dtype != first.dtype or s.device != first.device:
            raise InputError(
                f"set {b} has shape {tuple(s.shape)}, {s.dtype} on {s.device}; set 0 "
                f"has {tuple(first.shape)}, {first.dtype} on {first.device}",
                where=("pad_sets",),
            )
    size = max(s.shape[0] for s in sets)
    x = first.new_zeros(len(sets), size, first.shape[1])
    mask = torch.zeros(len(sets), size, dtype=torch.bool, device=first.device)
    for b, s in enumerate(sets):
        x[b, : s.shape[0]] = s
        mask[b, : s.shape[0]] = True
    return x, mask


def as_padded_set(
    x: Tensor | Sequence[Tensor], mask: Tensor | None, in_features: int, where: str
) -> tuple[Tensor, Tensor]:
    """Bring a set input to ``(x, mask)`` form, checked, with padded entries set to zero.

    Accepts a list of ``(N_b, D)`` tensors (then ``mask`` must be ``None``), a padded tensor
    ``(B, N, D)`` with a boolean ``mask`` ``(B, N)`` (``True`` at real elements), or a tensor
    ``(B, N, D)`` without mask (every set has ``N`` elements).

    A batch with no element at all (``N == 0``) gets one masked-out slot, so that pooling
    stays defined.

    Raises:
        ValueError: wrong shapes, a non-boolean mask, or NaN/Inf in a real element.
        TypeError: an input that is neither a tensor nor a list of tensors.
    """
    if isinstance(x, (list, tuple)):
        if mask is not None:
            raise InputError(
                "give a mask with a padded tensor, not with a list of sets", where=(where,)
            )
        x, mask = pad_sets(x)
    if not isinstance(x, Tensor):
        raise InputTypeError(
            f"expected a tensor (B, N, D) or a list of (N_b, D) tensors, got {type(x).__name__}",
            where=(where,),
        )
    if x.dim() != 3 or x.shape[2] != in_features:
        raise InputError(
            f"expected a set batch (B, N, {in_features}), got shape {tuple(x.shape)}",
            where=(where,),
        )
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != x.shape[:2]:
        got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor) else type(mask)
        raise InputError(
            f"mask must be a bool tensor {tuple(x.shape[:2])}, got {got}", where=(where,)
        )
    if x.shape[1] == 0:  # no element at all: one masked-out slot keeps reductions defined
        x = x.new_zeros(x.shape[0], 1, x.shape[2])
        mask = mask.new_zeros(x.shape[0], 1)
    x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    check_finite(x, where, what="the set (in elements the mask keeps)", fix="repair or drop them")
    return x, mask
