"""Graph builder, validation and runtime: every strategy assignment gives plain autograd's
outputs and gradients; the built graph behaves as an nn.Module; bad graphs are refused with
errors that name the node."""

from __future__ import annotations

import copy
import gc
import itertools
import re
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

from hybridflow.autograd import Chain
from hybridflow.graph import Graph, GraphModule, Strategy
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1
from hybridflow.operators import Convolution, Operator
from hybridflow.testing.graphs import hybrid_graph

FLOW = ("pre", "glow", "post")
DOC = Path(__file__).resolve().parents[1] / "docs" / "graph.md"


def step(model: nn.Module, sample: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Outputs, parameter gradients and input gradients of one backward pass."""
    model.zero_grad(set_to_none=True)
    inputs = {k: v.clone().requires_grad_(k != "data") for k, v in sample.items()}
    out = model(**inputs)
    out["loss"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    return [out["loss"].detach(), out["z"].detach(), *grads, inputs["obs"].grad, inputs["x"].grad]


@pytest.fixture(scope="module")
def built() -> tuple[GraphModule, dict[str, torch.Tensor]]:
    graph, sample = hybrid_graph()
    return graph.build(sample, cost="flops"), sample


FLOW_STRATEGIES = [
    Strategy("store"),
    Strategy("checkpoint"),
    Strategy("invert"),
    Strategy("invert", anchor_every=1),
    Strategy("invert", micro_batches=2),
    Strategy("invert", micro_batches=3),  # uneven slices of a batch of 4
    Strategy("invert", anchor_every=2, micro_batches=4),
]


def test_every_strategy_assignment_matches_plain_autograd(built):
    model, sample = built
    model.plan(pin=dict.fromkeys([*FLOW, "summary", "blur", "loss"], "store"))
    assert {str(s.strategy) for s in model.current_plan.segments} == {"store"}
    reference = step(model, sample)
    autograd_options = ("store", "checkpoint")
    combos = list(
        itertools.product(autograd_options, FLOW_STRATEGIES, autograd_options, autograd_options)
    )
    for summary, flow, blur, loss in combos:
        pin = {"summary": summary, **dict.fromkeys(FLOW, flow), "blur": blur, "loss": loss}
        plan = model.plan(pin=pin)
        assert [str(s.strategy) for s in plan.segments] == [summary, str(flow), blur, loss]
        result = step(model, sample)
        for got, want in zip(result, reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_mixed_strategies_inside_the_flow(built):
    """Pins that differ along the invertible run split it into segments of their own."""
    model, sample = built
    model.plan(pin=dict.fromkeys([*FLOW, "summary", "blur", "loss"], "store"))
    reference = step(model, sample)
    for pre, glow, post in itertools.product(("store", "invert", "checkpoint"), repeat=3):
        plan = model.plan(pin={"pre": pre, "glow": glow, "post": post})
        flow_segments = [s for s in plan.segments if s.kind == "invertible"]
        assert [n for s in flow_segments for n in s.nodes] == list(FLOW)
        changes = (pre != glow) + (glow != post)
        assert len(flow_segments) == 1 + changes
        for got, want in zip(step(model, sample), reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_default_plan_is_flat_in_depth(built):
    model, _ = built
    plan = model.plan()
    assert [(s.kind, s.nodes, str(s.strategy)) for s in plan.segments] == [
        ("autograd", ("summary",), "store"),
        ("invertible", FLOW, "invert"),
        ("operator", ("blur",), "store"),
        ("autograd", ("loss",), "store"),
    ]
    assert plan.memory_budget is None


def test_graph_module_behaves_like_a_module():
    graph, sample = hybrid_graph()
    model = graph.build(sample, cost="flops")
    node_params = [
        p for name in ("summary", "pre", "glow", "post") for p in model.nodes[name].parameters()
    ]
    assert [id(p) for p in model.parameters()] == [id(p) for p in node_params]
    keys = list(model.state_dict())
    assert keys and all(k.startswith("nodes.") for k in keys)
    assert len(keys) == len(set(keys))
    assert "nodes.glow.flow.layers.1.inner.layers.0.log_scale" in keys
    # a second graph with other weights takes the first one's state and then agrees with it
    other_graph, _ = hybrid_graph(seed=1)
    other = other_graph.build(sample, cost="flops")
    assert not torch.equal(other(**sample)["loss"], model(**sample)["loss"])
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(**sample)["loss"], model(**sample)["loss"], rtol=0, atol=0)
    # .to() converts the node modules, and the planned chains run the converted modules
    model.float()
    floats = {k: v.float() for k, v in sample.items()}
    assert model(**floats)["loss"].dtype == torch.float32
    model.double()
    model.eval()
    assert all(not m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    assert "autograd=2" in repr(model) and "invertible=3" in repr(model)
    # a deep copy runs its own copies of the modules
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.nodes["post"].parameters():
            p.add_(0.5)
    assert not torch.equal(twin(**sample)["z"], model(**sample)["z"])
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(twin(**sample)["z"], model(**sample)["z"], rtol=0, atol=0)
    # positional inputs follow the order of declaration
    torch.testing.assert_close(
        model(sample["obs"], sample["x"], sample["data"])["loss"], model(**sample)["loss"]
    )


def test_build_leaves_state_and_random_numbers_alone():
    torch.manual_seed(3)
    norm = ActNorm(4)
    bn_net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    graph = (
        Graph()
        .input("x")
        .input("c")
        .autograd("net", bn_net, "c")
        .invertible("norm", norm, "x")
        .autograd(
            "loss", lambda z, ld, h: z.sum() + ld.sum() + h.sum(), ["norm", "norm.logdet", "net"]
        )
        .output("loss")
    )
    state = {k: v.clone() for k, v in nn.ModuleList([norm, bn_net]).state_dict().items()}
    sample = {"x": torch.randn(8, 4) * 3 + 1, "c": torch.randn(8, 3)}
    rng = torch.get_rng_state()
    model = graph.build(sample)
    assert torch.equal(torch.get_rng_state(), rng)
    after = nn.ModuleList([norm, bn_net]).state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert not norm.is_initialized
    x = torch.randn(8, 4) * 3 + 1
    model(x=x, c=torch.randn(8, 3))  # the first real batch initialises ActNorm
    assert norm.is_initialized
    z = norm(x)[0]
    torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=1e-5, rtol=0)


def _plain_attributes(chain: Chain) -> dict[str, object]:
    """A chain's attributes other than its submodules, parameters, buffers and drift guard
    (which counts calls)."""
    skip = {"_modules", "_parameters", "_buffers", "_drift_guard"}
    return {k: v for k, v in vars(chain).items() if k not in skip}


@pytest.mark.parametrize(("own", "planned"), [("store", "invert"), ("invert", "store")])
def test_graph_runs_nested_chains_in_the_plan_mode_without_changing_them(own, planned):
    torch.manual_seed(0)
    inner = Chain(ActNorm(4), AffineCoupling(4, hidden=8), mode=own, name="inner")
    inner[0].mark_initialized()
    chain = Chain(inner, InvConv1x1(4), mode=own)
    chains = [chain, inner]
    attributes = [_plain_attributes(c) for c in chains]
    graph = (
        Graph()
        .input("x")
        .invertible("flow", chain, "x")
        .autograd("loss", lambda z, ld: (z.pow(2).sum(1) - ld).sum(), ["flow", "flow.logdet"])
        .output("loss")
    )
    x = torch.randn(8, 4)
    model = graph.build({"x": x}, pin={"flow": planned})  # profiled and planned
    state = {k: v.clone() for k, v in chain.state_dict().items()}
    calls = []
    inner[1].conditioner.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    model(x=x.clone().requires_grad_(True))["loss"].backward()
    # a reconstructed chain re-runs its coupling's conditioner in backward: twice per step
    assert len(calls) == (2 if planned == "invert" else 1)
    assert [c.mode for c in chains] == [own, own]
    assert [_plain_attributes(c) for c in chains] == attributes
    after = chain.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())


def test_build_keeps_no_autograd_graph_alive():
    outputs = []

    def node(x):
        y = x.exp()  # exp saves its output: tied to its own grad_fn if the probe kept it
        outputs.append(weakref.ref(y))
        return 2 * y

    graph = Graph().input("x").autograd("f", node, "x").output("f")
    graph.build({"x": torch.randn(4, 3, requires_grad=True)})
    gc.collect()
    assert outputs and all(ref() is None for ref in outputs)


def test_logdet_accumulates_along_invertible_nodes():
    torch.manual_seed(0)
    a, b, c = InvConv1x1(4), ActNorm(4), InvConv1x1(4)
    for m in (b,):
        m.mark_initialized()
        with torch.no_grad():
            m.log_scale.normal_()
    graph = (
        Graph()
        .input("x")
        .invertible("a", a, "x")
        .invertible("b", b, "a")
        .invertible("c", c, "b")
        .autograd("twice", lambda y: 2 * y, "a")  # a's output has two readers: a break
        .output("c.logdet", "total")
        .output("b.logdet", "partial")
        .output("twice")
    )
    x = torch.randn(5, 4)
    model = graph.build({"x": x})
    # a's output has two readers and b's log determinant is read: both end a run
    assert [s.nodes for s in model.segments if s.kind == "invertible"] == [("a",), ("b",), ("c",)]
    out = model(x=x)
    la, lb, lc = a(x)[1], b(a(x)[0])[1], c(b(a(x)[0])[0])[1]
    torch.testing.assert_close(out["total"], la + lb + lc)
    torch.testing.assert_close(out["partial"], la + lb)


def test_segments_join_runs_and_group_autograd_nodes():
    torch.manual_seed(0)
    layers = {name: ActNorm(3) for name in "abcd"}
    cond_layer = AffineCoupling(3, hidden=4, cond_features=2)
    graph = (
        Graph()
        .input("x")
        .input("o")
        .autograd("h1", nn.Linear(3, 4), "o")
        .autograd("h2", nn.Linear(4, 2), "h1")
        .invertible("a", layers["a"], "x")
        .invertible("cond", cond_layer, "a", cond="h2")
        .invertible("b", layers["b"], "cond")
        .invertible("c", layers["c"], "b")
        .autograd("loss", lambda y, ld: y.sum() + ld.sum(), ["c", "c.logdet"])
        .output("loss")
    )
    model = graph.build({"x": torch.randn(4, 3), "o": torch.randn(4, 3)})
    segments = model.segments
    assert [(s.kind, s.nodes) for s in segments] == [
        ("autograd", ("h1", "h2")),
        ("invertible", ("a", "cond", "b", "c")),
        ("autograd", ("loss",)),
    ]
    assert str(segments[1].cond) == "h2"
    # a pin on one node splits the run there
    model.plan(pin={"b": "store"})
    assert [s.nodes for s in model.segments if s.kind == "invertible"] == [
        ("a", "cond"),
        ("b",),
        ("c",),
    ]


def test_tuple_outputs_and_item_ports():
    torch.manual_seed(0)
    graph = (
        Graph()
        .input("x")
        .autograd("split", lambda x: (x[:, :2], 3 * x[:, 2:]), "x")
        .invertible("flow", AffineCoupling(2, hidden=4), "split.0")
        .autograd(
            "loss",
            lambda z, w, both: z.sum() + w.sum() + both[1].sum(),
            ["flow", "split.1", "split"],
        )
        .output("loss")
    )
    x = torch.randn(6, 3, requires_grad=True)
    model = graph.build({"x": x.detach()})
    for pin in ("store", "checkpoint"):
        model.plan(pin={"split": pin, "loss": pin})
        x.grad = None
        model(x=x)["loss"].backward()
        torch.testing.assert_close(x.grad[:, 2:], torch.full((6, 1), 6.0))


# -- validation errors ---------------------------------------------------------------------


def _loss(*tensors):
    return sum(t.sum() for t in tensors)


def _cycle():
    return (
        (Graph().input("x").autograd("a", _loss, ["x", "b"]).autograd("b", _loss, "a").output("b")),
        {"x": torch.randn(2, 3)},
        ValueError,
        "'a'",
    )


def _missing():
    graph = Graph().input("x").autograd("summary", nn.Linear(3, 2), "x")
    graph.invertible("flow", AffineCoupling(2, hidden=4, cond_features=2), "x2", cond="summary")
    return graph.output("flow"), {"x": torch.randn(2, 3)}, ValueError, "node 'flow': reads 'x2'"


def _unused_input():
    graph = Graph().input("x").input("extra").autograd("loss", _loss, "x").output("loss")
    return graph, {"x": torch.randn(2, 3), "extra": torch.randn(2, 3)}, ValueError, "input 'extra'"


def _dead_node():
    graph = Graph().input("x").autograd("loss", _loss, "x").autograd("side", _loss, "x")
    return graph.output("loss"), {"x": torch.randn(2, 3)}, ValueError, "node 'side'"


def _cond_channels():
    graph = (
        Graph()
        .input("x")
        .input("o")
        .autograd("summary", nn.Linear(3, 3), "o")  # 3 features, the coupling wants 2
        .invertible("flow", AffineCoupling(4, hidden=4, cond_features=2), "x", cond="summary")
        .output("flow")
    )
    return graph, {"x": torch.randn(2, 4), "o": torch.randn(2, 3)}, ValueError, "node 'flow'"


def _summary_shape():
    graph = Graph().input("o").autograd("summary", nn.Linear(5, 2), "o").output("summary")
    return graph, {"o": torch.randn(2, 3)}, ValueError, r"node 'summary' \(autograd\): failed"


def _dtype():
    flow = AffineCoupling(4, hidden=4).double()
    graph = Graph().input("x").invertible("flow", flow, "x").output("flow")
    return (
        graph,
        {"x": torch.randn(2, 4)},
        TypeError,
        r"node 'flow' \(invertible\): its input 'x' is torch.float32",
    )


def _batch():
    graph = (
        Graph()
        .input("x")
        .input("o")
        .autograd("summary", lambda o: o[:1], "o")
        .invertible("flow", AffineCoupling(4, hidden=4, cond_features=3), "x", cond="summary")
        .output("flow")
    )
    return graph, {"x": torch.randn(2, 4), "o": torch.randn(2, 3)}, ValueError, "node 'flow'.*batch"


def _operator_shape():
    graph = (
        Graph()
        .input("x")
        .operator("blur", Convolution(torch.ones(3) / 3, in_shape=(5,)), "x")
        .output("blur")
    )
    return graph, {"x": torch.randn(2, 6)}, ValueError, "node 'blur' \\(operator\\)"


def _cond_unconditional():
    graph = (
        Graph()
        .input("x")
        .autograd("summary", lambda x: x, "x")
        .invertible("norm", ActNorm(4), "x", cond="summary")
        .output("norm")
    )
    return graph, {"x": torch.randn(2, 4)}, ValueError, "node 'norm'.*takes none"


def _cond_missing():
    graph = Graph().input("x").invertible("flow", AffineCoupling(4, 4, cond_features=2), "x")
    return (
        graph.output("flow"),
        {"x": torch.randn(2, 4)},
        ValueError,
        "node 'flow'.*takes a condition",
    )


def _bad_port():
    graph = (
        Graph().input("x").invertible("norm", ActNorm(4), "x").autograd("loss", _loss, "norm.foo")
    )
    return graph.output("loss"), {"x": torch.randn(2, 4)}, ValueError, "node 'loss'.*'norm.foo'"


def _tuple_index():
    graph = (
        Graph()
        .input("x")
        .autograd("pair", lambda x: (x, x), "x")
        .autograd("loss", _loss, "pair.2")
        .output("loss")
    )
    return graph, {"x": torch.randn(2, 4)}, ValueError, "node 'loss'.*'pair.2'.*2 items"


def _tuple_to_invertible():
    graph = (
        Graph()
        .input("x")
        .autograd("pair", lambda x: (x, x), "x")
        .invertible("norm", ActNorm(4), "pair")
        .output("norm")
    )
    return graph, {"x": torch.randn(2, 4)}, TypeError, "node 'norm'"


def _not_a_tensor():
    graph = Graph().input("x").autograd("count", lambda x: 3, "x").output("count")
    return graph, {"x": torch.randn(2, 4)}, TypeError, "node 'count'.*int"


BROKEN = {
    "cycle": _cycle,
    "missing node": _missing,
    "unused input": _unused_input,
    "dead node": _dead_node,
    "condition channels": _cond_channels,
    "summary shape": _summary_shape,
    "dtype": _dtype,
    "batch size": _batch,
    "operator shape": _operator_shape,
    "condition to unconditional": _cond_unconditional,
    "condition missing": _cond_missing,
    "unknown port": _bad_port,
    "tuple index": _tuple_index,
    "tuple to invertible": _tuple_to_invertible,
    "not a tensor": _not_a_tensor,
}


@pytest.mark.parametrize("case", BROKEN)
def test_validation_errors_name_the_node(case):
    graph, sample, error, pattern = BROKEN[case]()
    with pytest.raises(error, match=pattern):
        graph.build(sample)


def test_errors_when_adding_nodes_name_the_node():
    graph = Graph().input("x")
    with pytest.raises(ValueError, match=r"node 'flow' \(invertible\).*2 producers"):
        graph.invertible("flow", ActNorm(4), ["x", "y"])
    with pytest.raises(TypeError, match=r"node 'flow' \(invertible\).*InvertibleModule.*Linear"):
        graph.invertible("flow", nn.Linear(4, 4), "x")
    with pytest.raises(TypeError, match=r"node 'op' \(operator\).*Linear"):
        graph.operator("op", nn.Linear(4, 4), "x")
    with pytest.raises(TypeError, match=r"node 'f' \(autograd\)"):
        graph.autograd("f", 3, "x")
    with pytest.raises(ValueError, match="'x' already exists"):
        graph.input("x")
    with pytest.raises(ValueError, match="without '.'"):
        graph.input("a.b")
    with pytest.raises(ValueError, match="at least one output"):
        graph.autograd("f", _loss, "x").build({"x": torch.randn(2, 4)})
    with pytest.raises(ValueError, match="missing from the sample"):
        Graph().input("x").autograd("f", _loss, "x").output("f").build({})


def test_call_errors_name_the_input_or_node():
    graph = Graph().input("x").invertible("norm", ActNorm(4), "x").output("norm")
    model = graph.build({"x": torch.randn(3, 4)})
    with pytest.raises(TypeError, match="input 'x': missing"):
        model()
    with pytest.raises(TypeError, match="unknown input 'y'"):
        model(x=torch.randn(3, 4), y=torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"node 'norm' \(invertible\).*channels"):
        model(x=torch.randn(3, 5))
    operator = Operator(lambda x: x, lambda g, x: g, in_shape=(4,), name="ident")
    model = (
        Graph()
        .input("x")
        .operator("op", operator, "x")
        .output("op")
        .build({"x": torch.randn(2, 4)})
    )
    with pytest.raises(ValueError, match=r"node 'op' \(operator\): ident"):
        model(x=torch.randn(2, 5))


def test_doc_page_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/graph.md has no python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    printed = capsys.readouterr().out
    assert namespace["loss"].isfinite()
    # the table shown on the page is the one the example prints (FLOP costs: deterministic)
    shown = re.search(r"## Reading `explain\(\)`\n\n```\n(.*?)```", DOC.read_text(), re.S)
    assert shown is not None

    def lines(text):
        return [line.rstrip() for line in text.strip().splitlines()]

    assert lines(printed) == lines(shown.group(1))
