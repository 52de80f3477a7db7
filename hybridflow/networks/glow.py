"""Multiscale Glow for images and volumes, conditional or not, as one reconstructing chain."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from hybridflow.arguments import integer, number, one_of, positive_int
from hybridflow.autograd import Chain, InvertibleModule, Mode, TileSize
from hybridflow.autograd.auto_mode import DEFAULT_STORE_LIMIT
from hybridflow.autograd.checks import (
    autocast_condition,
    check_condition_like,
    check_finite,
    check_input,
    required_condition,
)
from hybridflow.autograd.tiling import check_tile_size
from hybridflow.deprecation import renamed_arguments, warn_deprecated
from hybridflow.errors import InputError
from hybridflow.layers.coupling import AffineCoupling, Subnet, check_subnet
from hybridflow.layers.haar import HaarSqueeze
from hybridflow.layers.inverse import Inverse
from hybridflow.layers.multiscale import ResizeCondition, Split
from hybridflow.layers.squeeze import Squeeze
from hybridflow.networks.base import Network
from hybridflow.networks.steps import glow_step, offset_seed

__all__ = ["Glow", "SqueezeKind"]

SqueezeKind = Literal["pixel", "haar"]
"""How each scale halves the resolution: pixel shuffle (:class:`~hybridflow.layers.Squeeze`)
or the orthonormal Haar transform (:class:`~hybridflow.layers.HaarSqueeze`)."""


class Glow(Network):
    r"""Multiscale Glow: ``levels`` scales, each squeeze -> ``depth`` flow steps -> split.

    At scale :math:`k` the input is squeezed (space to depth, :math:`2^d` times the channels
    at half the resolution), goes through ``depth`` steps of
    :class:`~hybridflow.layers.ActNorm` -> :class:`~hybridflow.layers.InvConv1x1` ->
    :class:`~hybridflow.layers.AffineCoupling`, and then half of its channels are factored
    out while the other half continues to scale :math:`k + 1` (the last scale factors out
    nothing). The log determinant is the sum over all steps.

    **Latent layout.** The latent ``z`` has the shape of the input: each scale unsqueezes what
    it returns, so scale :math:`k`'s output is
    :math:`\mathrm{unsqueeze}([\,\text{scale}_{k+1}\text{ output},\ \text{factored-out part}_k\,])`.
    :meth:`split_latent` returns the per-scale parts and :meth:`merge_latent` puts them back.
    For a standard normal base density the layout does not matter:
    :math:`\log p(x) = -\tfrac12 \|z\|^2 - \tfrac{n}{2}\log 2\pi + \log\det`.

    **One chain.** The scales nest (:class:`~hybridflow.layers.Split` wraps the next scale), so
    the whole network is one :class:`~hybridflow.Chain`: in ``"invert"`` mode the training
    step keeps only the latent and the condition for backward, whatever ``depth`` and
    ``levels``, and every layer uses its hand-written reconstructing rule.

    **Condition.** With ``cond_features > 0`` every coupling is conditional. The condition is
    a vector ``(B, cond_features)`` (broadcast over space) or a field
    ``(B, cond_features, *S_c)`` of any spatial size ``S_c``, which each scale resizes to its
    own resolution by adaptive average pooling (:class:`~hybridflow.layers.ResizeCondition`).
    Condition gradients flow back to whatever produced it (a summary network).

    Inputs are images ``(B, C, H, W)`` (``spatial_dims=2``), volumes ``(B, C, D, H, W)``
    (``spatial_dims=3``) or sequences ``(B, C, L)`` (``spatial_dims=1``); every spatial size
    must be divisible by :math:`2^{\text{levels}}`.

    Args:
        num_features: channels ``C`` of the input (formerly ``in_channels``).
        levels: the number of scales.
        depth: flow steps per scale.
        hidden: width of the coupling conditioners.
        cond_features: channels of the condition; 0 for an unconditional flow (formerly
            ``cond_channels``).
        spatial_dims: 1, 2 or 3.
        mode: ``"invert"`` (memory flat in depth and levels), ``"store"`` (plain autograd)
            or ``"auto"`` (store while small: :class:`~hybridflow.Chain`); the attribute :attr:`mode` reads and sets every chain of the network.
        squeeze: ``"pixel"`` (Glow's space-to-depth) or ``"haar"`` (orthonormal wavelets:
            the factored-out channels are then the finest detail bands).
        subnet: optional conditioner factory ``subnet(in_features, out_features)`` replacing
            the default convolutional network (``hidden`` is then unused); called once per
            coupling, with that scale's sizes.
        clamp: bound of the couplings' log-scales.
        seed: seed of the 1x1 convolutions' initial rotations (``None``: torch's global RNG).
        store_limit: in ``"auto"`` mode, store while plain autograd keeps at most this many
            bytes (or a size such as ``"512MiB"``), invert otherwise.
        tile_size: run the couplings tile by tile over space, cores of this edge at every
            scale, in the forward of ``"invert"`` mode, in sampling and while reconstructing
            (see :class:`~hybridflow.Chain`): same results, working set of one tile.

    Example:
        >>> import torch
        >>> from hybridflow.networks import Glow
        >>> flow = Glow(3, levels=2, depth=2, hidden=16, cond_features=1)
        >>> x, c = torch.randn(4, 3, 16, 16), torch.randn(4, 1, 16, 16)
        >>> z, logdet = flow(x, c)
        >>> z.shape == x.shape, [tuple(p.shape) for p in flow.split_latent(z)]
        (True, [(4, 6, 8, 8), (4, 24, 4, 4)])
        >>> loss = (0.5 * z.pow(2).flatten(1).sum(1) - logdet).mean()
        >>> loss.backward()  # reconstructs every activation: memory flat in depth
        >>> torch.allclose(flow.inverse(z.detach(), c)[0], x, atol=1e-4)
        True

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018;
        Dinh et al., "Density estimation using Real NVP", 2017 (multiscale architecture);
        Orozco et al., "InvertibleNetworks.jl: A Julia package for scalable normalizing
        flows", 2023 (arXiv:2312.13480).
    """

    draws_random_numbers = False

    @renamed_arguments(in_channels="num_features", cond_channels="cond_features")
    def __init__(
        self,
        num_features: int,
        levels: int = 3,
        depth: int = 8,
        hidden: int = 64,
        cond_features: int = 0,
        spatial_dims: int = 2,
        mode: Mode = "invert",
        *,
        squeeze: SqueezeKind = "pixel",
        subnet: Subnet | None = None,
        clamp: float = 2.0,
        seed: int | None = None,
        store_limit: int | float | str = DEFAULT_STORE_LIMIT,
        tile_size: TileSize | None = None,
    ) -> None:
        positive_int(num_features, "num_features", "Glow")
        for name, value in (("levels", levels), ("depth", depth), ("hidden", hidden)):
            positive_int(value, name, "Glow")
        integer(cond_features, "cond_features", "Glow", minimum=0)
        one_of(spatial_dims, "spatial_dims", "Glow", (1, 2, 3))
        super().__init__(num_features, cond_features, spatial_dims, mode, store_limit)
        self.levels, self.depth, self.hidden = levels, depth, hidden
        one_of(squeeze, "squeeze", "Glow", get_args(SqueezeKind))
        check_subnet(subnet, "Glow")
        number(clamp, "clamp", "Glow", minimum=0, open_low=True)
        integer(seed, "seed", "Glow", minimum=0, optional=True)
        self.squeeze_kind: SqueezeKind = squeeze
        self.clamp = clamp
        self._subnet = subnet
        self._seed = seed
        self.tile_size = check_tile_size(tile_size, "Glow")
        self.flow = self._scale(num_features, 0)

    def _squeeze_layer(self) -> Squeeze | HaarSqueeze:
        return Squeeze(2) if self.squeeze_kind == "pixel" else HaarSqueeze()

    def _scale(self, channels: int, level: int) -> Chain:
        """Scale ``level``: squeeze, steps, split off half (nesting the next scale), unsqueeze."""
        width = channels * 2**self.spatial_dims
        steps: list[InvertibleModule] = []
        for step in range(self.depth):
            steps += glow_step(
                width,
                offset_seed(self._seed, level * self.depth + step),
                lambda: AffineCoupling(
                    width,
                    self.hidden,
                    self.cond_features,
                    self.spatial_dims,
                    subnet=self._subnet,
                    clamp=self.clamp,
                ),
            )
        body: InvertibleModule = self._chain(*steps, tile_size=self.tile_size)
        if self.cond_features:
            body = ResizeCondition(body)
        layers: list[InvertibleModule] = [self._squeeze_layer(), body]
        if level + 1 < self.levels:
            layers.append(Split(self._scale(width // 2, level + 1), split_size=width // 2))
        layers.append(Inverse(self._squeeze_layer()))
        return self._chain(*layers)

    @property
    def in_channels(self) -> int:
        """Deprecated name of :attr:`num_features`."""
        warn_deprecated("Glow.in_channels", "read Glow.num_features")
        return self.num_features

    @property
    def cond_channels(self) -> int:
        """Deprecated name of :attr:`cond_features`."""
        warn_deprecated("Glow.cond_channels", "read Glow.cond_features")
        return self.cond_features

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, levels={self.levels}, depth={self.depth}, "
            f"hidden={self.hidden}, cond_features={self.cond_features}, "
            f"spatial_dims={self.spatial_dims}, mode={self.mode!r}, squeeze={self.squeeze_kind!r}"
        )

    # -- validation ------------------------------------------------------------------------
    def _check(self, x: Tensor, cond: object, where: str) -> Tensor | None:
        """Validate the input and the condition; return the condition the flow should see."""
        check_input(x, where, self.num_features, self.spatial_dims, self)
        sizes = tuple(x.shape[2:])
        if any(s % 2**self.levels for s in sizes):
            raise InputError(
                f"spatial sizes {sizes} must be divisible by 2**levels = {2**self.levels}",
                where=(where,),
            )
        if not self.cond_features:
            return None  # an unconditional module ignores the condition a chain passes it
        cond = required_condition(cond, where, self.cond_features, built="flow")
        if (
            cond.dim() not in (2, x.dim())
            or cond.shape[0] != x.shape[0]
            or cond.shape[1] != self.cond_features
        ):
            raise InputError(
                f"condition has shape {tuple(cond.shape)}, expected a vector "
                f"(B={x.shape[0]}, {self.cond_features}) or a field (B={x.shape[0]}, "
                f"{self.cond_features}, {', '.join(['*'] * self.spatial_dims)}) of any size",
                where=(where,),
            )
        cond = autocast_condition(cond, x)  # a summary's bfloat16 condition under autocast
        check_condition_like(cond, x, where)
        check_finite(cond, f"{where} (condition)")
        return cond

    # -- latent layout ---------------------------------------------------------------------
    def split_latent(self, z: Tensor) -> list[Tensor]:
        """The per-scale parts of a latent ``z`` (shape of the input), finest scale first.

        Part ``k < levels - 1`` is what scale ``k`` factored out,
        ``(B, C 2^{d(k+1)} / 2^{k+1}, *S / 2^{k+1})``; the last part is the coarsest scale's
        output, ``(B, C 2^{dL} / 2^{L-1}, *S / 2^L)``. A fixed rearrangement: no parameters.
        """
        check_input(z, "Glow.split_latent", self.num_features, self.spatial_dims)
        squeeze = self._squeeze_layer()
        parts = []
        h = z
        for level in range(self.levels):
            h = squeeze.squeeze(h)
            if level + 1 == self.levels:
                parts.append(h)
            else:
                keep = h.shape[1] // 2
                parts.append(h[:, keep:])
                h = h[:, :keep]
        return parts

    def merge_latent(self, parts: list[Tensor]) -> Tensor:
        """The latent whose :meth:`split_latent` is ``parts`` (the inverse rearrangement)."""
        if not isinstance(parts, (list, tuple)) or len(parts) != self.levels:
            raise InputError(
                f"expected a list of {self.levels} parts (one per scale), "
                f"got {type(parts).__name__} of length {len(parts)}",
                where=("Glow.merge_latent",),
            )
        squeeze = self._squeeze_layer()
        h = squeeze.unsqueeze(parts[-1])
        for part in reversed(parts[:-1]):
            if part.shape != h.shape:
                raise InputError(
                    f"a part of shape {tuple(part.shape)} does not fit the "
                    f"next coarser scale, which gives {tuple(h.shape)}",
                    where=("Glow.merge_latent",),
                )
            h = squeeze.unsqueeze(torch.cat([h, part], dim=1))
        return h
