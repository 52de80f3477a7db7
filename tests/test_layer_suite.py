"""One invariant suite over every layer and network, x dimensionality x condition.

Every case is checked in float64 with parameters randomised away from their (often identity)
initialisation: round trips both ways, log determinants against ``slogdet`` of the autograd
Jacobian, reconstructing (``"invert"``) gradients against plain autograd (``"store"``) for the
input, the condition and every parameter, Taylor tests of both passes (input, condition and
a parameter direction), and ``torch.autograd.gradcheck`` of the reconstructing chain.

To add a layer, add one line to ``CASES``: ``*cases(name, build, channels, dims, conds)``.
Layer-specific tests (spline tails and knots, Haar values, ...) follow the suite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pytest
import torch
from torch import Tensor, nn

import hybridflow as hf
from hybridflow.layers import (
    ActNorm,
    AdditiveCoupling,
    Affine,
    AffineCoupling,
    HaarSqueeze,
    HINTCoupling,
    InvConv1x1,
    Inverse,
    LeakyReLU,
    Permute,
    ResizeCondition,
    Reverse,
    SplineCoupling,
    Split,
    Squeeze,
)
from hybridflow.networks import HINT, Glow
from hybridflow.testing import (
    check_inverse,
    check_logdet,
    check_reconstruction_gradients,
    check_taylor,
)

Cond = Literal["none", "vector", "field", "coarse"]
BATCH = 2
SPATIAL = {0: (), 1: (4,), 2: (2, 2), 3: (2, 2, 2)}
ALL_DIMS = (0, 1, 2, 3)
FIELDS = (1, 2, 3)
# Largest Taylor step: the inverse passes of randomised multiscale flows curve strongly, and
# at h = 1e-2 their first-order errors are still dominated by the second-order term.
TAYLOR_H0 = 1e-3
_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def smooth_subnet(spatial_dims: int, hidden: int = 4) -> Callable[[int, int], nn.Module]:
    """A tanh conditioner: Taylor tests need a C^2 map (ReLU kinks would break them)."""

    def build(in_features: int, out_features: int) -> nn.Module:
        if spatial_dims == 0:
            return nn.Sequential(
                nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, out_features)
            )
        conv = _CONV[spatial_dims]
        return nn.Sequential(
            conv(in_features, hidden, 3, padding=1),
            nn.Tanh(),
            conv(hidden, out_features, 3, padding=1),
        )

    return build


def away_from_zero(shape: tuple[int, ...]) -> Tensor:
    """Inputs at least 0.3 from 0, so no finite difference crosses LeakyReLU's kink."""
    z = torch.randn(shape)
    return torch.sign(z) * (0.3 + z.abs())


@dataclass(frozen=True)
class Case:
    """A module to check: how to build it and the input (and condition) to check it at."""

    name: str
    build: Callable[[], hf.InvertibleModule]
    shape: tuple[int, ...]
    cond_shape: tuple[int, ...] | None = None
    sample: Callable[[tuple[int, ...]], Tensor] = torch.randn
    scale: float = 1.0

    def __str__(self) -> str:
        return self.name


def _cond_shape(cond: Cond, features: int, spatial: tuple[int, ...]) -> tuple[int, ...] | None:
    return {
        "none": None,
        "vector": (BATCH, features),
        "field": (BATCH, features, *spatial),
        "coarse": (BATCH, features, *(2 * s for s in spatial)),  # resized by the module
    }[cond]


def cases(
    name: str,
    build: Callable[[int, int], hf.InvertibleModule],
    channels: int,
    dims: tuple[int, ...] = ALL_DIMS,
    conds: tuple[Cond, ...] = ("none",),
    *,
    spatial: dict[int, tuple[int, ...]] = SPATIAL,
    cond_features: int = 2,
    **options,
) -> list[Case]:
    """``build(spatial_dims, cond_features) -> module`` checked at every dimensionality in
    ``dims`` and every condition kind in ``conds`` (fields only where there is space)."""
    found = []
    for d in dims:
        for cond in conds:
            if cond in ("field", "coarse") and d == 0:
                continue
            features = 0 if cond == "none" else cond_features
            found.append(
                Case(
                    f"{name}-{d}d-{cond}",
                    lambda d=d, f=features: build(d, f),
                    (BATCH, channels, *spatial[d]),
                    _cond_shape(cond, features, spatial[d]),
                    **options,
                )
            )
    return found


