"""The ``validate`` switch: data-dependent input checks (NaN/Inf) run only when it is on, and
never under torch.compile or torch.func transforms; metadata checks always run."""

from __future__ import annotations

import pytest
import torch
from helpers import small_graph, with_value
from torch import Tensor

import hybridflow as hf
from hybridflow.distributions import ConditionalFlow, coupling_flow
from hybridflow.errors import InputError, InputTypeError
from hybridflow.summary import MLP

_C = torch.randn(8, 2)


def _vector_chain() -> hf.Chain:
    return coupling_flow(4, cond_features=2, depth=2, hidden=8)


def _graph_module() -> hf.GraphModule:
    return small_graph().build({"x": torch.randn(8, 4), "c": _C})


def _count_isfinite(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = torch.isfinite

    def counting(tensor: Tensor) -> Tensor:
        calls.append(tensor.numel())
        return real(tensor)

    monkeypatch.setattr(torch, "isfinite", counting)
    return calls


def _conditional_flow(**kwargs) -> tuple[ConditionalFlow, Tensor, Tensor]:
    torch.manual_seed(0)
    flow = ConditionalFlow(_vector_chain(), summary=MLP(5, 2, hidden=8), event_shape=(4,), **kwargs)
    x, theta = torch.randn(8, 5), torch.randn(8, 4)
    # ActNorm's one-off initialisation always refuses a non-finite first batch (one check of
    # its statistics): initialise before counting the per-call checks
    flow(x).log_prob(theta)
    return flow, x, theta


def test_validate_false_runs_no_isfinite(monkeypatch):
    flow, x, theta = _conditional_flow(validate=False)
    calls = _count_isfinite(monkeypatch)
    loss = -flow(x).log_prob(theta).mean()
    loss.backward()
    flow(x).sample((3,))
    assert calls == []
    # and a NaN observation passes unchecked (the result is NaN, not an error)
    assert flow(with_value(x, (0, 0), float("nan"))).log_prob(theta).isnan().any()


def test_validate_default_checks_once_per_entry(monkeypatch):
    flow, x, theta = _conditional_flow()
    calls = _count_isfinite(monkeypatch)
    flow(x).log_prob(theta)
    # the observation, the condition and the value: the transform runs without its own checks
    assert calls == [x.numel(), 8 * 2, theta.numel()]


def test_set_validation_is_a_toggle_and_a_context_manager(monkeypatch):
    chain = _vector_chain()
    chain(torch.randn(8, 4), _C)  # initialise ActNorm (see _conditional_flow)
    x = with_value(torch.randn(8, 4), (0, 0), float("nan"))
    with hf.set_validation(False):
        chain(x, _C)  # no check: NaN flows through
        with pytest.raises(InputError):
            hf.Chain(*chain, validate=True)(x, _C)  # an explicit True wins
    with pytest.raises(InputError, match="NaN"):
        chain(x, _C)  # restored on exit
    previous = hf.set_validation(False)
    try:
        calls = _count_isfinite(monkeypatch)
        chain(torch.randn(8, 4), _C)
        assert calls == []
    finally:
        hf.set_validation(previous.previous)
    assert hf.autograd.validation_enabled()


def test_graph_validate_false_skips_data_checks(monkeypatch):
    model = _graph_module()
    model(x=torch.randn(8, 4), c=_C)  # initialise ActNorm (see _conditional_flow)
    model.validate = False
    calls = _count_isfinite(monkeypatch)
    model(x=torch.randn(8, 4), c=_C)
    assert calls == []


def test_shape_checks_run_with_validation_off():
    flow, _, _ = _conditional_flow(validate=False, observation_shape=(5,))
    with pytest.raises(InputError, match="observation of shape"):
        flow(torch.randn(8, 6))
    with pytest.raises(InputTypeError, match="torch.float64"):
        hf.Chain(*_vector_chain(), validate=False)(torch.randn(8, 4).double(), _C.double())


def test_compiled_log_prob_with_validate_false_is_one_graph():
    flow, x, theta = _conditional_flow(validate=False)
    flow.transform.mode = "store"  # an invert chain's Function runs eagerly (graph breaks)
    expected = flow(x).log_prob(theta)  # initialises ActNorm
    compiled = torch.compile(lambda x, t: flow(x).log_prob(t), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, theta), expected)


def test_torch_func_active_is_true_only_inside_transforms():
    from hybridflow.autograd.validation import data_checks, torch_func_active

    seen: list[tuple[bool, bool]] = []

    def probe(x: Tensor) -> Tensor:
        seen.append((torch_func_active(), data_checks(None)))
        return (x * 2).sum()

    assert not torch_func_active() and data_checks(None)
    torch.func.vmap(probe)(torch.randn(3, 2))
    torch.func.grad(probe)(torch.randn(2))
    assert seen == [(True, False), (True, False)]
    assert not torch_func_active()


def test_invert_chain_under_vmap_runs_as_store_and_matches():
    chain = _vector_chain()
    x, c = torch.randn(8, 4), torch.randn(8, 2)
    expected = chain(x, c)[0]
    per_sample = torch.func.vmap(lambda a, b: chain(a[None], b[None])[0][0])(x, c)
    torch.testing.assert_close(per_sample, expected)


def test_graph_checks_its_inputs_once(monkeypatch):
    model = _graph_module()
    model(x=torch.randn(8, 4), c=_C)  # initialise ActNorm (see _conditional_flow)
    calls = _count_isfinite(monkeypatch)
    model(x=torch.randn(8, 4), c=_C)
    assert calls == [32, 16]  # x and c at the entry; the segment's chain does not repeat it
