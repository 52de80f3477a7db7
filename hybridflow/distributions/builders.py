"""``coupling_flow``: a ready transform for vector parameters, conditional or not."""

from __future__ import annotations

import math
from typing import Literal, get_args

from hybridflow.arguments import integer, number, one_of, positive_int
from hybridflow.autograd import Chain, InvertibleModule, Mode
from hybridflow.deprecation import renamed_arguments
from hybridflow.distributions.support import Support, support_bounds
from hybridflow.layers.actnorm import ActNorm
from hybridflow.layers.coupling import (
    SPLINE_BOUND,
    AffineCoupling,
    ConditionalAffine,
    ConditionalSpline,
    SplineCoupling,
)
from hybridflow.layers.support import Bounded
from hybridflow.networks.steps import glow_step, offset_seed

__all__ = ["CouplingKind", "coupling_flow"]

CouplingKind = Literal["affine", "spline"]
"""The elementwise map of each coupling: affine (Real NVP / Glow) or rational-quadratic
spline (Neural Spline Flows)."""


@renamed_arguments(features="num_features")
def coupling_flow(
    num_features: int,
    cond_features: int = 0,
    *,
    depth: int = 5,
    hidden: int = 64,
    coupling: CouplingKind = "spline",
    bins: int = 8,
    bound: float = SPLINE_BOUND,
    mode: Mode = "auto",
    seed: int | None = 0,
    support: Support | None = None,
) -> Chain:
    r"""A normalizing transform for vectors ``(B, num_features)``: ``depth`` steps of
    :class:`~hybridflow.layers.ActNorm` -> :class:`~hybridflow.layers.InvConv1x1` ->
    coupling, as one :class:`~hybridflow.Chain`.

    ActNorm's data-dependent initialisation standardises the parameters from the first
    training batch; the learned 1x1 convolution (a dense invertible ``D x D``
    matrix) mixes the entries between couplings so that every entry is transformed (odd ``D``
    splits into ``D // 2`` pass-through and ``D - D // 2`` transformed entries). The couplings
    start as the identity, so an untrained flow is the base distribution pushed through the
    ActNorm layers.

    **One parameter.** With ``num_features=1`` there is nothing to couple: each step is ActNorm
    -> :class:`~hybridflow.layers.ConditionalSpline` (or
    :class:`~hybridflow.layers.ConditionalAffine`), an elementwise map whose parameters come
    from the condition alone (learned constants without one).

    **Bounded parameters.** With ``support`` given (a box prior, say), the chain starts with
    :class:`~hybridflow.layers.Bounded`, which maps the support onto :math:`\mathbb{R}^D`
    (logit for boxes, inverse softplus for half lines): the flow's density lives on the
    support and its samples never leak past the prior.

    Args:
        num_features: size ``D`` of a parameter vector, at least 1 (formerly ``features``).
        cond_features: size of the condition (summary output); 0 for an unconditional flow.
        depth: number of flow steps.
        hidden: width of the couplings' conditioners.
        coupling: ``"spline"`` (the default, as in every example) or ``"affine"`` (see
            :data:`CouplingKind`).
        bins: spline bins (``"spline"`` only).
        bound: the spline's interval :math:`[-B, B]` in standardised units (identity
            outside; default :data:`~hybridflow.layers.SPLINE_BOUND`, shared with
            :class:`~hybridflow.layers.SplineCoupling`); ``"spline"`` only.
        mode: ``"auto"`` (default: plain autograd while what it keeps is at most 64 MiB, as
            for the posteriors of a few parameters at usual batch sizes, where inversion
            would only add compute; inversion beyond), ``"invert"`` (memory flat in depth)
            or ``"store"`` (plain autograd); see :class:`~hybridflow.Chain`.
        seed: seed of the 1x1 convolutions' initial rotations (``None``: the global RNG).
        support: the parameters' support: a prior (``task.prior``), a torch constraint or a
            pair ``(lower, upper)`` (see :data:`~hybridflow.distributions.support.Support`);
            ``None`` (or an unbounded support) for all of :math:`\mathbb{R}^D`.

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
    positive_int(num_features, "num_features", where)
    integer(cond_features, "cond_features", where, minimum=0)
    for name, value in (("depth", depth), ("hidden", hidden)):
        positive_int(value, name, where)
    one_of(coupling, "coupling", where, get_args(CouplingKind))
    if coupling == "spline":
        integer(bins, "bins", where, minimum=2)
        number(bound, "bound", where, minimum=0, open_low=True)
    one_of(mode, "mode", where, get_args(Mode))
    integer(seed, "seed", where, minimum=0, optional=True)
    layers: list[InvertibleModule] = []
    if support is not None:
        lower, upper = support_bounds(support, num_features)
        if any(math.isfinite(b) for b in (*lower, *upper)):
            layers.append(Bounded(lower, upper))
    for step in range(depth):
        block: InvertibleModule
        if num_features == 1:
            block = (
                ConditionalAffine(1, cond_features, hidden)
                if coupling == "affine"
                else ConditionalSpline(1, cond_features, hidden, bins=bins, bound=bound)
            )
            layers += [ActNorm(1), block]
            continue
        if coupling == "affine":
            block = AffineCoupling(num_features, hidden, cond_features)
        else:
            block = SplineCoupling(num_features, hidden, cond_features, bins=bins, bound=bound)
        # the coupling is built before the step's ActNorm and 1x1 convolution, as it always was
        layers += glow_step(num_features, offset_seed(seed, step), lambda built=block: built)
    return Chain(*layers, mode=mode)
