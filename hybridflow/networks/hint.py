"""HINT network: recursive couplings between fixed permutations, conditional or not."""

from __future__ import annotations

from typing import Literal, get_args

from hybridflow.arguments import integer, number, one_of, positive_int
from hybridflow.autograd import InvertibleModule, Mode
from hybridflow.autograd.auto_mode import DEFAULT_STORE_LIMIT
from hybridflow.layers.coupling import HINTCoupling, Subnet, check_subnet
from hybridflow.layers.permutation import Permute, Reverse
from hybridflow.networks.base import Network
from hybridflow.networks.steps import offset_seed

__all__ = ["HINT", "PermutationKind"]

PermutationKind = Literal["random", "reverse"]
"""The channel mixing before each block: a seeded random :class:`~hybridflow.layers.Permute`
or :class:`~hybridflow.layers.Reverse`."""


class HINT(Network):
    r"""A stack of ``depth`` blocks, each a fixed channel permutation followed by a
    :class:`~hybridflow.layers.HINTCoupling` of recursion depth ``recursion``:
    :math:`f = (T_n \circ P_n) \circ \dots \circ (T_1 \circ P_1)`.

    The permutations make every channel take every role (transformed, conditioning) across
    blocks; the recursive couplings give each block a dense triangular Jacobian. The log
    determinant is the sum of the couplings' (permutations have none).

    Conditional with ``cond_features > 0``: every sub-coupling's conditioner also reads the
    condition ``c``, a vector ``(B, cond_features)``, or for images and volumes a field
    ``(B, cond_features, *spatial)`` of the input's spatial shape, so the network models
    :math:`p(x \mid c)` (a posterior, with ``c`` the output of a summary network).

    Inputs are vectors ``(B, D)`` (``spatial_dims=0``), or channels of sequences, images or
    volumes (``spatial_dims`` 1/2/3). Runs as one :class:`~hybridflow.Chain`: in ``"invert"``
    mode the memory kept for backward does not grow with ``depth`` or ``recursion``.

    Args:
        num_features: features ``D`` (or channels ``C``) of the input, at least 2.
        depth: the number of blocks.
        recursion: the recursion depth of each :class:`~hybridflow.layers.HINTCoupling`.
        hidden: width of the conditioners.
        cond_features: features of the condition; 0 for an unconditional network.
        spatial_dims: 0 for vectors, 1/2/3 for sequences, images, volumes.
        mode: ``"invert"`` (memory flat in depth), ``"store"`` (plain autograd) or ``"auto"``
            (store while small: :class:`~hybridflow.Chain`); the attribute :attr:`mode` reads and sets the network's chain.
        permutation: ``"random"`` (seeded :class:`~hybridflow.layers.Permute`) or
            ``"reverse"`` (:class:`~hybridflow.layers.Reverse`).
        subnet: optional conditioner factory ``subnet(in_features, out_features)``.
        clamp: bound of the sub-couplings' log-scales.
        seed: seed of the random permutations (``None``: torch's global RNG).
        store_limit: in ``"auto"`` mode, store while plain autograd keeps at most this many
            bytes (or a size such as ``"512MiB"``), invert otherwise.

    Example:
        >>> import torch
        >>> from hybridflow.networks import HINT
        >>> flow = HINT(6, depth=4, recursion=2, hidden=32, cond_features=3, seed=0)
        >>> x, c = torch.randn(10, 6), torch.randn(10, 3)
        >>> z, logdet = flow(x, c)
        >>> (0.5 * z.pow(2).sum(1) - logdet).mean().backward()
        >>> torch.allclose(flow.inverse(z.detach(), c)[0], x, atol=1e-5)
        True

    References:
        Kruse, Detommaso, Köthe & Scheichl, "HINT: Hierarchical Invertible Neural Transport
        for Density Estimation and Bayesian Inference", AAAI 2021.
    """

    draws_random_numbers = False

    def __init__(
        self,
        num_features: int,
        depth: int = 4,
        recursion: int = 2,
        hidden: int = 64,
        cond_features: int = 0,
        spatial_dims: int = 0,
        mode: Mode = "invert",
        *,
        permutation: PermutationKind = "random",
        subnet: Subnet | None = None,
        clamp: float = 2.0,
        seed: int | None = None,
        store_limit: int | float | str = DEFAULT_STORE_LIMIT,
    ) -> None:
        integer(num_features, "num_features", "HINT", minimum=2)
        for name, value in (("depth", depth), ("recursion", recursion), ("hidden", hidden)):
            positive_int(value, name, "HINT")
        integer(cond_features, "cond_features", "HINT", minimum=0)
        one_of(spatial_dims, "spatial_dims", "HINT", (0, 1, 2, 3))
        super().__init__(num_features, cond_features, spatial_dims, mode, store_limit)
        one_of(permutation, "permutation", "HINT", get_args(PermutationKind))
        check_subnet(subnet, "HINT")
        number(clamp, "clamp", "HINT", minimum=0, open_low=True)
        integer(seed, "seed", "HINT", minimum=0, optional=True)
        self.depth = depth
        blocks: list[InvertibleModule] = []
        for i in range(depth):
            if permutation == "random":
                blocks.append(Permute(num_features, seed=offset_seed(seed, i)))
            else:
                blocks.append(Reverse(num_features))
            blocks.append(
                HINTCoupling(
                    num_features, recursion, hidden, cond_features, spatial_dims, subnet, clamp
                )
            )
        self.flow = self._chain(*blocks)

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, depth={self.depth}, "
            f"cond_features={self.cond_features}, spatial_dims={self.spatial_dims}, "
            f"mode={self.mode!r}"
        )
