"""Bad input gets a clear error naming the layer, and changes no parameter."""

from __future__ import annotations

import pytest
import torch
from helpers import glow_chain

import hybridflow as hf
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1, Squeeze


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _unchanged(module, snapshot):
    return all(torch.equal(v, snapshot[k]) for k, v in module.state_dict().items())


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda: torch.randn(2, 2, 8), r"Chain layer 3 \(AffineCoupling\).*expected rank 4"),
        (lambda: torch.randn(2, 5, 8, 8), r"Chain layer 1 \(ActNorm\).*expected 4 channels"),
        (
            lambda: torch.ones(2, 1, 8, 8, dtype=torch.long),
            r"Chain layer 0 \(Squeeze\).*floating-point",
        ),
        (lambda: [1.0, 2.0], r"expected a torch.Tensor"),
    ],
)
def test_bad_input_names_the_layer_and_changes_nothing(make_input, message):
    # a fresh chain: ActNorm would initialise on this (bad) batch, and must be rolled back
    chain = hf.Chain(
        Squeeze(2), ActNorm(4), InvConv1x1(4), AffineCoupling(4, hidden=8, spatial_dims=2)
    )
    before = _snapshot(chain)
    with pytest.raises((ValueError, TypeError), match=message):
        chain(make_input())
    assert _unchanged(chain, before)
    assert not chain[1].is_initialized


def test_actnorm_rolled_back_when_a_later_layer_rejects_the_batch():
    chain = hf.Chain(ActNorm(4), AffineCoupling(4, hidden=8, cond_features=2))
    before = _snapshot(chain)
    with pytest.raises(ValueError, match=r"Chain layer 1 \(AffineCoupling\).*missing condition"):
        chain(torch.randn(8, 4))
    assert _unchanged(chain, before) and not chain[0].is_initialized


@pytest.mark.parametrize(
    ("cond", "message"),
    [
        (None, "missing condition"),
        (torch.randn(3, 2), r"condition has shape \(3, 2\), expected \(B=4, 2\)"),
        (torch.randn(4, 5), r"condition has shape \(4, 5\)"),
        (torch.randn(4, 2, dtype=torch.float64), "condition is torch.float64"),
    ],
)
def test_missing_or_mismatched_condition(cond, message):
    chain = glow_chain(4, 2, "invert", cond=2, spatial_dims=0)
    with pytest.raises((ValueError, TypeError), match=message):
        chain(torch.randn(4, 4), cond)


def test_condition_for_an_unconditional_chain():
    chain = glow_chain(4, 1, "invert", spatial_dims=0)
    with pytest.raises(ValueError, match="none of its layers takes one"):
        chain(torch.randn(4, 4), torch.randn(4, 2))


def test_spatial_condition_must_match_the_field():
    layer = AffineCoupling(4, hidden=8, cond_features=2, spatial_dims=2)
    with pytest.raises(ValueError, match=r"expected \(B=2, 2\) or \(B=2, 2, 8, 8\)"):
        layer(torch.randn(2, 4, 8, 8), torch.randn(2, 2, 4, 4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_to_inverse(bad):
    chain = glow_chain(4, 2, "invert", spatial_dims=0)
    y = torch.randn(3, 4)
    y[1, 2] = bad
    with pytest.raises(
        ValueError, match=r"Chain layer 5 \(AffineCoupling\): inverse input has 1 NaN/Inf value"
    ):
        chain.inverse(y)
    for layer in (ActNorm(4), InvConv1x1(4), AffineCoupling(4)):
        with pytest.raises(ValueError, match=f"{type(layer).__name__}.inverse: input has 1"):
            layer.inverse(y)


def test_squeeze_rejects_indivisible_sizes_and_vectors():
    with pytest.raises(ValueError, match=r"not divisible by factor 2"):
        Squeeze(2)(torch.randn(1, 1, 5, 4))
    with pytest.raises(ValueError, match=r"expected \(B, C, L\)"):
        Squeeze(2)(torch.randn(1, 4))
    with pytest.raises(ValueError, match="factor"):
        Squeeze(0)


def test_layer_constructor_errors():
    with pytest.raises(ValueError, match="num_features must be an int >= 2"):
        AffineCoupling(1)
    with pytest.raises(ValueError, match=r"spatial_dims must be one of \(0, 1, 2, 3\)"):
        AffineCoupling(4, spatial_dims=4)
    with pytest.raises(ValueError, match="clamp must be a finite number > 0"):
        AffineCoupling(4, clamp=0)
    with pytest.raises(ValueError, match="num_features must be an int >= 1"):
        ActNorm(0)
    with pytest.raises(ValueError, match="num_features must be an int >= 1"):
        InvConv1x1(0)
