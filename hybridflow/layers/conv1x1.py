"""Invertible 1x1 convolution: a learned channel mixing, LU-parametrised."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hybridflow.arguments import integer, positive_int
from hybridflow.autograd.checks import check_finite, check_input
from hybridflow.autograd.module import InvertibleModule, Reconstruction

__all__ = ["InvConv1x1"]


def _mix(matrix: Tensor, x: Tensor) -> Tensor:
    """Apply ``matrix`` ``(C, C)`` to the channels of ``x`` ``(B, C, ...)``.

    Computed in at least float32 and outside autocast, whatever the input's precision: a
    channel mixing rounded to bfloat16 or float16 cannot be undone accurately by its inverse.
    The result has ``x``'s dtype.
    """
    compute = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        m, v = matrix.to(compute), x.to(compute)
        if x.dim() == 2:
            out = v @ m.T
        else:
            out = (m @ v.reshape(x.shape[0], x.shape[1], -1)).reshape(x.shape)
    return out.to(x.dtype)


def _outer_sum(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`\sum_{\text{batch, positions}} a b^T`, shape ``(C, C)``."""
    if a.dim() == 2:
        return a.T @ b
    a2 = a.reshape(a.shape[0], a.shape[1], -1)
    b2 = b.reshape(b.shape[0], b.shape[1], -1)
    return torch.einsum("bin,bjn->ij", a2, b2)


class InvConv1x1(InvertibleModule):
    r"""Invertible channel mixing :math:`y = W x` at every position, :math:`W = P L (U + \mathrm{diag}(\sigma e^{s}))`.

    ``P`` is a fixed permutation, ``L`` unit lower triangular, ``U`` strictly upper triangular
    and :math:`\sigma` fixed signs, so :math:`\log|\det W| = \sum s` and the log determinant
    is :math:`N \sum s` with ``N`` spatial positions. Works on ``(B, C)``, ``(B, C, L)``,
    ``(B, C, H, W)`` and ``(B, C, D, H, W)``. Initialised to a random rotation.

    Args:
        num_features: the number of channels ``C``.
        seed: seed of the random initial rotation (``None`` draws from torch's global RNG).

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018.
    """

    draws_random_numbers = False

    def __init__(self, num_features: int, seed: int | None = None) -> None:
        super().__init__()
        positive_int(num_features, "num_features", "InvConv1x1")
        integer(seed, "seed", "InvConv1x1", minimum=0, optional=True)
        self.num_features = num_features
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(num_features, num_features, generator=generator))
        perm, lower, upper = torch.linalg.lu(q)
        diag = upper.diagonal()
        self.register_buffer("permutation", perm)
        self.register_buffer("sign", diag.sign())
        self.register_buffer("lower_mask", torch.tril(torch.ones_like(q), -1))
        self.register_buffer("identity", torch.eye(num_features))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(upper * self.lower_mask.T)
        self.log_diag = nn.Parameter(diag.abs().log())

    def extra_repr(self) -> str:
        return f"{self.num_features}"

    def _factors(self) -> tuple[Tensor, Tensor]:
        lower = self.lower * self.lower_mask + self.identity
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_diag.exp())
        return lower, upper

    def weight(self) -> Tensor:
        """The mixing matrix ``W`` (in the parameters' precision, even under autocast)."""
        with torch.autocast(self.lower.device.type, enabled=False):
            lower, upper = self._factors()
            return self.permutation @ lower @ upper

    def inverse_weight(self) -> Tensor:
        r""":math:`W^{-1} = U^{-1} L^{-1} P^T`, by triangular solves (never under autocast)."""
        with torch.autocast(self.lower.device.type, enabled=False):
            return self._inverse_of(*self._factors())

    def _inverse_of(self, lower: Tensor, upper: Tensor) -> Tensor:
        lower_inv = torch.linalg.solve_triangular(
            lower, self.identity, upper=False, unitriangular=True
        )
        return torch.linalg.solve_triangular(upper, lower_inv @ self.permutation.T, upper=True)

    def _logdet(self, x: Tensor, sign: float) -> Tensor:
        return (sign * math.prod(x.shape[2:]) * self.log_diag.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, "InvConv1x1", self.num_features, None, self)
        return _mix(self.weight(), x), self._logdet(x, 1.0)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(y, "InvConv1x1.inverse", self.num_features, None, self)
        check_finite(y, "InvConv1x1.inverse")
        return _mix(self.inverse_weight(), y), self._logdet(y, -1.0)

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        r"""Hand-written rule, without autograd. For a pass ``out = M in`` (``M`` is ``W``, or
        ``W^{-1}`` for the inverse pass): ``in = M^{-1} out``, :math:`\overline{in} = M^T
        \overline{out}`, :math:`\bar M = \sum \overline{out}\, in^T` (for the inverse pass
        :math:`\bar W = -M^T \bar M M^T`). Through :math:`W = P L U`: :math:`\bar L = P^T \bar W
        U^T` and :math:`\bar U = L^T P^T \bar W`, masked to their free entries, and
        :math:`\bar s = \mathrm{diag}(\bar U)\, \sigma e^{s} \pm N \sum_b \overline{\log\det}_b`.
        """
        params = tuple(self.parameters())
        with torch.no_grad(), torch.autocast(output.device.type, enabled=False):
            lower, upper = self._factors()
            weight = self.permutation @ lower @ upper
            weight_inv = self._inverse_of(lower, upper)
            matrix, undo = (weight_inv, weight) if inverse else (weight, weight_inv)
            rebuilt = _mix(undo, output)
            grad_input = _mix(matrix.T, grad_output)
            if not any(p.requires_grad for p in params):
                return Reconstruction(rebuilt, grad_input, None, (None,) * len(params))
            grad_matrix = _outer_sum(grad_output.to(matrix.dtype), rebuilt.to(matrix.dtype))
            grad_weight = -(matrix.T @ grad_matrix @ matrix.T) if inverse else grad_matrix
            permuted = self.permutation.T @ grad_weight
            grad_upper_full = lower.T @ permuted
            grads = {
                id(self.lower): (permuted @ upper.T) * self.lower_mask,
                id(self.upper): grad_upper_full * self.lower_mask.T,
                id(self.log_diag): grad_upper_full.diagonal() * self.sign * self.log_diag.exp()
                + (-1.0 if inverse else 1.0)
                * math.prod(output.shape[2:])
                * grad_logdet.sum().to(matrix.dtype),
            }
        return Reconstruction(
            rebuilt,
            grad_input,
            None,
            tuple(grads[id(p)] if p.requires_grad else None for p in params),
        )
