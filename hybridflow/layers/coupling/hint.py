"""Hierarchical invertible neural transport (HINT): recursive affine coupling."""

from __future__ import annotations

import torch
from torch import Tensor

from hybridflow.arguments import positive_int
from hybridflow.autograd import InvertibleModule, Reconstruction
from hybridflow.autograd.checks import check_finite, inside_chain
from hybridflow.deprecation import renamed_arguments, warn_deprecated
from hybridflow.layers.coupling.affine import AffineCoupling
from hybridflow.layers.coupling.base import CouplingBase, check_conditioner_arguments
from hybridflow.layers.coupling.conditioners import Subnet

__all__ = ["HINTCoupling"]


class HINTCoupling(CouplingBase):
    r"""Recursive affine coupling: :math:`x = [x_a, x_b]` (first ``num_features // 2``
    channels, then the rest) and

    .. math::
        f(x) = \left[\, T_a(x_a),\ T_b\!\left(x_b \odot e^{s(x_a, c)} + t(x_a, c)\right) \right]

    where :math:`T_a` and :math:`T_b` are HINT couplings of recursion ``recursion - 1`` on each
    half (the identity at recursion 1, or when a half has a single channel). Recursion 1 is an
    :class:`~hybridflow.layers.AffineCoupling`; recursion ``r`` holds up to :math:`2^r - 1` affine
    sub-couplings, and its Jacobian is dense lower triangular (every channel depends on all
    channels before it), whereas one coupling's is block diagonal with one dense block. The log
    determinant is the sum of the sub-couplings'.

    Inputs are vectors ``(B, D)``, sequences ``(B, C, L)``, images ``(B, C, H, W)`` or volumes
    ``(B, C, D, H, W)`` by ``spatial_dims``; every sub-coupling sees the condition ``c``
    (a vector ``(B, cond_features)`` or a field ``(B, cond_features, *spatial)``).

    Hand-written reconstructing rule: each sub-coupling rebuilds its input and back-propagates
    with one conditioner pass forward and one backward (shared between inversion and VJP), so
    a reconstructing backward costs what plain autograd's does, plus one sub-coupling forward
    each, without storing the sub-couplings' activations.

    Args:
        num_features: channels or features of the input, at least 2.
        recursion: recursion depth ``r >= 1`` (formerly ``depth``, a name now kept for the
            number of flow steps of a network).
        hidden: width of the default conditioners.
        cond_features: channels of the condition; 0 for an unconditional layer.
        spatial_dims: 0 for vectors, 1/2/3 for sequences, images, volumes.
        subnet: optional conditioner factory ``subnet(in_features, out_features)``, called
            once per sub-coupling with its own sizes.
        clamp: the bound of the sub-couplings' log-scales (see
            :class:`~hybridflow.layers.AffineCoupling`).

    Example:
        >>> import torch
        >>> from hybridflow.layers import HINTCoupling
        >>> layer = HINTCoupling(8, recursion=3, hidden=16, cond_features=2)
        >>> sum(1 for _ in layer.sub_couplings())
        7
        >>> x, c = torch.randn(5, 8), torch.randn(5, 2)
        >>> y, logdet = layer(x, c)
        >>> torch.allclose(layer.inverse(y, c)[0], x, atol=1e-6)
        True

    References:
        Kruse, Detommaso, Köthe & Scheichl, "HINT: Hierarchical Invertible Neural Transport
        for Density Estimation and Bayesian Inference", AAAI 2021.
    """

    draws_random_numbers = False

    previous_config_names = ("hybridflow.layers.hint_coupling.HINTCoupling",)

    @renamed_arguments(depth="recursion")
    def __init__(
        self,
        num_features: int,
        recursion: int = 2,
        hidden: int = 64,
        cond_features: int = 0,
        spatial_dims: int = 0,
        subnet: Subnet | None = None,
        clamp: float = 2.0,
    ) -> None:
        super().__init__(num_features, cond_features, spatial_dims)
        check_conditioner_arguments(hidden, subnet, "HINTCoupling")
        self.recursion = positive_int(recursion, "recursion", "HINTCoupling")
        self.coupling = AffineCoupling(
            num_features, hidden, cond_features, spatial_dims, subnet, clamp
        )

        def child(features: int) -> HINTCoupling | None:
            if recursion == 1 or features < 2:
                return None
            return HINTCoupling(
                features, recursion - 1, hidden, cond_features, spatial_dims, subnet, clamp
            )

        self.lower = child(self.split_size)
        self.upper = child(num_features - self.split_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recursion={self.recursion}"

    @property
    def depth(self) -> int:
        """Deprecated name of :attr:`recursion`."""
        warn_deprecated("HINTCoupling.depth", "read HINTCoupling.recursion")
        return self.recursion

    def sub_couplings(self) -> list[AffineCoupling]:
        """The affine sub-couplings, outermost first (pre-order over the recursion tree)."""
        found = [self.coupling]
        for child in (self.lower, self.upper):
            if child is not None:
                found += child.sub_couplings()
        return found

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, cond, "HINTCoupling")
        with inside_chain():  # the sub-couplings skip re-validating what was checked here
            return self._forward(x, cond)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y, cond, "HINTCoupling.inverse")
        check_finite(y, "HINTCoupling.inverse")
        with inside_chain():
            return self._inverse(y, cond)

    def _forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        mixed, logdet = self.coupling(x, cond)
        x_a, z = self._split(mixed)
        y_a, logdet_a = _run(self.lower, x_a, cond, inverse=False)
        y_b, logdet_b = _run(self.upper, z, cond, inverse=False)
        return torch.cat([y_a, y_b], dim=1), logdet + logdet_a + logdet_b

    def _inverse(self, y: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        y_a, y_b = self._split(y)
        x_a, logdet_a = _run(self.lower, y_a, cond, inverse=True)
        z, logdet_b = _run(self.upper, y_b, cond, inverse=True)
        x, logdet = self.coupling.inverse(torch.cat([x_a, z], dim=1), cond)
        return x, logdet + logdet_a + logdet_b

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        r"""Hand-written rule, recursively. Forward pass: the two halves of the output are
        rebuilt by the children (:math:`x_a = T_a^{-1}(y_a)`, :math:`z = T_b^{-1}(y_b)`, with
        their gradients), then the affine sub-coupling rebuilds :math:`x_b` from
        :math:`[x_a, z]` and adds its conditioner's gradient to :math:`\bar x_a`. Inverse pass:
        the same steps in the opposite order. Every sub-coupling runs its conditioner once
        forward and once backward.
        """
        if not inverse:
            out_a, out_b = self._split(output)
            grad_a, grad_b = self._split(grad_output)
            low = _reconstruct(self.lower, out_a, grad_a, grad_logdet, cond, inverse)
            high = _reconstruct(self.upper, out_b, grad_b, grad_logdet, cond, inverse)
            top = self.coupling.reconstruct_vjp(
                torch.cat([low.input, high.input], dim=1),
                torch.cat([low.grad_input, high.grad_input], dim=1),
                grad_logdet,
                cond,
                inverse=False,
            )
            rebuilt, grad_input = top.input, top.grad_input
        else:
            top = self.coupling.reconstruct_vjp(
                output, grad_output, grad_logdet, cond, inverse=True
            )
            mid_a, mid_b = self._split(top.input)
            grad_a, grad_b = self._split(top.grad_input)
            low = _reconstruct(self.lower, mid_a, grad_a, grad_logdet, cond, inverse)
            high = _reconstruct(self.upper, mid_b, grad_b, grad_logdet, cond, inverse)
            rebuilt = torch.cat([low.input, high.input], dim=1)
            grad_input = torch.cat([low.grad_input, high.grad_input], dim=1)
        results = [(self.coupling, top), (self.lower, low), (self.upper, high)]
        return Reconstruction(rebuilt, grad_input, *_gather_grads(self, results))


def _run(
    module: HINTCoupling | None, x: Tensor, cond: Tensor | None, *, inverse: bool
) -> tuple[Tensor, Tensor]:
    """Apply a child (or the identity where there is none) without re-validating."""
    if module is None:
        return x, x.new_zeros(x.shape[0])
    return module._inverse(x, cond) if inverse else module._forward(x, cond)


def _reconstruct(
    module: HINTCoupling | None,
    output: Tensor,
    grad_output: Tensor,
    grad_logdet: Tensor,
    cond: Tensor | None,
    inverse: bool,
) -> Reconstruction:
    if module is None:
        return Reconstruction(output, grad_output, None, ())
    return module.reconstruct_vjp(output, grad_output, grad_logdet, cond, inverse=inverse)


def _gather_grads(
    owner: InvertibleModule, results: list[tuple[InvertibleModule | None, Reconstruction]]
) -> tuple[Tensor | None, tuple[Tensor | None, ...]]:
    """Sum the parts' condition gradients and lay their parameter gradients out in the order
    of ``owner.parameters()``."""
    grad_cond: Tensor | None = None
    by_param: dict[int, Tensor] = {}
    for module, result in results:
        if result.grad_cond is not None:
            grad_cond = result.grad_cond if grad_cond is None else grad_cond + result.grad_cond
        if module is None:
            continue
        for param, grad in zip(module.parameters(), result.grad_params, strict=True):
            if grad is not None:  # a conditioner shared by sub-couplings accumulates
                previous = by_param.get(id(param))
                by_param[id(param)] = grad if previous is None else previous + grad
    return grad_cond, tuple(by_param.get(id(p)) for p in owner.parameters())
