"""Multiscale building blocks: factoring channels out, and conditions resized to each scale.

Both wrap an inner invertible module and keep the tensor that flows through a chain whole, so
a multiscale network (Glow's) stays one chain of single-tensor layers and runs as one
reconstructing chain: the factored-out channels are part of the output, which is the only
thing an ``"invert"`` chain keeps, so carrying them costs no memory beyond the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hybridflow.arguments import positive_int
from hybridflow.autograd import InvertibleModule, Reconstruction
from hybridflow.autograd.checks import check_finite
from hybridflow.errors import InputError, InputTypeError
from hybridflow.layers.wrapper import Wrapper

__all__ = ["ResizeCondition", "Split"]

_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def _check_same_shape(where: str, before: Tensor, after: Tensor) -> None:
    if after.shape != before.shape:
        raise ValueError(
            f"{where}: the inner module must keep the shape of its input, but it mapped "
            f"{tuple(before.shape)} to {tuple(after.shape)}"
        )


class Split(Wrapper):
    r"""Factor-out: :math:`y = [\, g(x_{:, :k}),\ x_{:, k:} \,]`.

    The first ``split_size`` channels :math:`x_{:, :k}` continue through ``inner`` (the rest of
    a multiscale network, at the next scale); the remaining channels are factored out: they
    leave the flow as they are and are already latent variables. ``inner`` must keep the shape
    of its input (a scale of a multiscale network squeezes on entry and unsqueezes on exit,
    see :class:`~hybridflow.networks.Glow`), so the output has the shape of the input and the
    whole network remains one single-tensor chain. The log determinant is ``inner``'s.

    Carrying the factored-out part costs nothing extra in an ``"invert"`` chain: it is part of
    the output, the one tensor such a chain keeps, and the reconstructing rule hands it back
    untouched while ``inner`` rebuilds its own input.

    Works on any ``(B, C, ...)``; the condition is passed to ``inner`` unchanged.

    Args:
        inner: the invertible module applied to the kept channels.
        split_size: the number ``k`` of leading channels that continue (``1 <= k``); the
            input must have more than ``k`` channels.

    Example:
        >>> import torch
        >>> from hybridflow.layers import ActNorm, Split
        >>> layer = Split(ActNorm(2), split_size=2)
        >>> x = torch.randn(4, 6, 8, 8)
        >>> y, logdet = layer(x)
        >>> torch.equal(y[:, 2:], x[:, 2:])
        True

    References:
        Dinh et al., "Density estimation using Real NVP", 2017 (multiscale architecture);
        Kingma & Dhariwal, "Glow", 2018.
    """

    draws_random_numbers = False

    def __init__(self, inner: InvertibleModule, split_size: int) -> None:
        super().__init__(inner)
        self.split_size = positive_int(split_size, "split_size", "Split")

    def extra_repr(self) -> str:
        return f"split_size={self.split_size}"

    def _check(self, x: object, where: str) -> None:
        if not isinstance(x, Tensor):
            raise InputTypeError(f"expected a torch.Tensor, got {type(x).__name__}", where=(where,))
        if x.dim() < 2 or x.shape[1] <= self.split_size:
            raise InputError(
                f"expected more than split_size={self.split_size} channels in "
                f"dimension 1, got shape {tuple(x.shape)}",
                where=(where,),
            )

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, : self.split_size], x[:, self.split_size :]

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, "Split")
        kept, out = self._parts(x)
        y, logdet = self.inner(kept, cond)
        _check_same_shape("Split", kept, y)
        return torch.cat([y, out], dim=1), logdet

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y, "Split.inverse")
        check_finite(y, "Split.inverse")
        kept, out = self._parts(y)
        x, logdet = self.inner.inverse(kept, cond)
        _check_same_shape("Split.inverse", kept, x)
        return torch.cat([x, out], dim=1), logdet

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        """Hand-written rule: ``inner`` reconstructs the kept channels; the factored-out ones
        and their gradient pass through (the map is the identity on them)."""
        kept, out = self._parts(output)
        grad_kept, grad_out = self._parts(grad_output)
        result = self.inner.reconstruct_vjp(kept, grad_kept, grad_logdet, cond, inverse=inverse)
        return Reconstruction(
            torch.cat([result.input, out], dim=1),
            torch.cat([result.grad_input, grad_out], dim=1),
            result.grad_cond,
            result.grad_params,
        )


class ResizeCondition(Wrapper):
    r"""Run ``inner`` with the condition resized to the spatial shape of the input.

    A field condition ``(B, C_c, *S_c)`` is brought to the input's spatial shape ``S`` by
    adaptive average pooling (:func:`torch.nn.functional.adaptive_avg_pool2d` and its 1D/3D
    siblings; this downsamples by averaging and upsamples by repetition), so one condition at
    full resolution serves every scale of a multiscale network. A vector condition
    ``(B, C_c)`` and ``None`` are passed unchanged (couplings broadcast vectors over space).
    The pooling is linear and cheap; the reconstructing rule re-runs it and back-propagates
    the condition gradient through it.

    ``inner`` must keep the spatial shape of its input (the condition is sized from the input
    of the forward pass and from the output of the inverse pass).

    Args:
        inner: the invertible module to condition.

    Example:
        >>> import torch
        >>> from hybridflow.layers import AffineCoupling, ResizeCondition
        >>> layer = ResizeCondition(AffineCoupling(4, hidden=8, cond_features=1, spatial_dims=2))
        >>> y, logdet = layer(torch.randn(2, 4, 8, 8), torch.randn(2, 1, 32, 32))
        >>> tuple(y.shape)
        (2, 4, 8, 8)
    """

    draws_random_numbers = False

    def __init__(self, inner: InvertibleModule) -> None:
        super().__init__(inner)

    @staticmethod
    def resize(cond: Tensor | None, like: Tensor) -> Tensor | None:
        """``cond`` pooled to the spatial shape of ``like`` (vectors and ``None`` unchanged)."""
        if cond is None or not isinstance(cond, Tensor) or cond.dim() == 2:
            return cond
        if cond.dim() != like.dim() or like.dim() - 2 not in _POOL:
            raise InputError(
                f"a condition must be a vector (B, C) or a field with the "
                f"input's rank {like.dim()}, got shape {tuple(cond.shape)} for an input of "
                f"shape {tuple(like.shape)}",
                where=("ResizeCondition",),
            )
        if cond.shape[2:] == like.shape[2:]:
            return cond
        return _POOL[like.dim() - 2](cond, tuple(like.shape[2:]))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, logdet = self.inner(x, self.resize(cond, x))
        _check_same_shape("ResizeCondition", x, y)
        return y, logdet

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, logdet = self.inner.inverse(y, self.resize(cond, y))
        _check_same_shape("ResizeCondition.inverse", y, x)
        return x, logdet

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        """The inner rule with the resized condition; its gradient is pulled back through the
        pooling (the adjoint of an average pooling spreads each value over its window)."""
        if cond is None or cond.dim() == 2 or cond.shape[2:] == output.shape[2:]:
            return self.inner.reconstruct_vjp(
                output, grad_output, grad_logdet, cond, inverse=inverse
            )
        wants_grad = cond.requires_grad
        with torch.enable_grad():
            resized = self.resize(cond, output)
        local = resized.detach().requires_grad_(wants_grad)
        result = self.inner.reconstruct_vjp(
            output, grad_output, grad_logdet, local, inverse=inverse
        )
        grad_cond = None
        if wants_grad and result.grad_cond is not None:
            (grad_cond,) = torch.autograd.grad(resized, cond, result.grad_cond)
        return Reconstruction(result.input, result.grad_input, grad_cond, result.grad_params)
