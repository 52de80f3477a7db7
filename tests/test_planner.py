"""Planner: plans fit their budgets, estimates match the bytes really kept for backward, a
budget below the minimum says what the minimum is, pins and micro-batching rules hold."""

from __future__ import annotations

import math

import pytest
import torch
from test_graph import FLOW, step
from torch import nn

import hybridflow as hf
from hybridflow.graph import Budget, BudgetError, Graph, Strategy, format_bytes, parse_bytes
from hybridflow.graph import planner as planner_module
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1
from hybridflow.testing.graphs import hybrid_graph
from hybridflow.testing.graphs import kept_bytes as graph_kept_bytes


def kept_bytes(model: nn.Module, sample: dict[str, torch.Tensor], warm_up: bool = True) -> int:
    """Bytes kept for backward by one forward pass of ``model`` on ``sample`` (inputs other
    than ``data`` requiring grad), then backward (:func:`hybridflow.testing.graphs.kept_bytes`)."""
    inputs = {k: v.clone().requires_grad_(k != "data") for k, v in sample.items()}
    return graph_kept_bytes(model, inputs, warm_up)


@pytest.fixture(scope="module")
def float32_graph():
    graph, sample = hybrid_graph(torch.float32, batch=8, side=16, hidden=16)
    return graph.build(sample, cost="flops"), sample


def test_three_budgets_fit_and_estimates_match_measurements(float32_graph):
    model, sample = float32_graph
    with pytest.raises(BudgetError) as caught:
        model.plan(1)
    tight = caught.value.minimum
    unlimited_plan = model.plan(math.inf)
    medium = (tight + unlimited_plan.peak_bytes) / 2
    kept = {}
    for name, budget in [("tight", tight), ("medium", medium), ("unlimited", math.inf)]:
        plan = model.plan(budget)
        assert plan.peak_bytes <= budget
        measured = kept_bytes(model, sample)
        assert measured <= budget, name
        assert abs(plan.kept_bytes - measured) <= 0.2 * measured, (name, plan.kept_bytes, measured)
        kept[name] = measured
    assert kept["tight"] < kept["medium"] <= kept["unlimited"]
    strategies = model.plan(tight).strategies()
    assert strategies["glow"].kind == "invert" and strategies["glow"].micro_batches > 1
    assert {s.kind for s in model.plan(math.inf).strategies().values()} == {"store"}


def test_budget_below_minimum_states_the_minimum(float32_graph):
    model, _ = float32_graph
    with pytest.raises(BudgetError) as caught:
        model.plan("1KiB")
    minimum = caught.value.minimum
    assert isinstance(caught.value, ValueError)
    assert format_bytes(minimum) in str(caught.value) and f"{minimum:.0f} bytes" in str(
        caught.value
    )
    assert model.plan(minimum).peak_bytes == pytest.approx(minimum)
    before = model.current_plan
    with pytest.raises(BudgetError, match="pinned"):
        model.plan(minimum, pin={"summary": "store", "glow": "store"}, batch_size=16)
    assert model.current_plan is before and model.batch_size == 8  # nothing changed


def test_estimates_scale_to_the_planned_batch():
    graph, small = hybrid_graph(torch.float32, batch=2, side=16, hidden=16)
    _, full = hybrid_graph(torch.float32, batch=8, side=16, hidden=16)
    model = graph.build(small, batch_size=8, cost="flops")
    for budget in (None, math.inf):
        plan = model.plan(budget)
        assert plan.batch_size == 8
        measured = kept_bytes(model, full)
        assert abs(plan.kept_bytes - measured) <= 0.2 * measured


def test_invert_keeps_the_same_bytes_at_every_depth():
    measured = {}
    for depth in (1, 4):
        graph, sample = hybrid_graph(torch.float32, batch=4, side=16, hidden=8, depth=depth)
        model = graph.build(sample, cost="flops")
        flat = kept_bytes(model, sample)
        model.plan(math.inf)
        measured[depth] = (flat, kept_bytes(model, sample))
    assert measured[1][0] == measured[4][0]
    assert measured[4][1] > 1.5 * measured[1][1]  # store grows with depth


