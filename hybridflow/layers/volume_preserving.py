"""The base of the reshaping layers: fixed orthogonal maps, whose VJP is their inverse."""

from __future__ import annotations

from torch import Tensor

from hybridflow.autograd import InvertibleModule, Reconstruction
from hybridflow.autograd.checks import check_finite
from hybridflow.errors import InputError, InputTypeError

__all__ = ["VolumePreserving", "check_field"]


def check_field(x: object, where: str) -> None:
    """Refuse anything but a sequence ``(B, C, L)``, image ``(B, C, H, W)`` or volume
    ``(B, C, D, H, W)`` tensor (the inputs of the squeezes)."""
    if not isinstance(x, Tensor):
        raise InputTypeError(f"expected a torch.Tensor, got {type(x).__name__}", where=(where,))
    if x.dim() not in (3, 4, 5):
        raise InputError(
            f"expected (B, C, L), (B, C, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}",
            where=(where,),
        )


class VolumePreserving(InvertibleModule):
    r"""A fixed linear orthogonal map :math:`y = Qx` with no parameters and no condition.

    Its log determinant is 0, and since :math:`Q^{-1} = Q^\top`, the vector-Jacobian product
    is the inverse applied to the gradient: :math:`\bar x = Q^\top \bar y = Q^{-1} \bar y`.
    The reconstructing rule is therefore written once, here: two inverse maps, one of the
    output and one of its gradient. Permutations (:class:`~hybridflow.layers.Permute`,
    :class:`~hybridflow.layers.Reverse`, :class:`~hybridflow.layers.Squeeze`) and the
    orthonormal Haar transform (:class:`~hybridflow.layers.HaarSqueeze`) are such maps.

    A subclass writes :meth:`_check` (the input it accepts), :meth:`_map` and
    :meth:`_unmap` (its inverse); it must be orthogonal, or the rule would be wrong.
    """

    draws_random_numbers = False

    def _check(self, x: Tensor, where: str) -> None:
        """Raise ``InputError``/``InputTypeError`` naming ``where`` for an input it cannot map."""
        raise NotImplementedError

    def _map(self, x: Tensor) -> Tensor:
        """:math:`Qx`."""
        raise NotImplementedError

    def _unmap(self, y: Tensor) -> Tensor:
        """:math:`Q^{-1} y = Q^\\top y`."""
        raise NotImplementedError

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, type(self).__name__)
        return self._map(x), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        where = f"{type(self).__name__}.inverse"
        self._check(y, where)
        check_finite(y, where)
        return self._unmap(y), y.new_zeros(y.shape[0])

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        """Hand-written rule: the map is orthogonal, so its VJP is its inverse (of the pass)."""
        undo = self._map if inverse else self._unmap
        return Reconstruction(undo(output), undo(grad_output), None, ())
