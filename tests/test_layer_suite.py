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
    Bounded,
    ConditionalAffine,
    ConditionalSpline,
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


INF = math.inf
BOUNDS = ([-1.0, 0.0, -INF, -INF], [2.0, INF, 1.0, INF])  # a box, a lower, an upper, none


def inside_bounds(shape: tuple[int, ...]) -> Tensor:
    """Points well inside :data:`BOUNDS`, where finite differences stay in the support."""
    u = 0.1 + 0.8 * torch.rand(shape)
    return torch.stack(
        [-1 + 3 * u[:, 0], 0.2 + u[:, 1], 0.8 - u[:, 2], torch.randn(shape[0])], dim=1
    )


def _elementwise(cls, features: int, **kw):
    """A conditional elementwise layer; its smooth conditioner sees the condition alone."""
    return lambda d, c: cls(
        features, c, spatial_dims=d, subnet=smooth_subnet(d) if c else None, **kw
    )


def _split(d: int, c: int) -> hf.InvertibleModule:
    inner = hf.Chain(
        ActNorm(2), AffineCoupling(2, cond_features=c, spatial_dims=d, subnet=smooth_subnet(d))
    )
    return Split(inner, split_size=2)


def _glow(d: int, c: int, **kw) -> hf.InvertibleModule:
    return Glow(
        1, levels=2, depth=1, cond_features=c, spatial_dims=d, subnet=smooth_subnet(d), **kw
    )


def _hint(d: int, c: int) -> hf.InvertibleModule:
    return HINT(4, depth=2, recursion=2, cond_features=c, spatial_dims=d, subnet=smooth_subnet(d))


ALL_CONDS: tuple[Cond, ...] = ("none", "vector", "field")
CASES: list[Case] = [
    *cases("ActNorm", lambda d, c: ActNorm(3), 3),
    *cases("InvConv1x1", lambda d, c: InvConv1x1(3), 3),
    *cases("Inverse-InvConv1x1", lambda d, c: Inverse(InvConv1x1(3)), 3),
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
    *cases("HINTCoupling", _coupling(HINTCoupling, recursion=2), 4, conds=ALL_CONDS),
    *cases(
        "ConditionalSpline",
        _elementwise(ConditionalSpline, 1, bins=3, bound=1.5),
        1,
        conds=ALL_CONDS,
        scale=2,
    ),
    *cases(
        "ConditionalSpline-3",
        _elementwise(ConditionalSpline, 3, bins=4, bound=1.5),
        3,
        (0, 2),
        ("none", "vector"),
        scale=2,
    ),
    *cases("ConditionalAffine", _elementwise(ConditionalAffine, 1), 1, conds=ALL_CONDS),
    *cases("Bounded", lambda d, c: Bounded(*BOUNDS), 4, (0,), sample=inside_bounds),
    *cases("HINTCoupling-r3", _coupling(HINTCoupling, 7, recursion=3), 7, (0,), ("none", "vector")),
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
def _fan_in(p: Tensor) -> int:
    """Inputs per output of a weight (1 for vectors and scalars): a parameter's natural scale
    is ``1 / sqrt(fan_in)``."""
    return p[0].numel() if p.dim() >= 2 else 1


def randomize(module: nn.Module, scale: float = 0.5) -> nn.Module:
    """Move every parameter away from its initialisation (zero-initialised conditioners would
    make couplings the identity and hide mistakes); mark data-initialised layers done.

    Weights get noise of standard deviation ``scale / sqrt(fan_in)``, so conditioner outputs
    stay of order ``scale`` at any width and kernel size; vectors and scalars get ``scale``.
    """
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale / math.sqrt(_fan_in(p)) * torch.randn_like(p))
        for m in module.modules():
            if isinstance(m, ActNorm):
                m.mark_initialized(True)
    return module