def test_checkpoint_recomputes_and_store_does_not(float32_graph):
    model, sample = float32_graph
    calls = []
    # the first layer: checkpoint's recomputation stops once it has what backward needs,
    # before the container's own forward hook would run
    handle = model.nodes["summary"][0].register_forward_hook(lambda *args: calls.append(1))
    try:
        for pin, expected in (("store", 1), ("checkpoint", 2)):
            calls.clear()
            model.plan(pin={"summary": pin})
            kept_bytes(model, sample, warm_up=False)
            assert len(calls) == expected
    finally:
        handle.remove()


def _conditioner_calls(model, sample, pin):
    coupling = model.nodes["c"]
    calls = []
    handle = coupling.conditioner.register_forward_hook(
        lambda *args: calls.append(args[1][0].shape[0])
    )
    try:
        model.plan(pin=dict.fromkeys(("a", "c"), pin))
        x = sample.clone().requires_grad_(True)
        model(x=x)["loss"].backward()
    finally:
        handle.remove()
    return calls, x.grad


def test_micro_batches_slice_forward_and_backward():
    torch.manual_seed(0)
    graph = (
        Graph()
        .input("x")
        .invertible("a", ActNorm(4).double(), "x")
        .invertible("c", AffineCoupling(4, hidden=8).double(), "a")
        .autograd("loss", lambda z, ld: (z.pow(3) - ld[:, None]).sum(), ["c", "c.logdet"])
        .output("loss")
    )
    x = 3 * torch.randn(8, 4, dtype=torch.float64) + 1
    model = graph.build({"x": x})
    nn.init.normal_(model.nodes["c"].conditioner[-1].weight)
    # the first call initialises ActNorm from the whole batch: the forward pass is not sliced
    calls, _ = _conditioner_calls(model, x, Strategy("invert", micro_batches=4))
    assert calls == [8, 2, 2, 2, 2]
    z = model.nodes["a"](x)[0]
    torch.testing.assert_close(z.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    _, reference = _conditioner_calls(model, x, "store")
    calls, grad = _conditioner_calls(model, x, Strategy("invert", micro_batches=4))
    assert calls == [2] * 8  # four slices forward, four in the reconstruction
    torch.testing.assert_close(grad, reference, rtol=1e-12, atol=1e-12)
    calls, grad = _conditioner_calls(model, x, Strategy("invert", anchor_every=1, micro_batches=4))
    assert calls == [8, 2, 2, 2, 2]  # with anchors the chain's own Function runs the forward
    torch.testing.assert_close(grad, reference, rtol=1e-12, atol=1e-12)


def test_micro_batches_refuse_modules_that_couple_samples():
    torch.manual_seed(0)

    def subnet(features_in, features_out):
        return nn.Sequential(
            nn.Linear(features_in, 8), nn.BatchNorm1d(8), nn.Linear(8, features_out)
        )

    graph = (
        Graph()
        .input("x")
        .invertible("flow", AffineCoupling(4, subnet=subnet), "x")
        .invertible("mix", InvConv1x1(4), "flow")
        .autograd("loss", lambda z: z.pow(2).sum(), "mix")
        .output("loss")
    )
    x = torch.randn(8, 4)
    model = graph.build({"x": x})
    with pytest.raises(ValueError, match=r"node 'flow'.*BatchNorm1d in training mode"):
        model.plan(pin={"flow": Strategy("invert", micro_batches=2), "mix": "invert"})
    # the planner never slices this segment, even when slicing would save memory
    tight = model.plan(1_000_000_000).minimum_peak_bytes
    assert all(s.strategy.micro_batches == 1 for s in model.plan(tight).segments)
    # in eval mode slicing is allowed; back in training mode the call refuses it
    model.eval()
    model.plan(
        pin={
            "flow": Strategy("invert", micro_batches=2),
            "mix": Strategy("invert", micro_batches=2),
        }
    )
    model(x=x)["loss"].backward()
    model.train()
    with pytest.raises(ValueError, match=r"node 'flow'.*BatchNorm1d"):
        model(x=x)


def test_max_inverted_run_adds_anchors():
    torch.manual_seed(0)
    graph = Graph().input("x")
    previous = "x"
    for i in range(6):
        graph.invertible(f"f{i}", InvConv1x1(3), previous)
        previous = f"f{i}"
    model = (
        graph.autograd("loss", lambda z: z.pow(2).sum(), previous)
        .output("loss")
        .build({"x": torch.randn(4, 3)})
    )
    assert model.plan().segments[0].strategy == Strategy("invert")
    (segment, _) = model.plan(max_inverted_run=2).segments
    assert segment.strategy.kind == "invert" and segment.strategy.anchor_every <= 2
    assert model.plan(max_inverted_run=6).segments[0].strategy == Strategy("invert")
    with pytest.raises(ValueError, match="max_inverted_run"):
        model.plan(max_inverted_run=0)


def test_pins_are_kept_and_checked(float32_graph):
    model, _ = float32_graph
    plan = model.plan(math.inf, pin={"glow": "invert", "summary": "checkpoint"})
    strategies = plan.strategies()
    assert strategies["glow"] == Strategy("invert") and strategies["summary"].kind == "checkpoint"
    pinned = {s.nodes: s.pinned for s in plan.segments}
    assert pinned[("glow",)] and pinned[("summary",)] and not pinned[("loss",)]
    with pytest.raises(ValueError, match="'flow', which is not a node"):
        model.plan(pin={"flow": "store"})
    with pytest.raises(ValueError, match=r"node 'loss' \(autograd\).*only invertible"):
        model.plan(pin={"loss": "invert"})
    with pytest.raises(ValueError, match="node 'pre'.*a strategy is one of"):
        model.plan(pin={"pre": "reconstruct"})
    with pytest.raises(ValueError, match="apply to 'invert' only"):
        Strategy("store", anchor_every=2)
    with pytest.raises(ValueError, match="micro_batches must be an int >= 1"):
        Strategy("invert", micro_batches=0)


def test_explain_prints_the_table_and_returns_the_data(float32_graph, capsys):
    model, _ = float32_graph
    with pytest.raises(BudgetError) as caught:
        model.plan(1)
    model.plan(caught.value.minimum * 1.5)
    plan = model.explain()
    table = capsys.readouterr().out
    for text in (
        "seg",
        "kept",
        "extra compute",
        "summary",
        "pre, glow, post",
        "blur",
        "loss",
        "budget",
    ):
        assert text in table
    assert str(plan.segments[1].strategy) in table
    assert format_bytes(plan.memory_budget) in table and format_bytes(plan.peak_bytes) in table
    records = plan.records()
    assert [r["nodes"] for r in records] == [["summary"], list(FLOW), ["blur"], ["loss"]]
    assert set(records[0]) == {
        "index",
        "kind",
        "nodes",
        "strategy",
        "pinned",
        "kept_bytes",
        "working_bytes",
        "extra_cost",
    }
    assert sum(r["kept_bytes"] for r in records) == pytest.approx(plan.kept_bytes)
    assert plan.summary()["peak_bytes"] == plan.peak_bytes <= plan.memory_budget
    assert plan.cost_unit == "FLOP" and plan.forward_cost > 0
    invert_extra = next(r["extra_cost"] for r in records if r["kind"] == "invertible")
    assert (invert_extra > 0) == (plan.segments[1].strategy.kind != "store")


def test_flop_costs_make_plans_reproducible():
    tables = []
    for _ in range(2):
        graph, sample = hybrid_graph(torch.float32, batch=4, side=16, hidden=8)
        model = graph.build(sample, cost="flops")
        with pytest.raises(BudgetError) as caught:
            model.plan(1)
        tables.append(model.plan(caught.value.minimum * 1.2).table())
    assert tables[0] == tables[1]
    costs = model.profile.nodes
    assert costs["summary"].cost > 0 and costs["glow"].cost > costs["pre"].cost


def test_greedy_search_fits_the_budget(float32_graph, monkeypatch):
    model, sample = float32_graph
    with pytest.raises(BudgetError) as caught:
        model.plan(1)
    budget = caught.value.minimum * 1.3
    exhaustive = model.plan(budget)
    monkeypatch.setattr(planner_module, "EXHAUSTIVE_LIMIT", 1)
    greedy = model.plan(budget)
    assert greedy.peak_bytes <= budget
    assert greedy.extra_cost >= exhaustive.extra_cost
    with pytest.raises(BudgetError):
        model.plan(caught.value.minimum * 0.5)
    measured = kept_bytes(model, sample)
    assert abs(greedy.kept_bytes - measured) <= 0.2 * measured


def test_float32_strategies_agree(float32_graph):
    model, sample = float32_graph
    model.plan(math.inf)
    reference = step(model, sample)
    with pytest.raises(BudgetError) as caught:
        model.plan(1)
    model.plan(caught.value.minimum)
    for got, want in zip(step(model, sample), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MiB", 512 * 2**20),
        ("2GB", 2e9),
        ("1.5 GiB", 1.5 * 2**30),
        ("100", 100),
        ("64kb", 64_000),
        (4096, 4096),
        ("unlimited", math.inf),
        (math.inf, math.inf),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["12 parsecs", "MiB", "-3MB", -1, "1e3xB"])
def test_parse_bytes_refuses_nonsense(bad):
    with pytest.raises(ValueError, match="memory_budget"):
        parse_bytes(bad)
    with pytest.raises(TypeError):
        parse_bytes([512])


class _GenericScale(hf.InvertibleModule):
    """``y = x * exp(s)``, reconstructed by the generic rule (no hand-written one)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(0.1 * torch.randn(features))

    def forward(self, x, cond=None):
        return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y, cond=None):
        return y * (-self.log_scale).exp(), -self.log_scale.sum().expand(y.shape[0])


@pytest.mark.parametrize(
    ("layers", "passes"),
    [
        (lambda: [_GenericScale(4), _GenericScale(4)], 2),  # a chain of generic-rule layers
        (lambda: [InvConv1x1(4), _GenericScale(4)], 2),  # one generic layer is enough
        (lambda: [InvConv1x1(4), AffineCoupling(4, hidden=8)], 1),  # hand-written rules
    ],
)
def test_reconstruction_cost_counts_the_rule_of_the_leaf_layers(layers, passes):
    torch.manual_seed(0)
    graph = (
        Graph()
        .input("x")
        .invertible("flow", hf.Chain(*layers()), "x")
        .autograd("loss", lambda z, ld: (z.pow(2).sum(1) - ld).sum(), ["flow", "flow.logdet"])
        .output("loss")
    )
    model = graph.build({"x": torch.randn(8, 4)}, cost="flops")
    node = model.profile.nodes["flow"]
    assert node.generic_rule is (passes == 2)
    plan = model.plan(pin={"flow": "invert"})
    assert plan.segments[0].extra_cost == pytest.approx(passes * node.cost)
    assert hf.Chain(hf.Chain(*layers())).uses_generic_rule is (passes == 2)


def test_budget_accepts_the_argument_forms_of_plan():
    assert Budget.parse(None).flat and Budget.parse(None).bound == math.inf
    assert Budget.parse("2GiB") == Budget(2 * 2**30) == Budget.parse(Budget(2 * 2**30))
    assert Budget.parse("unlimited").limit == math.inf and not Budget.parse(math.inf).flat
    assert Budget.parse(1000).fits(1000) and not Budget.parse(1000).fits(1001)
    with pytest.raises(ValueError, match="memory_budget"):
        Budget.parse("12 parsecs")