def _coupling(cls, features: int = 4, **kw):
    return lambda d, c: cls(
        features, cond_features=c, spatial_dims=d, subnet=smooth_subnet(d), **kw
    )


def _split(d: int, c: int) -> hf.InvertibleModule:
    inner = hf.Chain(
        ActNorm(2), AffineCoupling(2, cond_features=c, spatial_dims=d, subnet=smooth_subnet(d))
    )
    return Split(inner, split_size=2)


def _glow(d: int, c: int, **kw) -> hf.InvertibleModule:
    return Glow(
        1, levels=2, depth=1, cond_channels=c, spatial_dims=d, subnet=smooth_subnet(d), **kw
    )


def _hint(d: int, c: int) -> hf.InvertibleModule:
    return HINT(4, depth=2, recursion=2, cond_features=c, spatial_dims=d, subnet=smooth_subnet(d))


ALL_CONDS: tuple[Cond, ...] = ("none", "vector", "field")
CASES: list[Case] = [
    *cases("ActNorm", lambda d, c: ActNorm(3), 3),
    *cases("InvConv1x1", lambda d, c: InvConv1x1(3), 3),
    *cases("Affine", lambda d, c: Affine(3), 3),
    *cases("LeakyReLU", lambda d, c: LeakyReLU(0.3), 3, sample=away_from_zero),
    *cases("Permute", lambda d, c: Permute(5, seed=3), 5),
    *cases("Reverse", lambda d, c: Reverse(5), 5),
    *cases("Squeeze", lambda d, c: Squeeze(2), 2, FIELDS),
    *cases("HaarSqueeze", lambda d, c: HaarSqueeze(), 2, FIELDS),
    *cases("Inverse-Squeeze", lambda d, c: Inverse(Squeeze(2)), 2**3, (3,)),
    *cases("AffineCoupling", _coupling(AffineCoupling), 4, conds=ALL_CONDS),
    *cases("AdditiveCoupling", _coupling(AdditiveCoupling), 4, conds=ALL_CONDS),
    *cases(
        "SplineCoupling", _coupling(SplineCoupling, bins=3, bound=1.5), 4, conds=ALL_CONDS, scale=2
    ),
    *cases("HINTCoupling", _coupling(HINTCoupling, depth=2), 4, conds=ALL_CONDS),
    *cases("HINTCoupling-r3", _coupling(HINTCoupling, 7, depth=3), 7, (0,), ("none", "vector")),
    *cases("Split", _split, 3, FIELDS, ("none", "field")),
    *cases(
        "ResizeCondition",
        lambda d, c: ResizeCondition(_coupling(AffineCoupling)(d, c)),
        4,
        FIELDS,
        ("vector", "coarse"),
    ),
    *cases(
        "Glow",
        _glow,
        1,
        (1, 2, 3),
        ("none", "vector", "coarse"),
        spatial={1: (8,), 2: (4, 4), 3: (4, 4, 4)},
    ),
    *cases(
        "Glow-haar",
        lambda d, c: _glow(d, c, squeeze="haar"),
        1,
        (2,),
        ("field",),
        spatial={2: (4, 4)},
    ),
    *cases("HINT", _hint, 4, (0, 2), ("none", "vector", "field")),
]


# -- helpers ---------------------------------------------------------------------------------
def randomize(module: nn.Module, scale: float = 0.5) -> nn.Module:
    """Move every parameter away from its initialisation (zero-initialised conditioners would
    make couplings the identity and hide mistakes); mark data-initialised layers done.

    Weights get noise of standard deviation ``scale / sqrt(fan_in)``, so conditioner outputs
    stay of order ``scale`` at any width and kernel size; vectors and scalars get ``scale``.
    """
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.dim() >= 2 else 1
            p.add_(scale / math.sqrt(fan_in) * torch.randn_like(p))
        for m in module.modules():
            if isinstance(m, ActNorm):
                m.initialized.fill_(True)
    return module


