r"""Fingerprints: a few numbers per sample that tell how far a rebuilt activation drifted.

A fingerprint of a batch ``h`` of shape ``(B, *S)`` (``D`` numbers per sample) is, per sample,
``K`` random projections and the norm:

.. math::

    f_b = \big(\langle w_1, h_b\rangle, \dots, \langle w_K, h_b\rangle,\ \|h_b\|\big),

with fixed random sign vectors :math:`w_k = u_k \otimes v_k` (Kronecker products of two
Rademacher vectors, so only :math:`K(m + n)` numbers are kept for :math:`D = m n`, whatever
the image size). For any :math:`\Delta`, :math:`E[\langle w_k, \Delta\rangle^2] =
\|\Delta\|^2`, so from a rebuilt :math:`h'` the relative error

.. math::

    e_b = \sqrt{\tfrac1K \textstyle\sum_k \langle w_k, h'_b - h_b\rangle^2}\ /\ \|h_b\|

estimates :math:`\|h'_b - h_b\| / \|h_b\|` (within a factor of 2 with probability above 98% at
:math:`K = 8`). Samples of at most :data:`EXACT_LIMIT` numbers are kept whole instead, and
their error is exact.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["EXACT_LIMIT", "PROJECTIONS", "fingerprint", "relative_error"]

PROJECTIONS = 8
"""Random projections per sample (``K``)."""

EXACT_LIMIT = PROJECTIONS
"""Samples of at most this many numbers are kept whole: as cheap, and exact. (A fingerprint
of width ``PROJECTIONS + 1`` is therefore always a projected one.)"""

_SEED = 0x5EED_F1A9


def _split(numel: int) -> tuple[int, int]:
    """``(m, n)`` with ``m * n = numel`` and ``n`` the divisor closest to ``sqrt(numel)``."""
    root = math.isqrt(numel)
    for n in range(root, 0, -1):
        if numel % n == 0:
            return numel // n, n
    return numel, 1  # unreachable: 1 divides everything


@lru_cache(maxsize=64)
def _signs(numel: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Fixed Rademacher factors ``u (m, K)`` and ``v (n, K)`` for samples of ``numel = m n``
    numbers (:func:`_split`), the same in every process. Cached; only checked calls of the
    drift guard get here, and under ``torch.compile`` their forward pass runs eagerly."""
    m, n = _split(numel)
    generator = torch.Generator().manual_seed(_SEED + 7919 * m + n)
    u = torch.randint(0, 2, (m, PROJECTIONS), generator=generator) * 2 - 1
    v = torch.randint(0, 2, (n, PROJECTIONS), generator=generator) * 2 - 1
    return u.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype)


def fingerprint(h: Tensor) -> Tensor:
    """The fingerprint of a batch ``h`` ``(B, ...)``: ``(B, D)`` for samples of ``D <= EXACT_LIMIT`` numbers, else ``(B, PROJECTIONS + 1)``, in ``h``'s dtype.

    Computed without autograd; costs one matrix product over ``h`` and a norm.
    """
    with torch.no_grad():
        flat = h.detach().reshape(h.shape[0], -1)
        numel = flat.shape[1]
        if numel <= EXACT_LIMIT:
            return flat.clone()
        u, v = _signs(numel, flat.dtype, flat.device)
        projected = (flat.view(-1, u.shape[0], v.shape[0]) @ v).mul_(u).sum(1)  # (B, K)
        norm = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
        return torch.cat([projected, norm], dim=1)


def relative_error(rebuilt: Tensor, recorded: Tensor) -> Tensor:
    """Largest relative error over the batch, as a 0-d tensor (no device sync).

    ``rebuilt`` and ``recorded`` are fingerprints (:func:`fingerprint`) of a rebuilt batch and
    of the batch the forward pass saw. ``inf`` or ``nan`` when the rebuilt batch is not finite.
    Samples whose norm is far below the batch's typical norm are measured against the typical
    norm (a zero sample rebuilt with round-off is no drift).
    """
    if recorded.shape[1] <= EXACT_LIMIT:
        diff = torch.linalg.vector_norm(rebuilt - recorded, dim=1)
        norm = torch.linalg.vector_norm(recorded, dim=1)
    else:
        diff = (rebuilt[:, :PROJECTIONS] - recorded[:, :PROJECTIONS]).pow(2).mean(1).sqrt()
        norm = recorded[:, PROJECTIONS]
    floor = norm.mean() * 1e-3 + torch.finfo(norm.dtype).tiny
    return (diff / torch.maximum(norm, floor)).max()
