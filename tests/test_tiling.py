"""Spatially tiled passes and reconstruction equal untiled ones; inexact tiling is refused."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from helpers import flow_loss, glow_chain
from torch import nn

import hybridflow as hf
from hybridflow.autograd.tiling import check_tile_size, tile_grid, tiled
from hybridflow.config import from_config, get_config
from hybridflow.errors import ArgumentError, ArgumentTypeError
from hybridflow.graph import BudgetError, Graph, Strategy
from hybridflow.layers import (
    AdditiveCoupling,
    AffineCoupling,
    HINTCoupling,
    SplineCoupling,
)
from hybridflow.networks import Glow

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _relative(a, b):
    return float((a - b).norm() / a.norm().clamp_min(1e-300))


def _perturbed(layer):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    return layer


def _condition(kind, batch, channels, spatial):
    if kind == "none":
        return None
    if kind == "vector":
        return torch.randn(batch, channels)
    return torch.randn(batch, channels, *spatial)


LAYERS = {
    "affine": lambda c, k, d: AffineCoupling(c, hidden=6, cond_features=k, spatial_dims=d),
    "additive": lambda c, k, d: AdditiveCoupling(c, hidden=6, cond_features=k, spatial_dims=d),
    "hint": lambda c, k, d: HINTCoupling(c, recursion=2, hidden=6, cond_features=k, spatial_dims=d),
    "spline": lambda c, k, d: SplineCoupling(c, hidden=6, cond_features=k, spatial_dims=d),
}
# spatial sizes not divisible by the tiles; tile 1 is smaller than the default halo of 2
SPATIAL = {1: ((19,), [4, 1]), 2: ((9, 7), [4, (1, 3), 100]), 3: ((5, 6, 4), [3, (2, 1, 5)])}


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("cond_kind", ["none", "vector", "field"])
@pytest.mark.parametrize("inverse", [False, True])
def test_tiled_layer_equals_untiled(float64, layer_name, dims, cond_kind, inverse):
    torch.manual_seed(2)  # first: the layer's initial weights must not depend on test order
    cond_channels = 0 if cond_kind == "none" else 2
    layer = _perturbed(LAYERS[layer_name](5, cond_channels, dims))
    spatial, tiles = SPATIAL[dims]
    x = torch.randn(2, 5, *spatial)
    cond = _condition(cond_kind, 2, cond_channels, spatial)
    with torch.no_grad():
        out, logdet = layer.inverse(x, cond) if inverse else layer(x, cond)
    grad_out, grad_logdet = torch.randn_like(out), torch.randn(2)

    def reconstruct():
        c = None if cond is None else cond.clone().requires_grad_(True)
        return layer.reconstruct_vjp(out, grad_out, grad_logdet, c, inverse=inverse)

    reference = reconstruct()
    for tile in tiles:
        with tiled(tile):
            result = reconstruct()
            with torch.no_grad():
                out_tiled, logdet_tiled = layer.inverse(x, cond) if inverse else layer(x, cond)
                back, _ = layer(out, cond) if inverse else layer.inverse(out, cond)
        assert _relative(out, out_tiled) < 1e-12 and _relative(logdet, logdet_tiled) < 1e-12
        assert _relative(x, back) < 1e-10
        # rebuilt inputs agree to the inversion's own accuracy (a spline inverse: ~1e-11)
        assert _relative(reference.input, result.input) < 1e-10
        assert _relative(reference.grad_input, result.grad_input) < 1e-10
        if cond is not None:
            assert result.grad_cond.shape == cond.shape
            assert _relative(reference.grad_cond, result.grad_cond) < 1e-10
        for a, b in zip(reference.grad_params, result.grad_params, strict=True):
            assert _relative(a, b) < 1e-10


def _chain_grads(chain, x, cond):
    inp = x.clone().requires_grad_(True)
    c = None if cond is None else cond.clone().requires_grad_(True)
    y, logdet = chain(inp, c)
    loss = flow_loss(y, logdet)
    targets = [inp, *([c] if c is not None else []), *chain.parameters()]
    return y.detach(), torch.autograd.grad(loss, targets)


@pytest.mark.parametrize(
    ("dims", "shape", "tile"),
    [(2, (2, 2, 14, 10), 3), (3, (1, 2, 6, 10, 8), (2, 3, 1))],
    ids=["2d", "3d"],
)
@pytest.mark.parametrize("cond_kind", ["none", "vector", "field"])
def test_tiled_chain_gradients_equal_plain_autograd(float64, dims, shape, tile, cond_kind):
    torch.manual_seed(3)
    x = torch.randn(*shape)
    cond_channels = 0 if cond_kind == "none" else 3
    cond = _condition(cond_kind, shape[0], cond_channels, [s // 2 for s in shape[2:]])
    results = {}
    for name, kwargs in {
        "store": {"mode": "store"},
        "tiled": {"mode": "invert", "tile_size": tile},
        "tiled+micro": {"mode": "invert", "tile_size": tile, "micro_batches": 2},
    }.items():
        chain = glow_chain(
            shape[1], 3, cond=cond_channels, spatial_dims=dims, squeeze=True, **kwargs
        )
        results[name] = _chain_grads(chain, x, cond)
    y_store, grads_store = results["store"]
    for name in ("tiled", "tiled+micro"):
        y, grads = results[name]
        assert _relative(y_store, y) < 1e-12
        for a, b in zip(grads_store, grads, strict=True):
            assert _relative(a, b) < 1e-10, name


def test_tiled_glow_equals_untiled_and_samples_alike(float64):
    torch.manual_seed(4)
    x, cond = torch.randn(2, 2, 12, 20), torch.randn(2, 1, 5, 5)
    results, samples = {}, {}
    for tile in (None, 3):
        torch.manual_seed(0)
        flow = Glow(2, levels=2, depth=2, hidden=8, cond_features=1, tile_size=tile)
        _perturbed(flow)
        results[tile] = _chain_grads(flow, x, cond)
        samples[tile] = flow.sample(
            (2, 2, 12, 20), cond, generator=torch.Generator().manual_seed(5)
        )
        if tile is not None:
            rebuilt = from_config(json.loads(json.dumps(get_config(flow))))
            assert rebuilt.tile_size == tile
    (y0, g0), (y1, g1) = results[None], results[3]
    assert _relative(y0, y1) < 1e-12
    assert all(_relative(a, b) < 1e-10 for a, b in zip(g0, g1, strict=True))
    assert _relative(samples[None], samples[3]) < 1e-12


def test_working_set_scales_with_the_tile():
    """The conditioner never sees more than a tile plus its halo, forward or backward."""
    chain = glow_chain(2, 2, "invert", spatial_dims=2, squeeze=True, tile_size=4)
    seen = []
    for m in chain.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[2:].numel()))
    x = torch.randn(1, 2, 64, 64).requires_grad_(True)
    flow_loss(*chain(x)).backward()
    assert seen and max(seen) <= (4 + 2 + 2) ** 2  # core 4, halo 2 either side
    assert x.grad is not None and torch.isfinite(x.grad).all()


class _Declared(nn.Module):
    """A custom conditioner (no Sequential) that declares its reach."""

    receptive_field = 2

    def __init__(self, cin, cout):
        super().__init__()
        self.a = nn.Conv2d(cin, 4, 3, padding=1)
        self.b = nn.Conv2d(4, cout, 3, padding=1, padding_mode="reflect")

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize(
    "subnet",
    [
        lambda i, o: _Declared(i, o),
        lambda i, o: nn.Sequential(
            nn.Conv2d(i, 4, 5, padding="same", dilation=2),
            nn.BatchNorm2d(4).eval(),
            nn.SiLU(),
            nn.Conv2d(4, o, (3, 1), padding=(1, 0), padding_mode="replicate"),
        ),
    ],
    ids=["declared", "dilated-eval-batchnorm-replicate"],
)
def test_computed_and_declared_receptive_fields_are_exact(float64, subnet):
    layer = _perturbed(AffineCoupling(4, spatial_dims=2, subnet=subnet))
    x = torch.randn(2, 4, 11, 9)
    with torch.no_grad():
        y, _ = layer(x)
    grad_y, grad_logdet = torch.randn_like(y), torch.randn(2)
    reference = layer.reconstruct_vjp(y, grad_y, grad_logdet)
    with tiled(3):
        result = layer.reconstruct_vjp(y, grad_y, grad_logdet)
    assert _relative(reference.grad_input, result.grad_input) < 1e-10
    for a, b in zip(reference.grad_params, result.grad_params, strict=True):
        assert _relative(a, b) < 1e-10


class _Attention(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.attention = nn.MultiheadAttention(cin, 1, batch_first=True)
        self.out = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        seq = x.flatten(2).transpose(1, 2)
        return self.out(self.attention(seq, seq, seq)[0].transpose(1, 2).reshape(x.shape))


@pytest.mark.parametrize(
    ("subnet", "named"),
    [
        (
            lambda i, o: nn.Sequential(
                nn.Conv2d(i, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Conv2d(4, o, 1)
            ),
            "conditioner.1 (GroupNorm)",
        ),
        (
            lambda i, o: nn.Sequential(
                nn.Conv2d(i, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, o, 1)
            ),
            "BatchNorm2d",
        ),
        (lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.Dropout(0.5)), "Dropout"),
        (
            lambda i, o: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(i, o, 1)),
            "AdaptiveAvgPool2d",
        ),
        (lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.Linear(6, 6)), "Linear"),
        (lambda i, o: nn.Conv2d(i, o, 3, padding=1, padding_mode="circular"), "circular"),
        (lambda i, o: nn.Conv2d(i, o, 3, padding=0), "padding"),
        (lambda i, o: _Attention(i, o), "_Attention"),
    ],
    ids=[
        "groupnorm",
        "train-batchnorm",
        "dropout",
        "global-pool",
        "linear",
        "circular",
        "valid",
        "attention",
    ],
)
def test_inexact_tiling_is_refused_naming_the_module(subnet, named):
    layer = AffineCoupling(4, spatial_dims=2, subnet=subnet)
    with pytest.raises(ArgumentError, match=re.escape(named)) as caught:
        hf.Chain(layer, tile_size=4)
    assert caught.value.argument == "tile_size"
    assert "Chain layers.0 (AffineCoupling)" in str(caught.value)
    with pytest.raises(ArgumentError, match=re.escape(named)), tiled(4), torch.no_grad():
        layer(torch.randn(1, 4, 6, 6))  # inside a tiled pass too, not only at build time


def test_tile_size_arguments_are_checked():
    assert check_tile_size(None, "x") is None and check_tile_size([2, 3], "x") == (2, 3)
    for bad in (0, (2, -1)):
        with pytest.raises(ArgumentError, match="positive"):
            hf.Chain(AffineCoupling(4, spatial_dims=2), tile_size=bad)
    for bad in (2.5, "4", (), True):
        with pytest.raises(ArgumentTypeError):
            hf.Chain(AffineCoupling(4, spatial_dims=2), tile_size=bad)
    with pytest.raises(ArgumentError, match="spatial dimensions"):
        tile_grid((4, 4), (2, 2, 2), ((1, 1), (1, 1)))
    chain = hf.Chain(AffineCoupling(4, spatial_dims=2), tile_size=(4, 8))
    assert "tile_size=(4, 8)" in repr(chain)
    saved = json.loads(json.dumps(get_config(chain)))
    assert from_config(saved).tile_size == (4, 8)


def test_tile_grid_partitions_the_grid_and_clips_halos():
    tiles = tile_grid((7,), 3, ((2, 1),))
    assert [t.core[0] for t in tiles] == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert [t.extent[0] for t in tiles] == [slice(0, 4), slice(1, 7), slice(4, 7)]
    assert [t.inner[0] for t in tiles] == [slice(0, 3), slice(2, 5), slice(2, 3)]
    assert len(tile_grid((5, 4, 3), (2, 4, 1), ((0, 0),) * 3)) == 3 * 1 * 3


def test_vector_couplings_in_a_tiled_chain_are_untouched(float64):
    chain = hf.Chain(AffineCoupling(4, hidden=4), tile_size=2)
    x = torch.randn(3, 4, requires_grad=True)
    flow_loss(*chain(x)).backward()
    assert x.grad.shape == (3, 4)


def _planned_flow(side=64, batch=2, hidden=32):
    torch.manual_seed(6)
    flow = _perturbed(Glow(2, levels=1, depth=2, hidden=hidden)).double()
    for m in flow.modules():
        if isinstance(m, hf.layers.ActNorm):
            m.mark_initialized()

    def nll(z, logdet):
        return (0.5 * z.pow(2).flatten(1).sum(1) - logdet).mean() + torch.sin(z).mean()

    graph = (
        Graph()
        .input("x")
        .invertible("flow", flow, "x")
        .autograd("loss", nll, ["flow", "flow.logdet"])
        .output("loss")
    )
    sample = {"x": torch.randn(batch, 2, side, side, dtype=torch.float64)}
    return graph.build(sample), sample


def test_planner_tiles_below_the_untiled_minimum_with_exact_gradients():
    model, sample = _planned_flow()
    untiled = model.plan(math.inf, pin={"flow": Strategy("invert", micro_batches=2)})
    budget = 0.9 * untiled.peak_bytes
    with pytest.raises(BudgetError):  # no untiled plan fits, so tiles are what makes it fit
        model.plan(budget, pin={"flow": Strategy("invert", micro_batches=2)})
    plan = model.plan(budget)
    chosen = plan.strategies()["flow"]
    assert chosen.kind == "invert" and chosen.tile_size is not None
    assert plan.peak_bytes <= budget and f"tile_size={chosen.tile_size}" in plan.table()
    tiled_extra = plan.extra_cost
    assert tiled_extra > untiled.extra_cost  # halos are computed more than once

    def grads():
        model.zero_grad(set_to_none=True)
        x = sample["x"].clone().requires_grad_(True)
        model(x=x)["loss"].backward()
        return [x.grad, *(p.grad for p in model.parameters())]

    tiled_grads = grads()
    model.plan(math.inf)  # everything stored: plain autograd
    for a, b in zip(grads(), tiled_grads, strict=True):
        assert _relative(a, b) < 1e-10


def test_pinned_tiles_are_refused_for_untileable_nodes():
    flow = hf.Chain(
        AffineCoupling(
            4,
            spatial_dims=2,
            subnet=lambda i, o: nn.Sequential(
                nn.Conv2d(i, 4, 3, padding=1), nn.GroupNorm(1, 4), nn.Conv2d(4, o, 1)
            ),
        )
    )
    graph = Graph().input("x").invertible("flow", flow, "x").output("flow")
    with pytest.raises(ArgumentError, match="GroupNorm"):
        graph.build({"x": torch.randn(2, 4, 8, 8)}, pin={"flow": Strategy("invert", tile_size=4)})
    plan = graph.build({"x": torch.randn(2, 4, 8, 8)}).plan("1GiB")
    assert plan.strategies()["flow"].tile_size is None  # never offered where it is inexact


@pytest.mark.parametrize("declared", ["2", -1, (1, 2, 3), ((1, 2, 3), 1), True])
def test_a_malformed_declared_receptive_field_is_refused(declared):
    class Declared(_Declared):
        receptive_field = declared

    layer = AffineCoupling(4, spatial_dims=2, subnet=lambda i, o: Declared(i, o))
    with pytest.raises(ArgumentError, match="declares receptive_field"):
        hf.Chain(layer, tile_size=4)
