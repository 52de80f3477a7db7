"""The reconstructing chain equals plain autograd, keeps flat memory and behaves like a module."""

from __future__ import annotations

import pytest
import torch
from helpers import NoisyCoupling, flow_loss, glow_chain, perturb_parameters
from torch import nn

import hybridflow as hf
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1, Squeeze

# (spatial_dims, input shape, squeeze first)
SHAPES = {
    "vectors": (0, (5, 4), False),
    "images": (2, (3, 2, 4, 4), True),
}


def _grads_both_modes(depth, shape_name, cond_channels, inverse=False, **chain_kwargs):
    spatial_dims, shape, squeeze = SHAPES[shape_name]
    x = torch.randn(*shape)
    cond = None
    if cond_channels:
        cond = torch.randn(
            shape[0], cond_channels, *[s // (2 if squeeze else 1) for s in shape[2:]]
        )
    results = {}
    for mode in ("store", "invert"):
        chain = glow_chain(
            shape[1],
            depth,
            mode,
            cond=cond_channels,
            spatial_dims=spatial_dims,
            squeeze=squeeze,
            **chain_kwargs,
        )
        if inverse:
            with torch.no_grad():
                start = chain(x, cond)[0]
        else:
            start = x
        inp = start.clone().requires_grad_(True)
        c = None if cond is None else cond.clone().requires_grad_(True)
        y, logdet = chain.inverse(inp, c) if inverse else chain(inp, c)
        loss = flow_loss(y, logdet)
        targets = [inp, *([c] if c is not None else []), *chain.parameters()]
        results[mode] = (loss.detach(), torch.autograd.grad(loss, targets))
    return results


def _assert_same(results, rtol=1e-10):
    loss_store, grads_store = results["store"]
    loss_invert, grads_invert = results["invert"]
    assert torch.allclose(loss_store, loss_invert, rtol=1e-12, atol=0)
    for g_store, g_invert in zip(grads_store, grads_invert, strict=True):
        error = (g_store - g_invert).norm() / g_store.norm().clamp_min(1e-300)
        assert error < rtol, f"relative gradient error {float(error):.3e}"


@pytest.mark.parametrize("depth", [1, 4, 16])
@pytest.mark.parametrize("shape_name", ["vectors", "images"])
@pytest.mark.parametrize("cond_channels", [0, 3])
def test_invert_equals_store(float64, depth, shape_name, cond_channels):
    _assert_same(_grads_both_modes(depth, shape_name, cond_channels))


@pytest.mark.parametrize("shape_name", ["vectors", "images"])
def test_invert_equals_store_through_inverse_pass(float64, shape_name):
    _assert_same(_grads_both_modes(4, shape_name, 2, inverse=True))


def test_anchors_keep_gradients_exact(float64):
    _assert_same(_grads_both_modes(8, "images", 2, anchor_every=3))


def test_gradcheck_small_chain(float64):
    chain = glow_chain(2, 2, "invert", hidden=4, cond=1, spatial_dims=0)
    x = torch.randn(3, 2, requires_grad=True)
    c = torch.randn(3, 1, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, c: chain(x, c), (x, c))
    chain = glow_chain(1, 1, "invert", hidden=4, spatial_dims=2, squeeze=True)
    x = torch.randn(2, 1, 2, 2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: chain(x), (x,))
    y = torch.randn(2, 4, 1, 1, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: chain.inverse(y), (y,))


def test_nested_chains_equal_flat_chain(float64):
    flat = glow_chain(4, 4, "store", spatial_dims=0)
    layers = list(flat)
    nested = hf.Chain(
        hf.Chain(*layers[:5], mode="store"),
        hf.Chain(*layers[5:9], mode="invert"),
        *layers[9:],
        mode="invert",
    )
    x = torch.randn(6, 4)
    grads = []
    for chain in (flat, nested):
        loss = flow_loss(*chain(x))
        grads.append(torch.autograd.grad(loss, list(flat.parameters())))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_parameters_get_ordinary_leaf_gradients():
    chain = glow_chain(4, 3, "invert", spatial_dims=0)
    reference = glow_chain(4, 3, "store", spatial_dims=0)
    x = torch.randn(8, 4)
    hooked = []
    for i, p in enumerate(chain.parameters()):
        p.register_hook(lambda g, i=i: hooked.append(i) or g)
    flow_loss(*chain(x)).backward()
    # every hook fires once, with the full gradient, as with plain autograd
    assert sorted(hooked) == list(range(len(list(chain.parameters()))))
    chain.zero_grad(set_to_none=True)
    # backward(inputs=...) only fills the named leaves
    first = next(iter(chain.parameters()))
    flow_loss(*chain(x)).backward(inputs=[first])
    assert first.grad is not None
    assert all(p.grad is None for p in list(chain.parameters())[1:])
    chain.zero_grad(set_to_none=True)
    # optimizers step exactly as with plain autograd
    for model in (chain, reference):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3):
            optimizer.zero_grad()
            flow_loss(*model(x)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    for a, b in zip(chain.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_frozen_parameters_and_input_without_grad(float64):
    chains = [glow_chain(4, 2, mode, spatial_dims=0) for mode in ("store", "invert")]
    for chain in chains:
        for layer in chain:
            if isinstance(layer, InvConv1x1):
                layer.requires_grad_(False)
    x = torch.randn(4, 4)
    grads = [
        torch.autograd.grad(flow_loss(*c(x)), [p for p in c.parameters() if p.requires_grad])
        for c in chains
    ]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("frozen", ["lower", "upper", "log_diag"])
@pytest.mark.parametrize("inverted", [False, True])
def test_a_partly_frozen_conv1x1_gets_the_gradients_of_plain_autograd(float64, frozen, inverted):
    grads = []
    for mode in ("store", "invert"):
        torch.manual_seed(1)
        conv = InvConv1x1(4)
        perturb_parameters(conv, 0.3)
        getattr(conv, frozen).requires_grad_(False)
        chain = hf.Chain(ActNorm(4), hf.layers.Inverse(conv) if inverted else conv, mode=mode)
        x = torch.randn(3, 4, 5, 5, requires_grad=True)
        trainable = [p for p in chain.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(flow_loss(*chain(x)), [x, *trainable]))
    assert len(grads[0]) == 1 + 2 + 2  # the input, ActNorm's two, the conv's two unfrozen
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_shared_layer_gradients_accumulate(float64):
    torch.manual_seed(3)
    coupling = AffineCoupling(4, hidden=8)
    with torch.no_grad():
        for p in coupling.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(5, 4)
    grads = []
    for mode in ("store", "invert"):
        chain = hf.Chain(coupling, hf.layers.InvConv1x1(4, seed=1), coupling, mode=mode)
        grads.append(torch.autograd.grad(flow_loss(*chain(x)), list(coupling.parameters())))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_condition_gradients_train_an_upstream_module(float64):
    summary = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    observations = torch.randn(8, 6)
    grads = {}
    for mode in ("store", "invert"):
        chain = glow_chain(4, 3, mode, cond=3, spatial_dims=0)
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
        loss = flow_loss(*chain(x, summary(observations)))
        grads[mode] = torch.autograd.grad(loss, list(summary.parameters()))
    for a, b in zip(grads["store"], grads["invert"], strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


class _Counting(AffineCoupling):
    """An affine coupling that counts its reconstructions."""

    calls = 0

    def reconstruct_vjp(self, *args, **kwargs):
        type(self).calls += 1
        return super().reconstruct_vjp(*args, **kwargs)


def test_each_layer_reconstructed_exactly_once_per_backward():
    _Counting.calls = 0
    depth = 6
    chain = hf.Chain(*[_Counting(4, hidden=8) for _ in range(depth)], mode="invert")
    x = torch.randn(3, 4)
    loss = flow_loss(*chain(x))
    assert _Counting.calls == 0
    loss.backward()
    assert _Counting.calls == depth
    _Counting.calls = 0
    nested = hf.Chain(hf.Chain(*[_Counting(4, hidden=8) for _ in range(3)]), _Counting(4))
    flow_loss(*nested(x)).backward()
    assert _Counting.calls == 4


def _saved_bytes(chain: hf.Chain, x: torch.Tensor) -> int:
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        # detached: a saved output packed as itself would hold its own grad_fn in a cycle
        # that Python's collector cannot see, leaking the graph (no backward follows here)
        return tensor.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chain(x)
    return total


def test_saved_bytes_flat_in_depth_for_invert_and_growing_for_store():
    # without the drift guard's fingerprints (drift_every=0): exactly flat
    x = torch.randn(2, 3, 8, 8)
    saved = {
        (mode, depth): _saved_bytes(glow_chain(3, depth, mode, squeeze=True, drift_every=0), x)
        for mode in ("store", "invert")
        for depth in (4, 32)
    }
    assert saved["invert", 4] == saved["invert", 32]
    assert saved["invert", 4] <= x.numel() * x.element_size()
    assert saved["store", 32] > 4 * saved["store", 4]
    anchored = _saved_bytes(
        glow_chain(3, 32, "invert", squeeze=True, anchor_every=16, drift_every=0), x
    )
    # one anchor in 3 * 32 + 1 layers, every 16 layers: 6 activations beyond the output
    assert anchored == saved["invert", 4] + 6 * x.numel() * x.element_size()


def test_drift_guard_keeps_nine_numbers_per_sample_and_layer():
    x = torch.randn(2, 3, 8, 8)
    guarded = {d: _saved_bytes(glow_chain(3, d, "invert", squeeze=True), x) for d in (4, 32)}
    bare = _saved_bytes(glow_chain(3, 4, "invert", squeeze=True, drift_every=0), x)
    layers = {d: 1 + 3 * d for d in (4, 32)}  # squeeze + (ActNorm, InvConv1x1, coupling) steps
    per_layer = x.shape[0] * 9 * x.element_size()
    for depth in (4, 32):  # kept in chunks of 8, 16, 32, 64 layers: at most twice, plus 8
        extra = guarded[depth] - bare
        assert layers[depth] * per_layer <= extra <= (2 * layers[depth] + 8) * per_layer


@pytest.mark.parametrize("nested", [False, True])
def test_random_layers_are_replayed_during_reconstruction(float64, nested):
    layers = [NoisyCoupling(4) for _ in range(4)]
    chain = (
        hf.Chain(layers[0], hf.Chain(*layers[1:3], mode="store"), layers[3])
        if nested
        else hf.Chain(*layers)
    ).train()

    def loss(x):
        torch.manual_seed(42)  # the same dropout masks at every evaluation
        return flow_loss(*chain(x))

    # The Taylor test checks the reconstructed gradient against the function's own values: a
    # mask drawn differently during reconstruction would leave an O(h) second-order error.
    hf.testing.check_taylor(loss, torch.randn(6, 4))
    torch.manual_seed(42)
    with torch.no_grad():
        y, _ = chain(torch.ones(6, 4))
    torch.manual_seed(43)
    with torch.no_grad():
        y_other, _ = chain(torch.ones(6, 4))
    assert not torch.allclose(y, y_other)  # dropout really is random across calls


def test_random_layers_follow_manual_seed_and_advance_the_generator_deterministically():
    chain = hf.Chain(*[NoisyCoupling(4) for _ in range(3)]).train()
    x = torch.randn(6, 4)

    def run(seed):
        torch.manual_seed(seed)
        y, _ = chain(x)
        y.sum().backward()  # the backward re-seeds the layers and restores the generator
        return y.detach(), torch.rand(3)

    (y, after), (y_again, after_again) = run(5), run(5)
    torch.testing.assert_close(y_again, y)
    torch.testing.assert_close(after_again, after)  # the generator moved the same way
    torch.manual_seed(5)
    assert not torch.equal(after, torch.rand(3))  # it moved: one draw for the call's seed


class _StochasticShift(hf.InvertibleModule):
    """A user layer without a declaration: it may draw, so it is re-seeded."""

    def forward(self, x, cond=None):
        return x, x.new_zeros(x.shape[0])

    def inverse(self, y, cond=None):
        return y, y.new_zeros(y.shape[0])


class _UndeclaredActNorm(hf.layers.ActNorm):
    """A subclass that does not restate the declaration of ActNorm."""


def test_which_layers_count_as_drawing_random_numbers():
    draws = hf.autograd.draws_random_numbers
    deterministic = [
        glow_chain(3, 2, "invert", squeeze=True),
        hf.networks.Glow(3, levels=2, depth=1, hidden=4, cond_features=1),
        hf.networks.HINT(4, depth=1, hidden=4),
        hf.layers.SplineCoupling(4, subnet=lambda i, o: nn.Sequential(nn.Linear(i, o), nn.GELU())),
    ]
    drawing = [
        NoisyCoupling(4),  # nn.Dropout in its conditioner
        hf.layers.AffineCoupling(4, subnet=lambda i, o: nn.Sequential(nn.Linear(i, o), nn.RReLU())),
        _StochasticShift(),
        _UndeclaredActNorm(4),
        hf.Chain(hf.layers.ActNorm(4), NoisyCoupling(4)),
    ]
    assert [draws(m) for m in deterministic] == [False] * len(deterministic)
    assert [draws(m) for m in drawing] == [True] * len(drawing)


def test_invert_mode_forks_the_generators_only_for_layers_that_draw(monkeypatch):
    forks = []
    fork_rng = torch.random.fork_rng

    def counting(*args, **kwargs):
        forks.append(1)
        return fork_rng(*args, **kwargs)

    monkeypatch.setattr(torch.random, "fork_rng", counting)
    x = torch.randn(6, 4)
    for noisy, expected in ((0, 0), (1, 2), (2, 4)):  # once forward, once reconstructing
        layers = [hf.layers.ActNorm(4), hf.layers.Reverse(4)] + [NoisyCoupling(4)] * noisy
        chain = hf.Chain(*layers, mode="invert").train()
        forks.clear()
        flow_loss(*chain(x)).backward()
        assert len(forks) == expected


class _AutocastProbe(hf.InvertibleModule):
    """A layer without a hand-written rule that records whether autocast is on."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.seen: list[bool] = []

    def forward(self, x, cond=None):
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return x * self.scale, x.new_full((x.shape[0],), float(x[0].numel())) * self.scale.log()

    def inverse(self, y, cond=None):
        return y / self.scale, -y.new_full((y.shape[0],), float(y[0].numel())) * self.scale.log()


def test_autocast_state_is_replayed_by_the_generic_rule():
    probe = _AutocastProbe()
    chain = hf.Chain(probe, mode="invert")
    x = torch.randn(4, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, logdet = chain(x)
    probe.seen.clear()
    (y.float().sum() + logdet.float().sum()).backward()
    assert probe.seen == [True]  # the re-run forward saw the forward's autocast state
    assert x.grad is not None and probe.scale.grad is not None


def test_actnorm_initialises_once_and_never_during_reconstruction():
    torch.manual_seed(0)

    class GenericActNorm(ActNorm):
        reconstruct_vjp = hf.InvertibleModule.reconstruct_vjp

    for actnorm in (ActNorm(3), GenericActNorm(3)):
        chain = hf.Chain(actnorm, AffineCoupling(3, hidden=8), mode="invert")
        x = 3 + 2 * torch.randn(64, 3)
        y, logdet = chain(x)
        assert actnorm.is_initialized
        after_init = [p.detach().clone() for p in actnorm.parameters()]
        h = actnorm(x)[0]
        torch.testing.assert_close(h.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(h.std(0, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
        flow_loss(y, logdet).backward()
        for before, p in zip(after_init, actnorm.parameters(), strict=True):
            assert torch.equal(before, p.detach())


@pytest.mark.parametrize("loss", [flow_loss, lambda y, logdet: y.sum()])
def test_double_backward_raises_a_clear_error(loss):
    chain = glow_chain(4, 2, "invert", spatial_dims=0)
    x = torch.randn(3, 4, requires_grad=True)
    # also when the incoming gradient is a constant (sum), where once_differentiable is silent
    with pytest.raises(RuntimeError, match=r"double backward.*mode='store'"):
        torch.autograd.grad(loss(*chain(x)), x, create_graph=True)
    store = glow_chain(4, 2, "store", spatial_dims=0)
    (grad,) = torch.autograd.grad(loss(*store(x)), x, create_graph=True)
    grad.pow(2).sum().backward()  # store mode differentiates twice


def test_state_dict_round_trip_keeps_actnorm_flag():
    chain = glow_chain(4, 2, "invert", spatial_dims=0)
    fresh = glow_chain(4, 2, "invert", spatial_dims=0, seed=5)
    fresh[0].mark_initialized(False)
    assert not fresh[0].is_initialized
    fresh.load_state_dict(chain.state_dict())
    assert fresh[0].is_initialized
    x = torch.randn(5, 4)
    torch.testing.assert_close(fresh(x)[0], chain(x)[0], rtol=0, atol=0)


def test_empty_chain_is_identity():
    x = torch.randn(2, 3, requires_grad=True)
    y, logdet = hf.Chain()(x)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(2))


def test_store_and_invert_forward_outputs_identical():
    x = torch.randn(2, 3, 8, 8)
    outs = [glow_chain(3, 4, mode, squeeze=True)(x) for mode in ("store", "invert")]
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_chain_rejects_non_invertible_modules_and_bad_options():
    with pytest.raises(TypeError, match="item 1 is a Linear"):
        hf.Chain(ActNorm(2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="mode"):
        hf.Chain(ActNorm(2), mode="fast")
    with pytest.raises(ValueError, match="anchor_every"):
        hf.Chain(ActNorm(2), anchor_every=0)


def test_repr_and_indexing():
    chain = hf.Chain(ActNorm(2), Squeeze(2), anchor_every=2)
    assert len(chain) == 2 and isinstance(chain[1], Squeeze)
    assert "anchor_every=2" in repr(chain) and "mode='invert'" in repr(chain)


def test_chain_moves_and_casts_like_any_module():
    chain = glow_chain(3, 2, "invert", squeeze=True).double()
    assert all(
        t.dtype == torch.float64 for t in chain.state_dict().values() if t.is_floating_point()
    )
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    flow_loss(*chain(x)).backward()
    assert x.grad.dtype == torch.float64
    chain.to(torch.float32)
    assert chain[1].log_scale.dtype == torch.float32


@pytest.mark.parametrize("slices", [2, 3, 7])
def test_micro_batched_reconstruction_gives_the_same_gradients(float64, slices):
    results = {}
    for name, kwargs in {"full": {}, "sliced": {"micro_batches": slices}}.items():
        chain = glow_chain(3, 4, "invert", cond=2, squeeze=True, **kwargs)
        x = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(2), requires_grad=True)
        c = torch.randn(5, 2, 2, 2, generator=torch.Generator().manual_seed(3), requires_grad=True)
        loss = flow_loss(*chain(x, c))
        results[name] = torch.autograd.grad(loss, [x, c, *chain.parameters()])
    for a, b in zip(results["full"], results["sliced"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_micro_batching_refuses_batch_coupled_layers():
    coupling = AffineCoupling(
        4, subnet=lambda i, o: nn.Sequential(nn.Linear(i, 8), nn.BatchNorm1d(8), nn.Linear(8, o))
    )
    chain = hf.Chain(ActNorm(4), coupling, micro_batches=2)
    with pytest.raises(ValueError, match=r"layers.1.conditioner.1 is a BatchNorm1d in training"):
        chain(torch.randn(4, 4, requires_grad=True))
    chain.eval()
    chain(torch.randn(4, 4, requires_grad=True))[0].sum().backward()


class _NoisyScale(hf.InvertibleModule):
    """``y = x * s * exp(eps)`` with ``eps`` drawn at every call; no hand-written rule, so the
    generic rule must invert and re-run with the same draws (the VJP depends on ``eps``)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.3))

    def _logdet(self, x, noise):
        return self.scale.log() * x[0].numel() + noise.flatten(1).sum(1)

    def forward(self, x, cond=None):
        noise = 0.1 * torch.randn_like(x)
        return x * self.scale * noise.exp(), self._logdet(x, noise)

    def inverse(self, y, cond=None):
        noise = 0.1 * torch.randn_like(y)
        return y / (self.scale * noise.exp()), -self._logdet(y, noise)


def test_generic_rule_replays_random_draws(float64):
    chain = hf.Chain(_NoisyScale(), AffineCoupling(4, hidden=8), _NoisyScale())

    def loss(x):
        torch.manual_seed(7)
        return flow_loss(*chain(x))

    hf.testing.check_taylor(loss, torch.randn(5, 4))


def _conditioner_rows(chain, x):
    """The batch sizes the coupling's conditioner saw in one forward and backward pass."""
    calls = []
    handle = chain[1].conditioner.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        flow_loss(*chain(x)).backward()
    finally:
        handle.remove()
    return calls


def test_micro_batches_slice_the_forward_pass_too(float64):
    torch.manual_seed(0)
    chain = hf.Chain(ActNorm(4), AffineCoupling(4, hidden=8), micro_batches=4)
    x = torch.randn(8, 4, requires_grad=True)
    # the first call initialises ActNorm on the whole batch: its forward pass is not sliced
    assert _conditioner_rows(chain, x) == [8, 2, 2, 2, 2]
    x.grad = None
    assert _conditioner_rows(chain, x) == [2] * 8  # four slices forward, four backward
    reference = hf.Chain(*chain.layers, mode="store")
    grads = torch.autograd.grad(flow_loss(*reference(x)), [x, *reference.parameters()])
    sliced = torch.autograd.grad(flow_loss(*chain(x)), [x, *chain.parameters()])
    for a, b in zip(grads, sliced, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    anchored = hf.Chain(*chain.layers, anchor_every=1, micro_batches=4)
    assert _conditioner_rows(anchored, x) == [8, 2, 2, 2, 2]  # anchors: a whole forward pass
    torch.manual_seed(3)
    chain(x)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))  # no layer draws: the call draws no seed either


def test_micro_batched_chain_replays_random_draws_per_slice(float64):
    # each slice of the forward pass and of its reconstruction draws the same numbers: the
    # rebuilt inputs are those of the forward pass (no drift), so no error is raised
    layers = (_NoisyScale(), AffineCoupling(4, hidden=8), _NoisyScale())
    chain = hf.Chain(*layers, micro_batches=3, on_drift="raise", drift_every=1)
    x = torch.randn(6, 4, requires_grad=True)
    for _ in range(2):
        flow_loss(*chain(x)).backward()
        assert chain.drift_report.max_error < 1e-12
    torch.manual_seed(3)
    chain(x)
    after = torch.rand(3)
    torch.manual_seed(3)
    torch.randint((1 << 63) - 1, ())  # the call's seed: one draw, whatever the slices
    assert torch.equal(after, torch.rand(3))
    # each slice draws its own numbers: equal rows in two slices get different noise
    y, _ = hf.Chain(_NoisyScale(), micro_batches=2)(torch.ones(4, 2, requires_grad=True))
    assert not torch.equal(y[:2], y[2:])
