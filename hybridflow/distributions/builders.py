"""``coupling_flow``: a ready transform for vector parameters, conditional or not."""

from __future__ import annotations

from typing import Literal, get_args

from hybridflow.arguments import integer, number, one_of, positive_int
from hybridflow.autograd.chain import Chain, Mode
from hybridflow.autograd.module import InvertibleModule
from hybridflow.layers.actnorm import ActNorm
from hybridflow.layers.conv1x1 import InvConv1x1
from hybridflow.layers.coupling import AffineCoupling
from hybridflow.layers.spline_coupling import SplineCoupling

__all__ = ["CouplingKind", "coupling_flow"]

CouplingKind = Literal["affine", "spline"]
"""The elementwise map of each coupling: affine (Real NVP / Glow) or rational-quadratic
spline (Neural Spline Flows)."""


def coupling_flow(
    features: int,
    cond_features: int = 0,
    *,
    depth: int = 4,
    hidden: int = 64,
    coupling: CouplingKind = "affine",
    bins: int = 8,
    bound: float = 4.0,
    mode: Mode = "invert",
    seed: int | None = 0,
) -> Chain:
    r"""A normalizing transform for vectors ``(B, features)``: ``depth`` steps of
    :class:`~hybridflow.layers.ActNorm` -> :class:`~hybridflow.layers.InvConv1x1` ->
    coupling, as one :class:`~hybridflow.Chain`.

    ActNorm's data-dependent initialisation standardises the parameters from the first
    training batch; the learned 1x1 convolution (a dense invertible ``features x features``
    matrix) mixes the entries between couplings so that every entry is transformed. The
    couplings start as the identity, so an untrained flow is the base distribution pushed
    through the ActNorm layers.

    Args:
        features: size ``D`` of a parameter vector, at least 2.
        cond_features: size of the condition (summary output); 0 for an unconditional flow.
        depth: number of steps.
        hidden: width of the couplings' conditioners.
        coupling: ``"affine"`` or ``"spline"`` (see :data:`CouplingKind`).
        bins: spline bins (``"spline"`` only).
        bound: the spline's interval :math:`[-B, B]` in standardised units (identity
            outside); ``"spline"`` only.
        mode: ``"invert"`` (memory flat in depth) or ``"store"`` (plain autograd).
        seed: seed of the 1x1 convolutions' initial rotations (``None``: the global RNG).

    Returns:
        The chain, whose ``forward(theta, cond)`` maps parameters to latents.

    Example:
        >>> import torch
        >>> from hybridflow.distributions import coupling_flow
        >>> chain = coupling_flow(4, cond_features=3, depth=2, hidden=16)
        >>> z, logdet = chain(torch.randn(8, 4), torch.randn(8, 3))
        >>> tuple(z.shape), tuple(logdet.shape)
        ((8, 4), (8,))

    References:
        Kingma & Dhariwal, "Glow", 2018; Durkan et al., "Neural Spline Flows", 2019.
    """
    where = "coupling_flow"
    integer(features, "features", where, minimum=2)
    integer(cond_features, "cond_features", where, minimum=0)
    positive_int(depth, "depth", where)
    positive_int(hidden, "hidden", where)
    one_of(coupling, "coupling", where, get_args(CouplingKind))
    if coupling == "spline":
        integer(bins, "bins", where, minimum=2)
        number(bound, "bound", where, minimum=0, open_low=True)
    one_of(mode, "mode", where, get_args(Mode))
    integer(seed, "seed", where, minimum=0, optional=True)
    layers: list[InvertibleModule] = []
    for step in range(depth):
        if coupling == "affine":
            block: InvertibleModule = AffineCoupling(features, hidden, cond_features)
        else:
            block = SplineCoupling(features, hidden, cond_features, bins=bins, bound=bound)
        layers += [
            ActNorm(features),
            InvConv1x1(features, seed=None if seed is None else seed + step),
            block,
        ]
    return Chain(*layers, mode=mode)