def setup(case: Case) -> tuple[hf.InvertibleModule, Tensor, Tensor | None]:
    """The randomised module, an input and a condition (float64: the caller's default)."""
    module = randomize(case.build())
    x = case.scale * case.sample(case.shape)
    cond = None if case.cond_shape is None else torch.randn(case.cond_shape)
    return module, x, cond


def loss_of(out: Tensor, logdet: Tensor, weight: Tensor) -> Tensor:
    """A smooth loss that uses the output nonlinearly and the log determinant."""
    return (out * weight).sum() + 0.5 * (out**2).sum() + logdet.sum()


def _passes(module, x, cond):
    """``(inverse, starting point)`` for the forward and the inverse pass."""
    with torch.no_grad():
        y, _ = module(x, cond)
    return [(False, x), (True, y)]


# -- the suite -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=str)
def test_round_trip(float64, case):
    module, x, cond = setup(case)
    check_inverse(module, x, cond)
    with torch.no_grad():  # and the other way round, from a random latent
        y = module(x, cond)[0]
        z = torch.randn_like(y)
        x_back, logdet_inverse = module.inverse(z, cond)
        z_again, logdet = module(x_back, cond)
    torch.testing.assert_close(z_again, z, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        logdet + logdet_inverse, torch.zeros_like(logdet), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("case", CASES, ids=str)
def test_logdet_matches_slogdet(float64, case):
    module, x, cond = setup(case)
    check_logdet(module, x, cond)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_invert_equals_store(float64, case):
    module, x, cond = setup(case)
    check_reconstruction_gradients(module, x, cond, rtol=1e-10)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_taylor_orders(float64, case):
    """First-order error O(h), second-order O(h^2), for both passes of the invert chain along
    the input, the condition and all parameters together."""
    module, x, cond = setup(case)
    chain = hf.Chain(module, mode="invert")
    for inverse, point in _passes(module, x, cond):
        run = chain.inverse if inverse else chain
        with torch.no_grad():
            weight = torch.randn_like(run(point, cond)[0])
        loss = lambda z, c, run=run, w=weight: loss_of(*run(z, c), w)  # noqa: E731
        check_taylor(lambda z, loss=loss: loss(z, cond), point, h0=TAYLOR_H0)
        if cond is not None:
            check_taylor(lambda c, loss=loss, p=point: loss(p, c), cond, h0=TAYLOR_H0)
        params = list(module.parameters())
        if params:
            along = _along_parameters(params, run, point, cond, weight)
            check_taylor(along, torch.zeros(()), h0=TAYLOR_H0)


def _along_parameters(params, run, point, cond, weight):
    """``t -> loss(theta + t v)``: its gradient at ``t`` is ``<dloss/dtheta, v>``, with
    ``dloss/dtheta`` from the reconstructing backward (so the Taylor test checks it)."""
    base = [p.detach().clone() for p in params]
    directions = [torch.randn_like(p) for p in params]

    def fn(t: Tensor) -> Tensor:
        try:
            with torch.no_grad():
                for p, p0, v in zip(params, base, directions, strict=True):
                    p.copy_(p0 + t.detach() * v)
            loss = loss_of(*run(point, cond), weight)
            if not t.requires_grad:
                return loss.detach()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            slope = sum(
                (g * v).sum() for g, v in zip(grads, directions, strict=True) if g is not None
            )
            return loss.detach() + (t - t.detach()) * slope
        finally:
            with torch.no_grad():
                for p, p0 in zip(params, base, strict=True):
                    p.copy_(p0)

    return fn


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradcheck(float64, case):
    """``gradcheck`` (fast mode) of both passes of the invert chain with respect to the input,
    the condition and every parameter (gradcheck perturbs the parameters in place)."""
    module, x, cond = setup(case)
    chain = hf.Chain(module, mode="invert")
    params = tuple(module.parameters())
    for inverse, point in _passes(module, x, cond):
        run = chain.inverse if inverse else chain

        def fn(z, c, *_params, run=run):
            out, logdet = run(z, c)
            return torch.cat([out.flatten(1), logdet[:, None]], dim=1)

        inputs = (
            point.detach().requires_grad_(True),
            None if cond is None else cond.detach().requires_grad_(True),
            *params,
        )
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
