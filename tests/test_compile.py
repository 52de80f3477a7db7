"""torch.compile: compiled forward, inverse and training steps equal eager ones."""

from __future__ import annotations

import pytest
import torch
from helpers import ExplodingInverse, NoisyCoupling, flow_loss, glow_chain

import hybridflow as hf
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1, Squeeze

# aot_eager runs Dynamo's capture and AOTAutograd's tracing (where graph-capture bugs show)
# without Inductor's code generation, which takes minutes on CPU; the benchmark
# (benchmarks/compile_speed.py) measures Inductor itself.
BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["store", "invert"])
def test_compiled_forward_and_inverse_equal_eager(mode):
    chain = glow_chain(3, 2, mode, hidden=8, cond=2, squeeze=True)
    x, cond = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 4, 4)
    forward = torch.compile(chain, backend=BACKEND)
    inverse = torch.compile(chain.inverse, backend=BACKEND)
    with torch.no_grad():
        y, logdet = chain(x, cond)
        y_c, logdet_c = forward(x, cond)
        x_c, _ = inverse(y_c, cond)
    torch.testing.assert_close(y_c, y)
    torch.testing.assert_close(logdet_c, logdet)
    torch.testing.assert_close(x_c, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["store", "invert"])
def test_compiled_training_step_equals_eager(mode):
    chains = [glow_chain(3, 2, mode, hidden=8, cond=2, squeeze=True) for _ in range(2)]
    optimizers = [torch.optim.Adam(c.parameters(), lr=1e-2) for c in chains]
    x, cond = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 4, 4)

    def step(chain, optimizer):
        optimizer.zero_grad()
        loss = flow_loss(*chain(x, cond))
        loss.backward()
        optimizer.step()
        return loss.detach()

    compiled_step = torch.compile(step, backend=BACKEND)
    for _ in range(3):
        eager_loss = step(chains[0], optimizers[0])
        compiled_loss = compiled_step(chains[1], optimizers[1])
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(chains[0].parameters(), chains[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_store_mode_compiles_to_one_graph_and_invert_mode_breaks_are_counted():
    x = torch.randn(2, 3, 8, 8)
    counts = {}
    for mode in ("store", "invert"):
        chain = glow_chain(3, 2, mode, hidden=8, squeeze=True)
        explanation = torch._dynamo.explain(lambda x, chain=chain: flow_loss(*chain(x)))(x)
        counts[mode] = explanation.graph_break_count
        torch._dynamo.reset()
    assert counts["store"] == 0
    # a first call is the drift guard's checked call: each layer's fingerprint factors are
    # read eagerly; benchmarks/graph_breaks.py lists the reasons
    assert counts["invert"] > 0


def _training_call(chain):
    """``v -> loss`` of ``chain`` on ``v``, back-propagated (a compiled step's usual body)."""

    def train(v):
        loss = flow_loss(*chain(v))
        loss.backward()
        return loss.detach()

    return train


def _break_reasons(call, x):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.compile(call, backend="eager")(x)
    return list(torch._dynamo.utils.counters["graph_break"])


def test_an_invert_chain_breaks_only_at_the_callers_backward_and_at_random_layers():
    chain = glow_chain(3, 2, "invert", hidden=8, squeeze=True)
    x = torch.randn(2, 3, 8, 8)
    flow_loss(*chain(x)).backward()  # the drift guard's checked first call, eagerly

    train = _training_call(chain)

    # the seed is drawn as a tensor and layers that draw no random numbers are not re-seeded:
    # the no-grad call is one graph; a training call breaks at the backward() it makes and
    # where that runs the reconstructing backward, eagerly by design
    with torch.no_grad():
        assert _break_reasons(lambda v: flow_loss(*chain(v)), x) == []
    reasons = _break_reasons(train, x)
    assert len(reasons) == 2, reasons
    assert any("Tensor.backward()" in r for r in reasons), reasons
    assert any("ReconstructingFunction.backward" in r for r in reasons), reasons
    # dropout in a conditioner: its generator fork runs eagerly
    noisy = hf.Chain(NoisyCoupling(4), NoisyCoupling(4), mode="invert").train()
    with torch.no_grad():
        assert [
            r for r in _break_reasons(lambda v: noisy(v)[0], torch.randn(6, 4)) if "non-Tensor" in r
        ]


def test_dynamos_trace_autograd_ops_is_refused_rather_than_losing_the_gradients():
    chain = glow_chain(3, 1, "invert", hidden=8, squeeze=True)
    x = torch.randn(2, 3, 8, 8)

    train = _training_call(chain)

    # with the flag, torch 2.13 never calls the Function's backward: the gradients would be None
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        for run in (train, torch.compile(train, backend="eager")):
            with pytest.raises(hf.ReconstructionError, match="trace_autograd_ops=True"):
                run(x)
    assert all(p.grad is None for p in chain.parameters())  # nothing half-done
    train(x)  # without it, as usual
    assert all(p.grad is not None for p in chain.parameters())


def test_a_compiled_chains_initialising_call_runs_eagerly_and_equals_eager():
    def fresh_chain():
        torch.manual_seed(0)
        steps = [
            hf.Chain(ActNorm(12), InvConv1x1(12), AffineCoupling(12, hidden=8, spatial_dims=2))
            for _ in range(10)
        ]
        return hf.Chain(Squeeze(2), *steps, mode="invert")

    x = torch.randn(2, 3, 8, 8)
    eager, compiled = fresh_chain(), fresh_chain()
    flow_loss(*eager(x)).backward()
    torch._dynamo.utils.counters.clear()

    train = _training_call(compiled)

    torch.compile(train, backend="eager")(x)
    # traced, ActNorm's data-dependent start broke the graph inside every layer and Dynamo
    # compiled the per-layer bookkeeping frame by frame (28 graphs, then its recompile limit)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 3
    for a, b in zip(eager.state_dict().values(), compiled.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a)
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad)


def _compiled_frames_per_step(depth: int, steps: int) -> list[int]:
    """Frames Dynamo has compiled after each of ``steps`` compiled training steps."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    chain = glow_chain(3, depth, "invert", hidden=8, squeeze=True, perturb=0.01, drift_every=4)
    optimizer = torch.optim.SGD(chain.parameters(), lr=1e-3)
    x = torch.randn(2, 3, 8, 8)

    def step(v):
        optimizer.zero_grad()
        loss = flow_loss(*chain(v))
        loss.backward()
        optimizer.step()
        return loss.detach()

    compiled = torch.compile(step, backend="eager")
    frames = []
    for _ in range(steps):
        compiled(x)
        frames.append(torch._dynamo.utils.counters["frames"]["total"])
    assert chain.drift_report.call == 9  # calls 1, 5 and 9 were checked
    return frames


def test_a_compiled_training_step_compiles_once_per_kind_of_call_whatever_the_depth():
    # the drift guard counts calls in the (eager) backward and a checked call's forward pass
    # runs eagerly: the compiled forward reads only whether to check, so it compiles once for
    # the first call, once for unchecked ones and once for later checked ones. Before, it
    # recompiled at every call (the count was a guarded constant) and a checked call compiled
    # each layer's bookkeeping as a frame of its own (up to Dynamo's recompile limit)
    shallow, deep = _compiled_frames_per_step(2, 10), _compiled_frames_per_step(6, 10)
    assert shallow == deep, (shallow, deep)
    assert len(set(shallow[4:])) == 1, shallow


def test_a_compiled_invert_chain_still_refuses_a_non_finite_reconstruction():
    # the data checks of traced code are off under torch.compile, but the reconstruction's
    # check runs in the backward, which is eager: NaN gradients are refused, not returned
    chain = hf.Chain(InvConv1x1(3), ExplodingInverse(), InvConv1x1(3), drift_every=0)
    x = torch.randn(8, 3, requires_grad=True)

    train = _training_call(chain)

    with pytest.raises(hf.ReconstructionError, match="NaN/Inf"):
        torch.compile(train, backend="eager")(x)
    assert x.grad is None
