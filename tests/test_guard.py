"""Invert mode never returns a wrong gradient silently: version checks and the drift guard."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from helpers import ExplodingInverse, flow_loss, glow_chain
from torch import nn

import hybridflow as hf
from hybridflow.errors import DriftWarning, ModifiedError, ReconstructionError
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _template():
    spec = importlib.util.spec_from_file_location(
        "template", EXAMPLES / "invertible_block_template.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _grads(chain, x, cond=None):
    inp = x.clone().requires_grad_(True)
    out = chain(inp) if cond is None else chain(inp, cond)
    return torch.autograd.grad(flow_loss(*out), [inp, *chain.parameters()])


# -- version checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["store", "invert"])
def test_optimizer_step_between_forward_and_backward_raises_in_both_modes(mode):
    chain = glow_chain(4, 3, mode, spatial_dims=0)
    optimizer = torch.optim.SGD(chain.parameters(), lr=0.1)
    loss = flow_loss(*chain(torch.randn(8, 4)))
    loss.backward(retain_graph=True)
    optimizer.step()
    with pytest.raises(RuntimeError, match="modified|changed") as caught:
        loss.backward()
    if mode == "invert":
        assert isinstance(caught.value, ModifiedError)
        assert "parameter 'layers." in str(caught.value)
        assert caught.value.where == ("Chain of 9 layers",)


def test_in_place_edit_of_one_parameter_is_named():
    chain = glow_chain(4, 2, "invert", spatial_dims=0)
    loss = flow_loss(*chain(torch.randn(8, 4)))
    with torch.no_grad():
        chain[3].log_scale.add_(0.1)  # the second step's ActNorm
    with pytest.raises(ModifiedError, match=r"parameter 'layers\.3\.log_scale'") as caught:
        loss.backward()
    assert caught.value.tensor == "parameter 'layers.3.log_scale'"


def test_replaced_parameter_and_edited_buffer_are_caught():
    chain = glow_chain(4, 2, "invert", spatial_dims=0)
    loss = flow_loss(*chain(torch.randn(8, 4)))
    chain[0].bias = nn.Parameter(chain[0].bias.detach() + 1)
    with pytest.raises(ModifiedError, match="replaced"):
        loss.backward()
    chain = glow_chain(4, 2, "invert", spatial_dims=0)
    loss = flow_loss(*chain(torch.randn(8, 4)))
    buffer_name, buffer = next((n, b) for n, b in chain.named_buffers() if b.is_floating_point())
    buffer.mul_(1.0)  # an in-place write, even of the same values, bumps the version
    with pytest.raises(ModifiedError, match=buffer_name):
        loss.backward()


def test_output_or_condition_modified_in_place_is_caught():
    chain = glow_chain(4, 2, "invert", cond=3, spatial_dims=0)
    cond = torch.randn(8, 3, requires_grad=True)
    z, logdet = chain(torch.randn(8, 4), cond)
    loss = flow_loss(z, logdet)
    z.data  # noqa: B018 - reading is fine
    with torch.no_grad():
        cond.mul_(2)
    with pytest.raises(ModifiedError, match="output or its condition"):
        loss.backward()


def test_nested_chain_and_graph_segments_check_versions():
    inner = glow_chain(4, 2, "store", spatial_dims=0)
    outer = hf.Chain(inner, InvConv1x1(4), mode="invert")
    loss = flow_loss(*outer(torch.randn(8, 4)))
    with torch.no_grad():
        inner[0].log_scale.add_(0.1)
    with pytest.raises(ModifiedError, match=r"layers\.0\.layers\.0\.log_scale"):
        loss.backward()

    for micro_batches in (1, 2):
        graph = (
            hf.Graph()
            .input("x")
            .invertible("flow", glow_chain(4, 2, "store", spatial_dims=0), "x")
            .output("flow", "z")
            .output("flow.logdet", "logdet")
        )
        strategy = hf.Strategy("invert", micro_batches=micro_batches)
        module = graph.build({"x": torch.randn(8, 4)}, pin={"flow": strategy})
        out = module(x=torch.randn(8, 4))
        loss = flow_loss(out["z"], out["logdet"])
        with torch.no_grad():
            next(module.parameters()).add_(0.1)
        with pytest.raises(ModifiedError):
            loss.backward()


# -- the drift guard ----------------------------------------------------------------------------


def _wrong_inverse_block(template, error):
    class WrongInverse(template.ConditionalScaleShift):
        """An inverse off by ``error`` (relative), reconstructed by the generic rule (which
        calls the inverse): reconstruction rebuilds the wrong input."""

        reconstruct_vjp = hf.InvertibleModule.reconstruct_vjp

        def inverse(self, y, cond=None):
            x, logdet = super().inverse(y, cond)
            return x * (1 + error), logdet

    return WrongInverse


def test_a_wrong_user_inverse_is_flagged_on_the_first_step():
    template = _template()
    torch.manual_seed(0)
    blocks = [template.ConditionalScaleShift(3, 2) for _ in range(3)]
    blocks.insert(2, _wrong_inverse_block(template, 0.01)(3, 2))
    chain = hf.Chain(*blocks, InvConv1x1(3))
    with pytest.warns(DriftWarning, match=r"layer 2 \(WrongInverse\).*off by 1\.\d+e-02"):
        _grads(chain, torch.randn(16, 3), torch.randn(16, 2))
    report = chain.drift_report
    assert report.exceeded == "layer 2 (WrongInverse)"
    assert report.errors["layer 3 (ConditionalScaleShift)"] < 1e-5
    with warnings.catch_warnings():  # warned once per chain
        warnings.simplefilter("error")
        _grads(chain, torch.randn(16, 3), torch.randn(16, 2))


def test_on_drift_raise_refuses_before_any_gradient_reaches_the_parameters():
    template = _template()
    block = _wrong_inverse_block(template, 0.01)(3, 2)
    chain = hf.Chain(ActNorm(3), block, on_drift="raise", drift_every=1)
    chain(torch.randn(16, 3), torch.randn(16, 2))  # initialise ActNorm
    x = torch.randn(16, 3)
    loss = flow_loss(*chain(x, torch.randn(16, 2)))
    with pytest.raises(ReconstructionError, match=r"layer 1 \(WrongInverse\)") as caught:
        loss.backward()
    assert caught.value.layer == "layer 1 (WrongInverse)" and caught.value.error > 5e-3
    assert all(p.grad is None for p in chain.parameters())


def test_on_drift_repair_keeps_anchors_and_makes_later_steps_exact(float64):
    template = _template()
    torch.manual_seed(1)
    blocks = [template.ConditionalScaleShift(3, 2) for _ in range(6)]
    blocks[3] = _wrong_inverse_block(template, 1e-3)(3, 2)
    chain = hf.Chain(*blocks, on_drift="repair")
    store = hf.Chain(*blocks, mode="store")
    x, cond = torch.randn(8, 3), torch.randn(8, 2)
    with pytest.warns(DriftWarning, match="repaired from the next call on"):
        _grads(chain, x, cond)
    repaired = _grads(chain, x, cond)
    expected = _grads(store, x, cond)
    for got, want in zip(repaired, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("drift_every", [0, 1])
def test_non_finite_reconstruction_always_raises(drift_every):
    chain = hf.Chain(InvConv1x1(3), ExplodingInverse(), InvConv1x1(3), drift_every=drift_every)
    x = torch.randn(8, 3)
    loss = flow_loss(*chain(x.requires_grad_(True)))
    with pytest.raises(ReconstructionError, match="NaN/Inf"):
        loss.backward()
    assert x.grad is None


def test_healthy_chain_reports_small_drift_per_nested_layer():
    chain = hf.Chain(glow_chain(4, 2, "store", spatial_dims=0), InvConv1x1(4))
    _grads(chain, torch.randn(8, 4))
    report = chain.drift_report
    assert report is not None and report.call == 1
    assert "layer 0 (Chain) > layer 2 (AffineCoupling)" in report.errors
    assert report.max_error < 1e-5 and report.exceeded is None


def test_drift_every_checks_one_call_in_n():
    chain = glow_chain(4, 1, "invert", spatial_dims=0, drift_every=3)
    calls = []
    for _ in range(7):
        _grads(chain, torch.randn(8, 4))
        calls.append(chain.drift_report.call)
    assert calls == [1, 1, 1, 4, 4, 4, 7]


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"on_drift": "ignore"}, "on_drift"),
        ({"drift_tolerance": 0.0}, "drift_tolerance"),
        ({"drift_tolerance": "1e-3"}, "drift_tolerance"),
        ({"drift_every": -1}, "drift_every"),
        ({"drift_every": 1.5}, "drift_every"),
    ],
)
def test_guard_settings_are_checked(kwargs, argument):
    with pytest.raises((ValueError, TypeError), match=argument) as caught:
        hf.Chain(InvConv1x1(3), **kwargs)
    assert caught.value.argument == argument


def test_guard_memory_is_below_one_percent_of_an_activation_for_images():
    chain = hf.Chain(*[InvConv1x1(12) for _ in range(8)])
    x = torch.randn(2, 12, 16, 16, requires_grad=True)  # 3072 numbers per sample
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chain(x)
    activation = x.numel()
    fingerprints = sum(s for s in sizes if s != activation)  # one chunk of 8 layers
    assert fingerprints / 8 <= 0.01 * activation


# -- running statistics -------------------------------------------------------------------------


def _batchnorm_subnet(in_features, out_features):
    return nn.Sequential(
        nn.Linear(in_features, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, out_features)
    )


def test_batchnorm_running_statistics_are_updated_once_per_step(float64):
    buffers = {}
    for mode in ("store", "invert"):
        torch.manual_seed(0)
        chain = hf.Chain(AffineCoupling(4, subnet=_batchnorm_subnet), InvConv1x1(4), mode=mode)
        optimizer = torch.optim.SGD(chain.parameters(), lr=1e-2)
        batches = torch.randn(3, 32, 4, generator=torch.Generator().manual_seed(1))
        for batch in batches:
            optimizer.zero_grad()
            flow_loss(*chain(batch)).backward()
            optimizer.step()
        buffers[mode] = dict(chain.named_buffers())
    assert buffers["invert"].keys() == buffers["store"].keys()
    for key, value in buffers["store"].items():
        torch.testing.assert_close(buffers["invert"][key], value, rtol=1e-12, atol=1e-12)
    tracked = [k for k in buffers["store"] if k.endswith("num_batches_tracked")]
    assert tracked and all(int(buffers["invert"][k]) == 3 for k in tracked)


class _CountingSubnet(nn.Module):
    """A conditioner whose output depends on a buffer its forward pass updates."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return self.linear(x) * 0.0 + self.calls * 0


