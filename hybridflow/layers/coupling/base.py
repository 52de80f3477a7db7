"""The coupling template: argument checks, the channel split and the conditioner, written once.

:class:`CouplingBase` is what every coupling shares (the checked arguments, the split of the
channels into a pass-through and a transformed part, the input and condition checks);
:class:`CouplingLayer` adds the conditioner and leaves a subclass two small methods.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from hybridflow.arguments import integer, one_of, positive_int
from hybridflow.autograd import (
    Halo,
    InvertibleModule,
    Reconstruction,
    TileSize,
    active_tile_size,
    vjp_wrt,
)
from hybridflow.autograd.checks import check_condition, check_finite, check_input
from hybridflow.errors import ArgumentError
from hybridflow.layers.coupling.conditioners import (
    ConstantConditioner,
    Subnet,
    check_subnet,
    default_conditioner,
)
from hybridflow.layers.coupling.tiled import tiled_pass, tiled_reconstruct
from hybridflow.layers.receptive_field import receptive_halo

__all__ = ["CouplingBase", "CouplingLayer", "check_conditioner_arguments"]


def check_conditioner_arguments(hidden: object, subnet: object, where: str) -> None:
    """Check what builds a coupling's conditioners: a width ``hidden`` and a ``subnet`` factory."""
    positive_int(hidden, "hidden", where)
    check_subnet(subnet, where)


