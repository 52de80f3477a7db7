"""Glow and HINT networks: training in invert mode, exactness, flat memory, layout, errors.

The per-layer invariants (round trips, slogdet, invert vs store, Taylor, gradcheck) of both
networks run in ``tests/test_layer_suite.py``; this file checks them as networks.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import perturb_parameters
from torch import Tensor, nn

import hybridflow as hf
from hybridflow.layers import AffineCoupling, HINTCoupling, ResizeCondition
from hybridflow.networks import HINT, Glow


def nll(z: Tensor, logdet: Tensor) -> Tensor:
    """Negative log-likelihood per dimension under a standard normal latent."""
    dims = z[0].numel()
    log_pz = -0.5 * z.pow(2).flatten(1).sum(1) - 0.5 * dims * math.log(2 * math.pi)
    return -(log_pz + logdet).mean() / dims


def smooth_images(batch: int, channels: int, size: int, spatial_dims: int) -> Tensor:
    """Correlated fields (noise averaged over neighbourhoods): structure a flow can learn."""
    noise = torch.randn(batch, channels, *[size] * spatial_dims)
    pool = {2: nn.functional.avg_pool2d, 3: nn.functional.avg_pool3d}[spatial_dims]
    return 2 * pool(noise, 3, stride=1, padding=1, count_include_pad=False)


def train(flow: hf.InvertibleModule, x: Tensor, cond: Tensor | None, steps: int, lr: float):
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nll(*flow(x, cond))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def assert_decreasing(losses: list[float]) -> None:
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0] - 0.05, losses
    assert sum(b < a for a, b in itertools.pairwise(losses)) >= 0.7 * (len(losses) - 1), losses


# -- training in invert mode -----------------------------------------------------------------
def test_conditional_multiscale_glow_trains_on_images():
    """The 64x64 conditional Glow of the benchmark, at 16x16: field condition, 3 scales."""
    x = smooth_images(4, 3, 16, 2)
    cond = x.mean(1, keepdim=True).repeat(1, 2, 1, 1) + 0.1 * torch.randn(4, 2, 16, 16)
    flow = Glow(3, levels=3, depth=2, hidden=16, cond_features=2, spatial_dims=2)
    assert flow.mode == "invert"
    assert_decreasing(train(flow, x, cond, steps=8, lr=2e-3))


def test_glow_trains_on_volumes():
    """The 32^3 Glow of the benchmark, at 8^3, with a vector condition."""
    x = smooth_images(2, 1, 8, 3)
    cond = torch.randn(2, 3)
    flow = Glow(1, levels=2, depth=2, hidden=8, cond_features=3, spatial_dims=3)
    assert_decreasing(train(flow, x, cond, steps=8, lr=2e-3))


def test_conditional_hint_learns_a_conditional_gaussian():
    torch.manual_seed(0)
    c = torch.randn(128, 3)
    x = c @ torch.randn(3, 4) + 0.3 * torch.randn(128, 4)
    flow = HINT(4, depth=3, recursion=2, hidden=32, cond_features=3, seed=0)
    losses = train(flow, x, c, steps=30, lr=3e-3)
    assert_decreasing(losses)
    assert losses[-1] < losses[0] - 0.3


# -- exactness at depth ----------------------------------------------------------------------
def _twin_networks(build):
    """The same network (same parameters) in store and invert mode, in float64."""
    torch.manual_seed(0)
    store = build("store")
    invert = build("invert")
    perturb_parameters(store, 0.05)
    invert.load_state_dict(store.state_dict())
    return store, invert


@pytest.mark.parametrize(
    ("build", "x_shape", "cond_shape"),
    [
        (
            lambda mode: Glow(2, levels=3, depth=3, hidden=8, cond_features=2, mode=mode),
            (2, 2, 8, 8),
            (2, 2, 16, 16),
        ),
        (
            lambda mode: Glow(1, levels=2, depth=2, hidden=4, spatial_dims=3, mode=mode),
            (2, 1, 4, 4, 4),
            None,
        ),
        (
            lambda mode: HINT(5, depth=6, recursion=3, hidden=8, cond_features=2, mode=mode),
            (6, 5),
            (6, 2),
        ),
    ],
    ids=["glow-2d-conditional", "glow-3d", "hint-conditional"],
)
def test_invert_mode_network_gradients_equal_store_mode(float64, build, x_shape, cond_shape):
    store, invert = _twin_networks(build)
    x = torch.randn(x_shape)
    cond = None if cond_shape is None else torch.randn(cond_shape)
    results = []
    for flow in (store, invert):
        inp = x.clone().requires_grad_(True)
        c = None if cond is None else cond.clone().requires_grad_(True)
        z, logdet = flow(inp, c)
        loss = nll(z, logdet) + torch.sin(z).sum()
        targets = [inp, *([c] if c is not None else []), *flow.parameters()]
        results.append((loss.detach(), torch.autograd.grad(loss, targets)))
    (loss_s, grads_s), (loss_i, grads_i) = results
    torch.testing.assert_close(loss_i, loss_s, rtol=1e-12, atol=0)
    for g_s, g_i in zip(grads_s, grads_i, strict=True):
        assert float((g_s - g_i).norm() / g_s.norm().clamp_min(1e-300)) < 1e-10


# -- memory ----------------------------------------------------------------------------------
def _saved_bytes(flow: hf.InvertibleModule, x: Tensor, cond: Tensor | None) -> int:
    total = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    # a chain's first differentiable call is checked by the drift guard, which keeps a few
    # numbers per sample and layer (counted in test_guard.py): count an unchecked call
    flow(x, cond)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        flow(x, cond)
    return total


def test_glow_keeps_only_latent_and_condition_whatever_depth_and_levels():
    x, cond = torch.randn(2, 1, 16, 16), torch.randn(2, 2, 16, 16)
    kept = x.numel() * x.element_size() + cond.numel() * cond.element_size()
    for levels, depth in ((1, 1), (2, 4), (4, 8)):
        flow = Glow(1, levels=levels, depth=depth, hidden=8, cond_features=2)
        assert _saved_bytes(flow, x, cond) == kept
    store = [
        _saved_bytes(Glow(1, levels=2, depth=d, hidden=8, cond_features=2, mode="store"), x, cond)
        for d in (1, 4)
    ]
    assert store[1] > 3 * store[0] > 3 * kept


def test_hint_keeps_only_output_and_condition_whatever_depth_and_recursion():
    x, cond = torch.randn(8, 8), torch.randn(8, 3)
    kept = (x.numel() + cond.numel()) * x.element_size()
    for depth, recursion in ((1, 1), (4, 3), (12, 3)):
        flow = HINT(8, depth=depth, recursion=recursion, hidden=16, cond_features=3)
        assert _saved_bytes(flow, x, cond) == kept


def _reconstructions(monkeypatch) -> list[int]:
    """The ids of the AffineCouplings whose ``reconstruct_vjp`` runs, in call order (filled as
    backward passes run)."""
    calls = []
    original = AffineCoupling.reconstruct_vjp

    def counting(self, *args, **kwargs):
        calls.append(id(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AffineCoupling, "reconstruct_vjp", counting)
    return calls


def test_every_glow_coupling_is_reconstructed_once_per_backward(monkeypatch):
    calls = _reconstructions(monkeypatch)
    flow = Glow(1, levels=3, depth=2, hidden=8)
    z, logdet = flow(torch.randn(2, 1, 16, 16))
    assert calls == []
    nll(z, logdet).backward()
    couplings = [m for m in flow.modules() if isinstance(m, AffineCoupling)]
    assert len(couplings) == 6 and sorted(calls) == sorted(map(id, couplings))


def test_hint_sub_couplings_are_reconstructed_once_per_backward(monkeypatch):
    calls = _reconstructions(monkeypatch)
    flow = HINT(8, depth=3, recursion=3, hidden=8)
    z, logdet = flow(torch.randn(4, 8))
    nll(z, logdet).backward()
    subs = [s for m in flow.modules() if isinstance(m, HINTCoupling) for s in [m.coupling]]
    assert len(subs) == 3 * 7 and sorted(calls) == sorted(map(id, subs))


# -- latent layout, sampling, module behaviour -----------------------------------------------
@pytest.mark.parametrize(
    ("spatial_dims", "shape", "squeeze"),
    [(2, (2, 3, 16, 8), "pixel"), (2, (2, 3, 16, 8), "haar"), (3, (1, 2, 8, 8, 8), "pixel")],
)
def test_latent_layout_split_and_merge(spatial_dims, shape, squeeze):
    flow = Glow(shape[1], levels=3, depth=1, hidden=4, spatial_dims=spatial_dims, squeeze=squeeze)
    x = torch.randn(shape)
    with torch.no_grad():
        z, _ = flow(x)
    assert z.shape == x.shape
    parts = flow.split_latent(z)
    assert len(parts) == 3 and sum(p.numel() for p in parts) == z.numel()
    for level, part in enumerate(parts):
        assert tuple(part.shape[2:]) == tuple(s // 2 ** (level + 1) for s in shape[2:])
    torch.testing.assert_close(flow.merge_latent(parts), z, rtol=0, atol=1e-6)


def test_factored_out_part_is_the_first_scale_output():
    """The first part of the latent is what scale 0 factored out after its steps."""
    flow = Glow(1, levels=2, depth=1, hidden=4)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        z, _ = flow(x)
        squeeze, steps = flow.flow[0], flow.flow[1]
        h, _ = steps(squeeze(x)[0])
    torch.testing.assert_close(flow.split_latent(z)[0], h[:, 2:], rtol=0, atol=0)


def test_sampling_shapes_and_temperature():
    flow = Glow(2, levels=2, depth=1, hidden=4, cond_features=1)
    cond = torch.randn(3, 1)
    samples = flow.sample((3, 2, 8, 8), cond)
    assert samples.shape == (3, 2, 8, 8) and torch.isfinite(samples).all()
    mean = flow.sample((3, 2, 8, 8), cond, temperature=0.0)
    torch.testing.assert_close(mean, flow.inverse(torch.zeros(3, 2, 8, 8), cond)[0])


def test_glow_moves_casts_and_reloads():
    flow = Glow(1, levels=2, depth=2, hidden=4, cond_features=2).double()
    x, cond = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    z, _ = flow(x, cond)
    assert z.dtype == torch.float64 and flow.is_initialized
    fresh = Glow(1, levels=2, depth=2, hidden=4, cond_features=2).double()
    assert not fresh.is_initialized
    fresh.load_state_dict(flow.state_dict())
    assert fresh.is_initialized
    torch.testing.assert_close(fresh(x, cond)[0], z, rtol=0, atol=0)
    flow.float()
    assert all(p.dtype == torch.float32 for p in flow.parameters())


def test_networks_nest_in_a_chain_and_unconditional_ones_ignore_the_condition(float64):
    """Inside a conditional chain, unconditional networks ignore the condition, and the
    chain's reconstruction runs through the networks' own rules."""
    coupling = ResizeCondition(
        HINTCoupling(2, recursion=1, hidden=4, cond_features=2, spatial_dims=2)
    )
    outer = hf.Chain(
        Glow(2, levels=2, depth=1, hidden=4),
        coupling,
        HINT(2, depth=2, recursion=1, hidden=4, spatial_dims=2),
        mode="invert",
    )
    x, cond = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        for p in outer.parameters():
            p.add_(0.1 * torch.randn_like(p))
        outer(x, cond)  # initialises the ActNorms
    hf.testing.check_reconstruction_gradients(outer, x, cond, rtol=1e-10)


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"levels": 0}, "Glow: levels must be an int >= 1, got 0"),
        ({"depth": 2.5}, "Glow: depth must be an int >= 1, got 2.5"),
        ({"spatial_dims": 0}, r"Glow: spatial_dims must be one of \(1, 2, 3\), got 0"),
        ({"mode": "fast"}, "Glow: mode must be one of"),
        ({"squeeze": "wavelet"}, "Glow: squeeze must be one of"),
        ({"cond_features": -1}, "Glow: cond_features must be an int >= 0"),
    ],
)
def test_glow_rejects_bad_options(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):  # TypeError: depth=2.5
        Glow(**{"num_features": 1, "levels": 2, "depth": 1, "hidden": 4, **kwargs})


@pytest.mark.parametrize(
    ("x", "cond", "error", "message"),
    [
        (torch.randn(2, 1, 10, 8), None, ValueError, r"Glow: spatial sizes \(10, 8\) must be"),
        (torch.randn(2, 3, 8, 8), None, ValueError, "Glow: expected 1 channels"),
        (torch.randn(2, 1, 8), None, ValueError, "Glow: expected rank 4"),
        (torch.randn(2, 1, 8, 8), None, ValueError, "Glow: missing condition"),
        (torch.randn(2, 1, 8, 8), torch.randn(3, 2), ValueError, r"condition has shape \(3, 2\)"),
        (torch.randn(2, 1, 8, 8), torch.randn(2, 2, 8), ValueError, "condition has shape"),
        (torch.randn(2, 1, 8, 8), "c", TypeError, "Glow: condition must be a torch.Tensor"),
        (
            torch.randn(2, 1, 8, 8),
            torch.randn(2, 2, dtype=torch.float64),
            TypeError,
            "condition is torch.float64",
        ),
    ],
)
def test_glow_rejects_bad_input_and_changes_nothing(x, cond, error, message):
    flow = Glow(1, levels=2, depth=1, hidden=4, cond_features=2)
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    with pytest.raises(error, match=message):
        flow(x, cond)
    assert not flow.is_initialized
    assert all(torch.equal(v, before[k]) for k, v in flow.state_dict().items())


def test_glow_inverse_rejects_non_finite_latents_and_conditions():
    flow = Glow(1, levels=2, depth=1, hidden=4, cond_features=1)
    z = torch.randn(2, 1, 8, 8)
    z[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/Inf"):
        flow.inverse(z, torch.randn(2, 1))
    with pytest.raises(ValueError, match=r"Glow.inverse \(condition\): input has 1 NaN/Inf"):
        flow.inverse(torch.randn(2, 1, 8, 8), torch.tensor([[0.0], [float("nan")]]))


def test_glow_merge_latent_rejects_bad_parts():
    flow = Glow(1, levels=2, depth=1, hidden=4)
    with pytest.raises(ValueError, match="expected a list of 2 parts"):
        flow.merge_latent([torch.randn(2, 2, 4, 4)])
    with pytest.raises(ValueError, match="does not fit the next coarser scale"):
        flow.merge_latent([torch.randn(2, 3, 4, 4), torch.randn(2, 8, 2, 2)])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: HINT(1), "HINT: num_features must be an int >= 2, got 1"),
        (lambda: HINT(4, depth=0), "HINT: depth must be an int >= 1, got 0"),
        (lambda: HINT(4, cond_features=-2), "HINT: cond_features must be an int >= 0"),
        (lambda: HINT(4, spatial_dims=5), r"HINT: spatial_dims must be one of \(0, 1, 2, 3\)"),
        (lambda: HINT(4, mode="plan"), "HINT: mode must be one of"),
        (lambda: HINT(4, permutation="shuffle"), "HINT: permutation must be one of"),
    ],
)
def test_hint_rejects_bad_options(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_hint_rejects_bad_input():
    flow = HINT(4, depth=2, cond_features=2)
    with pytest.raises(ValueError, match="HINT: missing condition"):
        flow(torch.randn(3, 4))
    with pytest.raises(ValueError, match="HINT: expected 4 channels"):
        flow(torch.randn(3, 5), torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"HINT.inverse: condition has shape \(2, 2\)"):
        flow.inverse(torch.randn(3, 4), torch.randn(2, 2))


# -- mode ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: Glow(1, levels=2, depth=1, hidden=4, cond_features=2),
        lambda: HINT(4, depth=2, hidden=4, seed=0),
    ],
    ids=["Glow", "HINT"],
)
def test_network_mode_reads_and_sets_its_chains(make):
    flow = make()
    chains = [m for m in flow.modules() if isinstance(m, hf.Chain)]
    assert flow.mode == "invert" and {c.mode for c in chains} == {"invert"}
    flow.mode = "store"
    assert {c.mode for c in chains} == {"store"}
    assert hf.config.get_config(flow)["arguments"]["mode"] == "store"
    flow.flow.mode = "invert"  # the inner chain changed: the network reads it, no stale copy
    assert flow.mode == "invert"
    with pytest.raises(ValueError, match="mode must be one of"):
        flow.mode = "fast"  # type: ignore[assignment]
    assert flow.flow.mode == "invert"


def test_renamed_network_arguments_warn_and_build_the_same_network(monkeypatch):
    monkeypatch.setattr(hf.deprecation, "_warned", set())  # each old name warns once a process
    with pytest.warns(FutureWarning) as caught:
        old = Glow(in_channels=1, levels=2, depth=1, hidden=4, cond_channels=2, seed=0)
    messages = [str(w.message) for w in caught]
    assert any("pass num_features=" in m for m in messages)
    assert any("pass cond_features=" in m for m in messages)
    assert {w.filename for w in caught} == {__file__}  # the warning points at the caller
    new = Glow(num_features=1, levels=2, depth=1, hidden=4, cond_features=2, seed=0)
    assert hf.config.get_config(old) == hf.config.get_config(new)
    with pytest.raises(TypeError, match="both in_channels= .deprecated. and num_features="):
        Glow(1, in_channels=1, num_features=1)
    with pytest.warns(FutureWarning, match="recursion"):
        assert HINTCoupling(4, depth=3, hidden=4).recursion == 3
