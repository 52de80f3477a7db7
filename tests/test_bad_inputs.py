"""A table of bad inputs and arguments: each gets its typed error naming the place, and changes
no parameter or optimizer state; the ``validate`` switch governs the data-dependent checks."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from helpers import small_graph, with_value
from torch import Tensor, nn

import hybridflow as hf
from hybridflow.distributions import ConditionalFlow, Flow, coupling_flow
from hybridflow.errors import ArgumentError, ArgumentTypeError, InputError, InputTypeError
from hybridflow.layers import (
    ActNorm,
    AffineCoupling,
    InvConv1x1,
    SplineCoupling,
    Squeeze,
)
from hybridflow.networks import HINT, Glow
from hybridflow.sbi import NPEConfig, ReverseKLConfig
from hybridflow.summary import CNN, MLP, DeepSet, SetTransformer

Loss = Callable[[], Tensor]


@dataclass
class Model:
    """A module, the loss of one good training step, and the bad call under test."""

    module: nn.Module
    good: Loss
    bad: Callable[[], object]


def _vector_chain(**kwargs) -> hf.Chain:
    return coupling_flow(4, cond_features=2, depth=2, hidden=8, coupling="affine", **kwargs)


def _chain(bad: Callable[[hf.Chain], object], double: bool = False) -> Callable[[], Model]:
    def make() -> Model:
        chain = _vector_chain()
        dtype = torch.float64 if double else torch.float32
        chain.to(dtype)
        x, c = torch.randn(8, 4, dtype=dtype), torch.randn(8, 2, dtype=dtype)
        return Model(chain, lambda: chain(x, c)[0].square().mean(), lambda: bad(chain))

    return make


def _image_chain(bad: Callable[[hf.Chain], object]) -> Callable[[], Model]:
    def make() -> Model:
        chain = hf.Chain(
            Squeeze(2), ActNorm(4), InvConv1x1(4), AffineCoupling(4, hidden=8, spatial_dims=2)
        )
        x = torch.randn(2, 1, 8, 8)
        return Model(chain, lambda: chain(x)[0].square().mean(), lambda: bad(chain))

    return make


def _layer(layer: nn.Module, bad: Callable[[nn.Module], object]) -> Callable[[], Model]:
    def make() -> Model:
        x = torch.randn(8, 4)
        return Model(layer, lambda: layer(x)[0].square().mean(), lambda: bad(layer))

    return make


def _graph(bad: Callable[[nn.Module], object]) -> Callable[[], Model]:
    """x -> proj (autograd Linear) -> norm (ActNorm) -> coupling (AffineCoupling on c)."""

    def make() -> Model:
        sample = {"x": torch.randn(8, 4), "c": torch.randn(8, 2)}
        model = small_graph().build(sample)
        return Model(model, lambda: model(**sample)["coupling"].square().mean(), lambda: bad(model))

    return make


def _conditional(bad: Callable[[ConditionalFlow], object], **kwargs) -> Callable[[], Model]:
    def make() -> Model:
        flow = ConditionalFlow(
            _vector_chain(), summary=MLP(5, 2, hidden=8), event_shape=(4,), **kwargs
        )
        x, theta = torch.randn(8, 5), torch.randn(8, 4)
        return Model(flow, lambda: -flow(x).log_prob(theta).mean(), lambda: bad(flow))

    return make


def _flow(bad: Callable[[Flow], object]) -> Callable[[], Model]:
    def make() -> Model:
        flow = Flow(coupling_flow(4, depth=2, hidden=8), event_shape=(4,))
        theta = torch.randn(8, 4)
        return Model(flow, lambda: -flow().log_prob(theta).mean(), lambda: bad(flow))

    return make


_C = torch.randn(8, 2)
_INPUTS: dict[str, tuple[Callable[[], Model], type[Exception], str]] = {
    # -- chains ------------------------------------------------------------------------------
    "rank": (
        _image_chain(lambda m: m(torch.randn(2, 2, 8))),
        InputError,
        r"^Chain layer 3 \(AffineCoupling\): AffineCoupling: expected rank 4",
    ),
    "channels": (
        _chain(lambda m: m(torch.randn(8, 5), _C)),
        InputError,
        r"^Chain layer 0 \(ActNorm\): ActNorm: expected 4 channels",
    ),
    "float64 into float32": (
        _chain(lambda m: m(torch.randn(8, 4, dtype=torch.float64), _C.double())),
        InputTypeError,
        r"^Chain layer 0 \(ActNorm\): input is torch.float64 but the parameters are torch.float32",
    ),
    "float32 into float64": (
        _chain(lambda m: m(torch.randn(8, 4), _C), double=True),
        InputTypeError,
        r"^Chain layer 0 \(ActNorm\): input is torch.float32 but the parameters are torch.float64",
    ),
    "input on another device": (
        _chain(lambda m: m(torch.randn(8, 4, device="meta"), _C)),
        InputTypeError,
        r"^Chain layer 0 \(ActNorm\): input is on device meta but the parameters are on cpu",
    ),
    "empty batch": (
        _chain(lambda m: m(torch.randn(0, 4), torch.randn(0, 2))),
        InputError,
        r"^Chain layer 0 \(ActNorm\): empty batch",
    ),
    "NaN into inverse": (
        _chain(lambda m: m.inverse(with_value(torch.randn(8, 4), (1, 2), float("nan")), _C)),
        InputError,
        r"^Chain layer 5 \(AffineCoupling\): inverse input has 1 NaN/Inf value",
    ),
    "Inf into forward": (
        _chain(lambda m: m(with_value(torch.randn(8, 4), (0, 0), float("inf")), _C)),
        InputError,
        r"^Chain layer 0 \(ActNorm\): input has 1 NaN/Inf value",
    ),
    "NaN condition": (
        _chain(lambda m: m(torch.randn(8, 4), with_value(_C, (3, 1), float("nan")))),
        InputError,
        r"^Chain layer 0 \(ActNorm\): condition has 1 NaN/Inf value",
    ),
    "list condition": (
        _chain(lambda m: m(torch.randn(8, 4), [[0.0, 1.0]] * 8)),
        InputTypeError,
        r"^Chain layer 0 \(ActNorm\): condition must be a torch.Tensor, got list",
    ),
    "missing condition": (
        _chain(lambda m: m(torch.randn(8, 4))),
        InputError,
        r"^Chain layer 2 \(AffineCoupling\): missing condition",
    ),
    "condition dtype": (
        _chain(lambda m: m(torch.randn(8, 4), _C.double())),
        InputTypeError,
        r"^Chain layer 0 \(ActNorm\): condition is torch.float64 but the parameters",
    ),
    "condition on another device": (
        _chain(lambda m: m(torch.randn(8, 4), _C.to("meta"))),
        InputTypeError,
        r"^Chain layer 0 \(ActNorm\): condition is on device meta",
    ),
    "condition batch": (
        _chain(lambda m: m(torch.randn(8, 4), torch.randn(3, 2))),
        InputError,
        r"^Chain layer 2 \(AffineCoupling\): AffineCoupling: condition has shape \(3, 2\)",
    ),
    "list input": (
        _chain(lambda m: m([[0.0] * 4] * 8, _C)),
        InputTypeError,
        r"^Chain layer 0 \(ActNorm\): expected a torch.Tensor input, got list",
    ),
    "integer input": (
        _image_chain(lambda m: m(torch.ones(2, 1, 8, 8, dtype=torch.long))),
        InputTypeError,
        r"^Chain layer 0 \(Squeeze\): expected a floating-point tensor",
    ),
    "condition for an unconditional chain": (
        _image_chain(lambda m: m(torch.randn(2, 1, 8, 8), torch.randn(2, 2))),
        InputError,
        r"^Chain: got a condition but none of its layers takes one",
    ),
    # -- layers and networks on their own ----------------------------------------------------
    "ActNorm float64": (
        _layer(ActNorm(4), lambda m: m(torch.randn(8, 4, dtype=torch.float64))),
        InputTypeError,
        r"^ActNorm: input is torch.float64 but the parameters are torch.float32",
    ),
    "InvConv1x1 NaN into inverse": (
        _layer(
            InvConv1x1(4), lambda m: m.inverse(with_value(torch.randn(8, 4), (0, 1), float("nan")))
        ),
        InputError,
        r"^InvConv1x1.inverse: input has 1 NaN/Inf value",
    ),
    "AffineCoupling on another device": (
        _layer(AffineCoupling(4, hidden=8), lambda m: m(torch.randn(8, 4, device="meta"))),
        InputTypeError,
        r"^AffineCoupling: input is on device meta",
    ),
    "Glow spatial size": (
        lambda: Model(
            glow := Glow(1, levels=2, depth=1, hidden=4),
            lambda: glow(torch.randn(2, 1, 8, 8))[0].square().mean(),
            lambda: glow(torch.randn(2, 1, 6, 6)),
        ),
        InputError,
        r"^Glow: spatial sizes \(6, 6\) must be divisible by 2\*\*levels = 4",
    ),
    "HINT missing condition": (
        lambda: Model(
            hint := HINT(4, depth=1, hidden=8, cond_features=2),
            lambda: hint(torch.randn(8, 4), _C)[0].square().mean(),
            lambda: hint(torch.randn(8, 4)),
        ),
        InputError,
        r"^HINT: missing condition",
    ),
    # -- graphs ------------------------------------------------------------------------------
    "graph autograd node wrong shape": (
        _graph(lambda m: m(x=torch.randn(8, 5), c=_C)),
        InputError,
        r"^Graph node 'proj' \(autograd\): failed at run time: mat1 and mat2 shapes",
    ),
    "graph invertible node dtype": (
        _graph(lambda m: m(x=torch.randn(8, 4), c=_C.double())),
        InputTypeError,
        r"^Graph node 'norm' \(invertible\): condition is torch.float64",
    ),
    "graph second node of a segment": (
        _graph(lambda m: m(x=torch.randn(8, 4), c=torch.randn(8, 3))),
        InputError,
        r"^Graph node 'coupling' \(invertible\): AffineCoupling: condition has shape \(8, 3\)",
    ),
    "graph input empty batch": (
        _graph(lambda m: m(x=torch.randn(0, 4), c=torch.randn(0, 2))),
        InputError,
        r"^Graph input 'x': empty batch",
    ),
    "graph input NaN": (
        _graph(lambda m: m(x=with_value(torch.randn(8, 4), (2, 2), float("nan")), c=_C)),
        InputError,
        r"^Graph input 'x': input has 1 NaN/Inf value",
    ),
    "graph input list": (
        _graph(lambda m: m(x=[0.0] * 4, c=_C)),
        InputTypeError,
        r"^Graph input 'x': expected a torch.Tensor input, got list",
    ),
    # -- flows -------------------------------------------------------------------------------
    "observation shape": (
        _conditional(lambda m: m(torch.randn(8, 6)), observation_shape=(5,)),
        InputError,
        r"^ConditionalFlow: observation of shape \(8, 6\) does not match observation_shape",
    ),
    "observation NaN": (
        _conditional(lambda m: m(with_value(torch.randn(8, 5), (0, 0), float("nan")))),
        InputError,
        r"^ConditionalFlow: the observation has 1 NaN/Inf value",
    ),
    "observation empty batch": (
        _conditional(lambda m: m(torch.randn(0, 5)), observation_shape=(5,)),
        InputError,
        r"^ConditionalFlow: empty batch",
    ),
    "summary refuses the observation": (
        _conditional(lambda m: m(torch.randn(8, 6))),
        InputError,
        r"^ConditionalFlow summary \(MLP\): MLP: expected a batch \(B, \.\.\.\) of 5 entries",
    ),
    "log_prob of NaN": (
        _conditional(lambda m: m(torch.randn(8, 5)).log_prob(torch.full((8, 4), float("nan")))),
        InputError,
        r"^FlowDistribution.log_prob: value has 32 NaN/Inf value",
    ),
    "log_prob of a list": (
        _flow(lambda m: m().log_prob([0.0] * 4)),
        InputTypeError,
        r"^FlowDistribution.log_prob: expected a tensor, got list",
    ),
    "log_prob float64 into a float32 flow": (
        _flow(lambda m: m().log_prob(torch.randn(8, 4, dtype=torch.float64))),
        InputTypeError,
        r"^Chain layer 0 \(ActNorm\): input is torch.float64 but the parameters are torch.float32",
    ),
}


def _state(module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    return (
        {k: v.detach().clone() for k, v in module.state_dict().items()},
        copy.deepcopy(optimizer.state_dict()),
    )


def _same(a: object, b: object) -> bool:
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("case", list(_INPUTS))
def test_bad_input_names_the_place_and_changes_nothing(case):
    make, error, place = _INPUTS[case]
    torch.manual_seed(0)
    model = make()
    optimizer = torch.optim.Adam(model.module.parameters(), lr=1e-2)
    model.good().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    before = _state(model.module, optimizer)
    with pytest.raises(error, match=place) as caught:
        model.bad()
    assert caught.value.where, "the error carries the place in .where"
    after = _state(model.module, optimizer)
    assert _same(before, after), "bad input changed parameters, buffers or optimizer state"
    assert all(p.grad is None for p in model.module.parameters())


def test_graph_node_failure_keeps_torch_error_as_cause():
    model = _graph(lambda m: m(x=torch.randn(8, 5), c=_C))()
    with pytest.raises(InputError) as caught:
        model.bad()
    assert caught.value.where[0] == "Graph node 'proj' (autograd)"
    assert type(caught.value.__cause__) is RuntimeError


def test_dtype_refused_before_actnorm_initialises(monkeypatch):
    chain = _vector_chain()
    calls = []
    monkeypatch.setattr(ActNorm, "_initialize", lambda self, x: calls.append(x.dtype))
    with pytest.raises(InputTypeError, match="torch.float64"):
        chain(torch.randn(8, 4, dtype=torch.float64), _C.double())
    assert calls == [] and not chain[0].is_initialized


_ARGUMENTS: dict[str, tuple[Callable[[], object], type[Exception], str, str]] = {
    "ActNorm('4')": (lambda: ActNorm("4"), ArgumentTypeError, "num_features", "ActNorm"),
    "InvConv1x1(4.0)": (lambda: InvConv1x1(4.0), ArgumentTypeError, "num_features", "InvConv1x1"),
    "hidden=8.5": (
        lambda: AffineCoupling(4, hidden=8.5),
        ArgumentTypeError,
        "hidden",
        "AffineCoupling",
    ),
    "hidden=0": (lambda: AffineCoupling(4, hidden=0), ArgumentError, "hidden", "AffineCoupling"),
    "hidden=True": (
        lambda: AffineCoupling(4, hidden=True),
        ArgumentTypeError,
        "hidden",
        "AffineCoupling",
    ),
    "spatial_dims=True": (
        lambda: AffineCoupling(4, spatial_dims=True),
        ArgumentError,
        "spatial_dims",
        "AffineCoupling",
    ),
    "subnet instance": (
        lambda: AffineCoupling(4, subnet=nn.Linear(2, 4)),
        ArgumentTypeError,
        "subnet",
        "AffineCoupling",
    ),
    "clamp='2'": (
        lambda: AffineCoupling(4, clamp="2"),
        ArgumentTypeError,
        "clamp",
        "AffineCoupling",
    ),
    "bins=1": (lambda: SplineCoupling(4, bins=1), ArgumentError, "bins", "SplineCoupling"),
    "Squeeze(True)": (lambda: Squeeze(True), ArgumentTypeError, "factor", "Squeeze"),
    "Glow levels=0": (lambda: Glow(1, levels=0), ArgumentError, "levels", "Glow"),
    "Glow clamp=nan": (lambda: Glow(1, clamp=float("nan")), ArgumentError, "clamp", "Glow"),
    "HINT mode": (lambda: HINT(4, mode="fast"), ArgumentError, "mode", "HINT"),
    "Chain of a Linear": (lambda: hf.Chain(nn.Linear(2, 2)), ArgumentTypeError, "modules", "Chain"),
    "Chain micro_batches=0": (
        lambda: hf.Chain(ActNorm(2), micro_batches=0),
        ArgumentError,
        "micro_batches",
        "Chain",
    ),
    "Chain validate='yes'": (
        lambda: hf.Chain(ActNorm(2), validate="yes"),
        ArgumentTypeError,
        "validate",
        "Chain",
    ),
    "MLP out_features=0": (lambda: MLP(5, 0), ArgumentError, "out_features", "MLP"),
    "MLP in_features=5.0": (lambda: MLP(5.0, 2), ArgumentTypeError, "in_features", "MLP"),
    "DeepSet pooling": (
        lambda: DeepSet(3, 4, pooling="median"),
        ArgumentError,
        "pooling",
        "DeepSet",
    ),
    "SetTransformer heads": (
        lambda: SetTransformer(3, 4, hidden=10, heads=4),
        ArgumentError,
        "hidden",
        "SetTransformer",
    ),
    "CNN spatial_dims": (lambda: CNN(1, 4, spatial_dims=4), ArgumentError, "spatial_dims", "CNN"),
    "coupling_flow hidden=0": (
        lambda: coupling_flow(4, hidden=0),
        ArgumentError,
        "hidden",
        "coupling_flow",
    ),
    "coupling_flow num_features=0": (
        lambda: coupling_flow(0),
        ArgumentError,
        "num_features",
        "coupling_flow",
    ),
    "ConditionalFlow validate=1": (
        lambda: ConditionalFlow(_vector_chain(), event_shape=(4,), validate=1),
        ArgumentTypeError,
        "validate",
        "ConditionalFlow",
    ),
    "set_validation('no')": (
        lambda: hf.set_validation("no"),
        ArgumentTypeError,
        "enabled",
        "set_validation",
    ),
}
# A training config given one bad keyword: (the config, the keyword, its value, the error).
_CONFIG_KEYWORDS = [
    (NPEConfig, "batch_size", 0, ArgumentError),
    (NPEConfig, "learning_rate", "1e-3", ArgumentTypeError),
    (NPEConfig, "progress", 1, ArgumentTypeError),
    (ReverseKLConfig, "schedule", "plateau", ArgumentError),
]
_ARGUMENTS.update(
    {
        f"{config.__name__} {name}={value!r}": (
            functools.partial(config, **{name: value}),
            error,
            name,
            config.__name__,
        )
        for config, name, value, error in _CONFIG_KEYWORDS
    }
)


@pytest.mark.parametrize("case", list(_ARGUMENTS))
def test_bad_argument_names_the_argument(case):
    build, error, argument, place = _ARGUMENTS[case]
    with pytest.raises(error, match=rf"^{place}: {argument}") as caught:
        build()
    assert caught.value.argument == argument
    assert caught.value.where == (place,)


def test_the_table_is_large_enough():
    assert len(_INPUTS) + len(_ARGUMENTS) >= 40