class CouplingBase(InvertibleModule):
    """What every coupling shares: checked arguments and the split of the channels.

    The input ``(B, num_features, *spatial)`` splits along dimension 1 into a pass-through
    part (the first ``split_size = num_features // 2`` channels; none when
    :attr:`passes_half` is ``False``) and the transformed rest. The condition, if any, is a
    vector ``(B, cond_features)`` or a field ``(B, cond_features, *spatial)``. The arguments
    are those of :class:`CouplingLayer` that fix these shapes (``num_features`` at least 1
    without a pass-through part).
    """

    draws_random_numbers = False

    passes_half: ClassVar[bool] = True
    """``False`` for the elementwise conditional variants: every feature is transformed and
    the conditioner sees the condition alone (the pass-through half is empty)."""

    def __init__(self, num_features: int, cond_features: int, spatial_dims: int) -> None:
        super().__init__()
        name = type(self).__name__
        integer(num_features, "num_features", name, minimum=2 if self.passes_half else 1)
        integer(cond_features, "cond_features", name, minimum=0)
        one_of(spatial_dims, "spatial_dims", name, (0, 1, 2, 3))
        self.num_features = num_features
        self.cond_features = cond_features
        self.spatial_dims = spatial_dims
        self.split_size = num_features // 2 if self.passes_half else 0

    @property
    def takes_condition(self) -> bool:
        return self.cond_features > 0

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, cond_features={self.cond_features}, "
            f"spatial_dims={self.spatial_dims}"
        )

    def _check(self, x: Tensor, cond: Tensor | None, where: str) -> None:
        check_input(x, where, self.num_features, self.spatial_dims, self)
        check_condition(cond, x, where, self.cond_features)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(pass-through part, transformed part)`` of ``x`` along dimension 1."""
        return x[:, : self.split_size], x[:, self.split_size :]


class CouplingLayer(CouplingBase):
    r"""Template of coupling layers: :math:`y_1 = x_1`, :math:`y_2 = g(x_2; h)`,
    :math:`h = \mathrm{NN}([x_1, c])`, with ``g`` elementwise and invertible in :math:`x_2`.

    The input splits along dimension 1 into :math:`x_1` (the first ``num_features // 2``
    channels) and :math:`x_2` (the rest). The condition, if any, is concatenated to the
    conditioner's input: a vector ``(B, cond_features)`` is broadcast over space.

    Subclasses set :attr:`params_per_feature` (or pass it to ``__init__``) and write two small
    methods, :meth:`_transform` and :meth:`_inverse_transform`; they may also write
    :meth:`_elementwise_vjp` by hand. The reconstructing backward runs the conditioner once
    forward and once backward, whatever ``g`` is: the elementwise part is cheap.

    Args:
        num_features: channels (images, volumes) or features (vectors) of the input, at least 2.
        hidden: width of the default conditioner.
        cond_features: channels of the condition; 0 for an unconditional layer.
        spatial_dims: 0 for vectors ``(B, D)``, 1/2/3 for ``(B, C, L)``, ``(B, C, H, W)``,
            ``(B, C, D, H, W)``; picks a Linear or Conv1d/2d/3d conditioner.
        subnet: optional conditioner factory ``subnet(in_features, out_features)`` replacing the
            default network. All trainable parameters of the layer must live in it.
    """

    draws_random_numbers = False

    params_per_feature: int = 1
    """Conditioner outputs per transformed feature (a class attribute; a subclass whose count
    depends on its arguments passes ``params_per_feature`` to ``__init__`` instead)."""

    def __init__(
        self,
        num_features: int,
        hidden: int = 64,
        cond_features: int = 0,
        spatial_dims: int = 0,
        subnet: Subnet | None = None,
        *,
        params_per_feature: int | None = None,
    ) -> None:
        if self.passes_half and num_features == 1 and not isinstance(num_features, bool):
            raise ArgumentError(
                "num_features must be an int >= 2 (half of the features pass through), got "
                "1; for one feature use ConditionalSpline or ConditionalAffine",
                argument="num_features",
                where=(type(self).__name__,),
            )
        super().__init__(num_features, cond_features, spatial_dims)
        check_conditioner_arguments(hidden, subnet, type(self).__name__)
        if params_per_feature is not None:
            self.params_per_feature = positive_int(
                params_per_feature, "params_per_feature", type(self).__name__
            )
        in_features = self.split_size + cond_features
        out_features = (num_features - self.split_size) * self.params_per_feature
        if subnet is not None:
            self.conditioner = subnet(in_features, out_features)
        elif in_features == 0:
            self.conditioner = ConstantConditioner(out_features, spatial_dims)
        else:
            self.conditioner = default_conditioner(in_features, out_features, hidden, spatial_dims)

    def spatial_halo(self) -> Halo:
        """How far the conditioner looks: per spatial dimension ``(before, after)``.

        Read from the conditioner's layers (or its declared ``receptive_field``; see
        :mod:`hybridflow.layers.receptive_field`); ``()`` for a layer on vectors, which has
        no spatial dimensions to tile.

        Raises:
            ArgumentError: when tiling would change the conditioner's output.
        """
        if self.spatial_dims == 0:
            return ()
        return receptive_halo(self.conditioner, self.spatial_dims, "conditioner")

    def _tile_size(self) -> TileSize | None:
        """The tile size of the enclosing chain, if it tiles and this layer has space to tile."""
        return active_tile_size() if self.spatial_dims > 0 else None

    # -- the two methods a subclass writes -------------------------------------------------
    def _transform(self, x2: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(y2, logdet)`` of the elementwise map given conditioner output ``h``."""
        raise NotImplementedError

    def _inverse_transform(self, y2: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(x2, logdet)`` of the inverse elementwise map (logdet of the inverse)."""
        raise NotImplementedError

    # -- shared machinery ------------------------------------------------------------------
    def _condition(self, x1: Tensor, cond: Tensor | None) -> Tensor:
        """Conditioner output ``h`` for the pass-through half (and the condition).

        ``h`` is returned in ``x1``'s dtype: under autocast the conditioner may compute in
        bfloat16/float16, but the elementwise map and its log determinant stay in the flow's
        precision, so that the inverse undoes the forward accurately.
        """
        if cond is None or self.cond_features == 0:
            h = self.conditioner(x1)
        else:
            if cond.dim() == 2 and x1.dim() > 2:
                cond = cond.view(*cond.shape, *([1] * (x1.dim() - 2))).expand(-1, -1, *x1.shape[2:])
            h = self.conditioner(torch.cat([x1, cond], dim=1))
        return h.to(x1.dtype)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, cond, type(self).__name__)
        return self._pass(x, cond, inverse=False)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        where = f"{type(self).__name__}.inverse"
        self._check(y, cond, where)
        check_finite(y, where)
        return self._pass(y, cond, inverse=True)

    def _pass(self, x: Tensor, cond: Tensor | None, *, inverse: bool) -> tuple[Tensor, Tensor]:
        """The checked forward (or inverse) pass: tile by tile without grad inside a tiling
        chain, else the elementwise map of the transformed part given the pass-through part."""
        tile_size = self._tile_size()
        if tile_size is not None and not torch.is_grad_enabled():
            return tiled_pass(self, x, cond, inverse=inverse, tile_size=tile_size)
        kept, changed = self._split(x)
        transform = self._inverse_transform if inverse else self._transform
        out, logdet = transform(changed, self._condition(kept, cond))
        return torch.cat([kept, out], dim=1), logdet

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        """Shared rule: one conditioner pass forward and one backward.

        The pass-through half of the output equals that of the input, so ``h`` is computed
        from it once with grad on; the elementwise part is inverted and differentiated given
        ``h`` (:meth:`_elementwise_vjp`), and ``dh`` is back-propagated through the
        conditioner to the pass-through half, the condition and the parameters. Inside a
        chain with a ``tile_size``, all of it runs tile by tile (:func:`tiled_reconstruct`).
        """
        tile_size = self._tile_size()
        if tile_size is not None:
            return tiled_reconstruct(
                self, output, grad_output, grad_logdet, cond, inverse=inverse, tile_size=tile_size
            )
        out1, out2 = self._split(output)
        grad1, grad2 = self._split(grad_output)
        passthrough = out1.detach().requires_grad_(True)
        with torch.enable_grad():
            h = self._condition(passthrough, cond)
        with torch.no_grad():
            rebuilt2, grad_in2, grad_h = self._elementwise_vjp(
                out2, h.detach(), grad2, grad_logdet, inverse
            )
        through = vjp_wrt((h,), (grad_h,), passthrough, cond, self)
        return Reconstruction(
            torch.cat([out1, rebuilt2], dim=1),
            torch.cat([grad1 + through.grad_input, grad_in2], dim=1),
            through.grad_cond,
            through.grad_params,
        )

    def _elementwise_vjp(
        self, out2: Tensor, h: Tensor, grad_out2: Tensor, grad_logdet: Tensor, inverse: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(rebuilt input half, its gradient, gradient of h)`` for the elementwise map.

        Generic version: invert, then differentiate the elementwise map with autograd; it
        touches no network, so it costs little. Subclasses may write it by hand.
        """
        run, undo = (
            (self._inverse_transform, self._transform)
            if inverse
            else (self._transform, self._inverse_transform)
        )
        rebuilt = undo(out2, h)[0].requires_grad_(True)
        h = h.requires_grad_(True)
        with torch.enable_grad():
            out, logdet = run(rebuilt, h)
            grad_in, grad_h = torch.autograd.grad(
                (out, logdet), (rebuilt, h), (grad_out2, grad_logdet), allow_unused=True
            )
        grad_h = torch.zeros_like(h) if grad_h is None else grad_h
        return rebuilt.detach(), grad_in, grad_h