def setup(case: Case) -> tuple[hf.InvertibleModule, Tensor, Tensor | None]:
    """The randomised module, an input and a condition (float64: the caller's default)."""
    module = randomize(case.build())
    x = case.scale * case.sample(case.shape)
    cond = None if case.cond_shape is None else torch.randn(case.cond_shape)
    randomized = [p.detach().clone() for p in module.parameters()]
    with torch.no_grad():
        module(x, cond)
    # no data-dependent initialisation may undo the randomisation
    assert all(torch.equal(a, p) for a, p in zip(randomized, module.parameters(), strict=True))
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
    ``dloss/dtheta`` from the reconstructing backward (so the Taylor test checks it). The
    direction ``v`` is scaled like the parameters (``1 / sqrt(fan_in)``)."""
    base = [p.detach().clone() for p in params]
    directions = [torch.randn_like(p) / math.sqrt(_fan_in(p)) for p in params]

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


# -- spline coupling: tails and knots ----------------------------------------------------------
def _spline_batch(layer: SplineCoupling, dtype: torch.dtype):
    """Rows whose transformed entries sit exactly on every knot (the ends ``±B`` included),
    just outside the bound, and far in the tails; one pass-through half and condition for all,
    so every row sees the same splines."""
    torch.manual_seed(5)
    bins, bound = layer.bins, layer.bound
    rows = bins + 1 + 4
    x1 = torch.randn(1, 2, dtype=dtype).expand(rows, 2)
    cond = torch.randn(1, 2, dtype=dtype).expand(rows, 2).contiguous()
    knots = layer.knots(torch.cat([x1, torch.zeros_like(x1)], dim=1), cond)
    outside = [bound * (1 + 1e-6), -bound * (1 + 1e-6), 1e6, -1e30]
    far = torch.tensor([[v, -v] for v in outside], dtype=dtype)
    x_knots = torch.cat([knots.x[0].T, far])  # (rows, 2): row j holds knot j of both splines
    y_knots = torch.cat([knots.y[0].T, far])
    return x1.contiguous(), cond, x_knots, y_knots, bins + 1


def _assert_finite_gradients(layer, inp, cond, inverse, mode):
    """Outputs, log determinants and the gradients of the input, the condition and every
    parameter are finite, for one pass in one mode."""
    chain = hf.Chain(layer, mode=mode)
    inp = inp.detach().requires_grad_(True)
    cond = cond.detach().requires_grad_(True)
    out, logdet = chain.inverse(inp, cond) if inverse else chain(inp, cond)
    assert torch.isfinite(out).all() and torch.isfinite(logdet).all()
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    names = ["input", "cond", *(n for n, _ in layer.named_parameters())]
    grads = torch.autograd.grad(
        (out * weight).sum() + logdet.sum(), [inp, cond, *layer.parameters()]
    )
    for name, grad in zip(names, grads, strict=True):
        assert torch.isfinite(grad).all(), f"{mode} mode, inverse={inverse}: {name} gradient"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spline_is_finite_on_knots_and_far_in_the_tails(dtype):
    torch.manual_seed(0)
    layer = SplineCoupling(4, hidden=8, cond_features=2, bins=5, bound=2.0).to(dtype)
    randomize(layer, scale=2.0)  # strongly uneven bins and slopes
    x1, cond, x_knots, y_knots, on_knots = _spline_batch(layer, dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    x = torch.cat([x1, x_knots], dim=1)
    y = torch.cat([x1, y_knots], dim=1)
    with torch.no_grad():
        y_out, logdet = layer(x, cond)
        x_out, logdet_inverse = layer.inverse(y, cond)
    for value in (y_out, logdet, x_out, logdet_inverse):
        assert torch.isfinite(value).all()
    # the spline maps knots to knots, and is the identity (logdet 0) outside [-B, B]
    torch.testing.assert_close(y_out[:, 2:], y_knots, **tol)
    torch.testing.assert_close(x_out[:, 2:], x_knots, **tol)
    assert torch.equal(y_out[on_knots:, 2:], x_knots[on_knots:])
    assert torch.equal(logdet[on_knots:], torch.zeros_like(logdet[on_knots:]))
    assert torch.equal(logdet_inverse[on_knots:], torch.zeros_like(logdet[on_knots:]))
    for mode in ("store", "invert"):
        for inverse, inp in ((False, x), (True, y)):
            _assert_finite_gradients(layer, inp, cond, inverse, mode)


def test_spline_tails_have_unit_slope_and_no_gradient_to_the_conditioner(float64):
    layer = randomize(SplineCoupling(2, hidden=8, bins=4, bound=1.0))
    x = torch.tensor([[0.3, 5.0], [0.3, -1e6], [0.3, 1.0 + 1e-9]], requires_grad=True)
    y, logdet = layer(x)
    grad_x, *grad_params = torch.autograd.grad(
        y[:, 1].sum() + logdet.sum(), [x, *layer.parameters()]
    )
    torch.testing.assert_close(grad_x[:, 1], torch.ones(3), rtol=0, atol=1e-12)
    assert all(g.abs().max() < 1e-12 for g in grad_params)


def test_spline_identity_at_initialisation_and_bad_options():
    layer = SplineCoupling(6, hidden=8, bins=4, bound=2.0)
    x = 3 * torch.randn(5, 6)
    y, logdet = layer(x)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(logdet, torch.zeros(5), rtol=0, atol=1e-5)
    for kwargs, message in (
        ({"bins": 1}, "bins must be an int >= 2"),
        ({"bound": -1.0}, "bound must be a finite number > 0"),
        ({"min_bin_width": 0.5}, "min_bin_width must be a finite number >= 0 and < 0.125"),
        ({"min_derivative": 0.0}, "min_derivative must be a finite number > 0 and < 1"),
    ):
        with pytest.raises(ValueError, match=f"SplineCoupling: {message}"):
            SplineCoupling(4, **kwargs)


# -- other layer-specific properties --------------------------------------------------------
@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_haar_low_band_is_the_scaled_average_and_the_transform_is_orthonormal(
    float64, spatial_dims
):
    x = torch.randn(2, 3, *[4] * spatial_dims)
    y, logdet = HaarSqueeze()(x)
    assert y.shape == (2, 3 * 2**spatial_dims, *[2] * spatial_dims)
    pool = {1: nn.functional.avg_pool1d, 2: nn.functional.avg_pool2d, 3: nn.functional.avg_pool3d}
    low = pool[spatial_dims](x, 2) * 2 ** (spatial_dims / 2)
    torch.testing.assert_close(y[:, :3], low, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y.norm(), x.norm(), rtol=1e-12, atol=0)
    assert torch.equal(logdet, torch.zeros(2))
    # the details of a constant image vanish
    y_const, _ = HaarSqueeze()(torch.ones(1, 1, *[2] * spatial_dims))
    assert torch.allclose(y_const[:, 1:], torch.zeros_like(y_const[:, 1:]), atol=1e-15)


def test_haar_two_by_two_block_values(float64):
    block = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    y, _ = HaarSqueeze()(block)
    torch.testing.assert_close(y.flatten(), torch.tensor([5.0, -1.0, -2.0, 0.0]))


def test_permute_is_seeded_saved_and_reversible():
    a, b, c = Permute(16, seed=7), Permute(16, seed=7), Permute(16, seed=8)
    assert torch.equal(a.permutation, b.permutation)
    assert not torch.equal(a.permutation, c.permutation)
    assert torch.equal(a.permutation.sort().values, torch.arange(16))
    c.load_state_dict(a.state_dict())
    x = torch.randn(3, 16, 2, 2)
    assert torch.equal(c(x)[0], a(x)[0])
    assert torch.equal(a.inverse(a(x)[0])[0], x)
    y, _ = Reverse(16)(x)
    assert torch.equal(y, x.flip(1)) and torch.equal(Reverse(16)(y)[0], x)


def test_affine_has_no_data_dependent_initialisation():
    layer = Affine(3)
    x = 5 + 3 * torch.randn(8, 3, 4, 4)
    for _ in range(2):  # the first batch changes nothing: still the identity
        y, logdet = layer(x)
        assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(8))
    with torch.no_grad():
        layer.log_scale.fill_(0.5)
    _, logdet = layer(x)
    torch.testing.assert_close(logdet, torch.full((8,), 0.5 * 3 * 16))


def test_leaky_relu_logdet_counts_negative_entries():
    x = torch.tensor([[-1.0, -2.0, 3.0], [1.0, 2.0, 3.0]])
    y, logdet = LeakyReLU(0.25)(x)
    torch.testing.assert_close(y, torch.tensor([[-0.25, -0.5, 3.0], [1.0, 2.0, 3.0]]))
    torch.testing.assert_close(logdet, torch.tensor([2 * math.log(0.25), 0.0]))


def test_additive_coupling_is_volume_preserving(float64):
    layer = randomize(AdditiveCoupling(6, hidden=8, cond_features=2, spatial_dims=2))
    x, c = torch.randn(3, 6, 4, 4), torch.randn(3, 2, 4, 4)
    y, logdet = layer(x, c)
    assert not torch.allclose(y, x)  # randomised: not the identity
    assert torch.equal(logdet, torch.zeros(3)) and torch.equal(y[:, :3], x[:, :3])


def test_hint_depth_one_is_an_affine_coupling(float64):
    hint = randomize(HINTCoupling(6, recursion=1, hidden=8, cond_features=2))
    affine = AffineCoupling(6, hidden=8, cond_features=2)
    affine.load_state_dict(hint.coupling.state_dict())
    x, c = torch.randn(4, 6), torch.randn(4, 2)
    for a, b in zip(hint(x, c), affine(x, c), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("features", "depth", "count"), [(8, 3, 7), (5, 3, 4), (8, 1, 1), (2, 4, 1)]
)
def test_hint_recursion_tree(features, depth, count):
    assert len(HINTCoupling(features, recursion=depth, hidden=4).sub_couplings()) == count


def test_hint_jacobian_is_dense_lower_triangular(float64):
    layer = randomize(HINTCoupling(8, recursion=3, hidden=8, subnet=smooth_subnet(0, 8)))
    x = torch.randn(1, 8)
    jacobian = torch.autograd.functional.jacobian(lambda z: layer(z)[0], x)[0, :, 0]
    assert torch.equal(jacobian.triu(1), torch.zeros(8, 8))
    below = jacobian[torch.tril_indices(8, 8, -1).unbind()]
    assert below.abs().min() > 1e-8  # every output depends on every input before it


def test_split_passes_the_factored_part_and_checks_the_inner_shape():
    layer = Split(ActNorm(2), split_size=2)
    x = torch.randn(4, 5, 3)
    y, _ = layer(x)
    assert torch.equal(y[:, 2:], x[:, 2:])
    with pytest.raises(ValueError, match="Split: the inner module must keep the shape"):
        Split(Squeeze(2), split_size=2)(torch.randn(2, 4, 4, 4))
    with pytest.raises(ValueError, match=r"Split: expected more than split_size=4 channels"):
        Split(ActNorm(4), split_size=4)(torch.randn(2, 4))
    with pytest.raises(TypeError, match="Split: expected an InvertibleModule"):
        Split(nn.Linear(2, 2), split_size=1)


def test_resize_condition_pools_a_field_and_keeps_vectors(float64):
    coupling = randomize(AffineCoupling(4, hidden=8, cond_features=2, spatial_dims=2))
    layer = ResizeCondition(coupling)
    x, field, vector = torch.randn(2, 4, 4, 4), torch.randn(2, 2, 16, 16), torch.randn(2, 2)
    pooled = nn.functional.adaptive_avg_pool2d(field, (4, 4))
    torch.testing.assert_close(layer(x, field), coupling(x, pooled), rtol=0, atol=0)
    torch.testing.assert_close(layer(x, vector), coupling(x, vector), rtol=0, atol=0)
    with pytest.raises(ValueError, match="ResizeCondition: a condition must be a vector"):
        layer(x, torch.randn(2, 2, 4))


def test_inverse_of_inverse_is_the_module(float64):
    layer = randomize(AffineCoupling(4, hidden=8))
    twice = Inverse(Inverse(layer))
    x = torch.randn(3, 4)
    torch.testing.assert_close(twice(x), layer(x), rtol=0, atol=0)
    assert list(twice.parameters()) == list(layer.parameters())
    with pytest.raises(TypeError, match="Inverse: expected an InvertibleModule"):
        Inverse(nn.Tanh())


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Permute(0), "Permute: num_features must be an int >= 1, got 0"),
        (lambda: Reverse(-2), "Reverse: num_features must be an int >= 1, got -2"),
        (lambda: Affine(0), "Affine: num_features must be an int >= 1, got 0"),
        (lambda: LeakyReLU(0.0), "LeakyReLU: negative_slope must be a finite number > 0"),
        (lambda: LeakyReLU(-0.1), r"LeakyReLU: .*got -0.1"),
        (
            lambda: HINTCoupling(4, recursion=0),
            "HINTCoupling: recursion must be an int >= 1, got 0",
        ),
        (lambda: HINTCoupling(1), "HINTCoupling: num_features must be an int >= 2, got 1"),
        (lambda: HINTCoupling(4, spatial_dims=4), "HINTCoupling: spatial_dims must be"),
        (lambda: AdditiveCoupling(1), "AdditiveCoupling: num_features must be an int >= 2"),
        (lambda: Split(ActNorm(2), split_size=0), "Split: split_size must be an int >= 1"),
    ],
)
def test_bad_construction_names_the_layer(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    ("layer", "bad", "error", "message"),
    [
        (Permute(4), torch.randn(2, 3), ValueError, "Permute: expected 4 channels"),
        (Reverse(4), torch.ones(2, 4, dtype=torch.long), TypeError, "Reverse: expected a float"),
        (Affine(3), "x", TypeError, "Affine: expected a torch.Tensor, got str"),
        (HaarSqueeze(), torch.randn(2, 3, 5, 4), ValueError, r"spatial sizes \(5, 4\)"),
        (HaarSqueeze(), torch.randn(2, 3), ValueError, "HaarSqueeze: expected"),
        (LeakyReLU(), [1.0], TypeError, "LeakyReLU: expected a torch.Tensor, got list"),
        (HINTCoupling(4, cond_features=2), torch.randn(2, 4), ValueError, "missing condition"),
        (HINTCoupling(4, spatial_dims=2), torch.randn(2, 4), ValueError, "expected rank 4"),
        (
            SplineCoupling(4, cond_features=2),
            torch.randn(2, 4),
            ValueError,
            "SplineCoupling: missing condition",
        ),
    ],
)
def test_bad_input_names_the_layer(layer, bad, error, message):
    with pytest.raises(error, match=message):
        layer(bad)


@pytest.mark.parametrize(
    "layer",
    [Permute(3), Affine(3), HaarSqueeze(), LeakyReLU(), HINTCoupling(4, spatial_dims=2)],
    ids=lambda m: type(m).__name__,
)
def test_inverse_rejects_non_finite_input(layer):
    channels = 3 if not isinstance(layer, (HaarSqueeze, HINTCoupling)) else 4
    y = torch.randn(2, channels, 2, 2)
    y[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"\.inverse: input has 1 NaN/Inf"):
        layer.inverse(y)
