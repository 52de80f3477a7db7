"""torch.func works on chains: invert mode falls back to store mode under transforms."""

from __future__ import annotations

import pytest
import torch
from helpers import glow_chain
from torch.func import functional_call, jacfwd, jacrev, vmap


@pytest.fixture
def chain(float64):
    return glow_chain(3, 2, "invert", hidden=8, spatial_dims=0)


def _log_prob(chain, x):
    z, logdet = chain(x)
    return -0.5 * (z**2).sum(-1) + logdet


def test_functional_call_with_replaced_parameters(chain):
    x = torch.randn(5, 3)
    params = {k: v.detach() + 0.01 for k, v in chain.named_parameters()}
    out, logdet = functional_call(chain, params, (x,))
    with torch.no_grad():
        for k, p in chain.named_parameters():
            p.copy_(params[k])
    expected, expected_logdet = chain(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(logdet, expected_logdet)


def test_grad_through_functional_call_matches_autograd(chain):
    x = torch.randn(5, 3)
    params = {k: v.detach() for k, v in chain.named_parameters()}

    def loss(p):
        z, logdet = functional_call(chain, p, (x,))
        return (0.5 * z**2).sum() - logdet.sum()

    grads = torch.func.grad(loss)(params)
    reference = torch.autograd.grad(loss(dict(chain.named_parameters())), list(chain.parameters()))
    for (name, _), expected in zip(chain.named_parameters(), reference, strict=True):
        torch.testing.assert_close(grads[name], expected)


def test_vmap_over_log_prob(chain):
    x = torch.randn(4, 5, 3)
    batched = vmap(lambda xs: _log_prob(chain, xs))(x)
    expected = torch.stack([_log_prob(chain, xs) for xs in x])
    torch.testing.assert_close(batched, expected.detach())


@pytest.mark.parametrize("transform", [jacrev, jacfwd])
def test_jacobian_of_forward(chain, transform):
    x = torch.randn(1, 3)
    jacobian = transform(lambda v: chain(v.view(1, 3))[0].view(3))(x.view(3))
    _, logdet = chain(x)
    torch.testing.assert_close(torch.linalg.slogdet(jacobian)[1], logdet[0].detach())