def test_a_module_with_hidden_state_is_refused_at_the_first_forward():
    chain = hf.Chain(InvConv1x1(4), AffineCoupling(4, subnet=_CountingSubnet))
    with pytest.raises(ReconstructionError, match=r"buffer 'subnet.calls'|calls.*changed"):
        chain(torch.randn(8, 4, requires_grad=True))


# -- ActNorm initialisation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (torch.tensor([[1.0, float("nan"), 2.0], [0.0, 1.0, 2.0]]), "NaN/Inf"),
        (torch.tensor([[1.0, float("inf"), 2.0], [0.0, 1.0, 2.0]]), "NaN/Inf"),
        (torch.empty(0, 3), "empty batch"),
    ],
)
@pytest.mark.parametrize("mode", ["store", "invert"])
def test_actnorm_refuses_a_poisoned_first_batch(batch, message, mode):
    chain = hf.Chain(ActNorm(3), InvConv1x1(3), mode=mode)
    before = {k: v.clone() for k, v in chain.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        chain(batch)
    assert not chain[0].is_initialized
    for key, value in chain.state_dict().items():
        assert torch.equal(value, before[key])


def test_actnorm_on_a_single_vector_warns_and_keeps_unit_scale():
    norm = ActNorm(3)
    x = torch.tensor([[1.0, -2.0, 5.0]])
    with pytest.warns(UserWarning, match="too few"):
        y, _ = norm(x)
    assert torch.equal(norm.log_scale, torch.zeros(3))
    torch.testing.assert_close(y, torch.zeros(1, 3))


def test_actnorm_constant_channel_keeps_unit_scale():
    norm = ActNorm(3)
    x = torch.randn(16, 3)
    x[:, 1] = 4.0
    with pytest.warns(UserWarning, match="1 of 3 channels are constant"):
        norm(x)
    assert float(norm.log_scale[1]) == 0.0 and torch.isfinite(norm.log_scale).all()
    assert abs(float(norm.log_scale[0])) < 2


def test_graph_planner_anchors_where_the_guard_measured_drift():
    template = _template()
    torch.manual_seed(0)
    blocks = [template.ConditionalScaleShift(3, 2) for _ in range(7)]
    blocks[1] = _wrong_inverse_block(template, 1e-2)(3, 2)
    graph = hf.Graph().input("x").input("c")
    previous = "x"
    for i, block in enumerate(blocks):
        graph.invertible(f"b{i}", block, previous, cond="c")
        previous = f"b{i}"
    graph.output(previous, "z").output(f"{previous}.logdet", "logdet")
    sample = {"x": torch.randn(8, 3), "c": torch.randn(8, 2)}
    module = graph.build(sample)
    assert module.current_plan.strategies()["b0"] == hf.Strategy("invert")
    out = module(x=sample["x"].requires_grad_(True), c=sample["c"])
    with pytest.warns(DriftWarning, match=r"layer 1 \(WrongInverse\)"):
        flow_loss(out["z"], out["logdet"]).backward()
    report = module.drift_reports()["b0"]
    assert report.exceeded == "layer 1 (WrongInverse)" and report.exceeded_after() == 6
    plan = module.plan()
    assert plan.strategies()["b0"].anchor_every == 2  # rebuilt 6 nodes before: half of it


def test_anchors_are_kept_between_nested_chains():
    steps = [glow_chain(4, 1, "store", spatial_dims=0, seed=i) for i in range(4)]
    chain = hf.Chain(*steps, anchor_every=2, drift_every=0)
    x = torch.randn(8, 4, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z, logdet = chain(x)
    assert sizes.count(x.numel()) == 2  # the output and the input of step 2
    flow_loss(z, logdet).backward()


def test_npe_trainer_logs_the_measured_drift():
    from hybridflow.distributions import coupling_flow
    from hybridflow.sbi import NPEConfig, NPETrainer

    torch.manual_seed(0)
    flow = hf.ConditionalFlow(
        coupling_flow(2, 3, depth=2, hidden=8, mode="invert"), event_shape=(2,)
    )
    theta, x = torch.randn(64, 2), torch.randn(64, 3)
    records = []
    config = NPEConfig(max_epochs=2, batch_size=32, validation_fraction=0.0, progress=False)
    history = NPETrainer(flow, config).fit(theta, x, on_epoch_end=records.append)
    assert len(history.drift) == 2 and all(0 <= d < 1e-4 for d in history.drift)
    assert [r.drift for r in records] == history.drift
