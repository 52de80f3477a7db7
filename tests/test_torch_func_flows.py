"""torch.func on whole flows: vmap over log_prob, and grad through functional_call."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import hybridflow as hf
from hybridflow import ConditionalFlow
from hybridflow.distributions import coupling_flow
from hybridflow.errors import ModifiedError
from hybridflow.networks import Glow
from hybridflow.summary import CNN, MLP


class LogProb(nn.Module):
    """``log q(theta | x)`` as a module: the pattern for ``functional_call``, whose swapped
    parameters hold only during the call (a distribution returned from it would escape)."""

    def __init__(self, flow: ConditionalFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        return self.flow(x).log_prob(theta)


def _flow(summary: str = "mlp", mode: hf.Mode = "invert", validate: bool | None = None):
    torch.manual_seed(0)
    if summary == "mlp":
        transform = coupling_flow(3, cond_features=4, depth=2, hidden=8, mode=mode)
        flow = ConditionalFlow(transform, MLP(5, 4, hidden=8), event_shape=(3,), validate=validate)
        x, theta = torch.randn(4, 6, 5), torch.randn(4, 6, 3)
    elif summary == "cnn":
        transform = coupling_flow(3, cond_features=4, depth=2, hidden=8, mode=mode)
        flow = ConditionalFlow(transform, CNN(1, 4, hidden=8, depth=2), event_shape=(3,))
        x, theta = torch.randn(3, 5, 1, 8, 8), torch.randn(3, 5, 3)
    else:
        glow = Glow(1, levels=2, depth=1, hidden=8, cond_features=3, mode=mode, seed=0)
        flow = ConditionalFlow(glow, CNN(1, 3, output="field", hidden=8), event_shape=(1, 8, 8))
        x, theta = torch.randn(2, 3, 1, 8, 8), torch.randn(2, 3, 1, 8, 8)
    with torch.no_grad():  # ActNorm's data-dependent initialisation runs eagerly, once
        flow(x[0]).log_prob(theta[0])
        generator = torch.Generator().manual_seed(1)
        for p in flow.parameters():  # couplings start as the identity, blind to the condition
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return flow, x, theta


@pytest.mark.parametrize("validate", [None, True, False])
@pytest.mark.parametrize("mode", ["invert", "store"])
def test_vmap_over_log_prob_with_a_summary_network(mode, validate):
    flow, x, theta = _flow("mlp", mode, validate)
    batched = vmap(lambda xs, ts: flow(xs).log_prob(ts))(x, theta)
    expected = torch.stack([flow(xs).log_prob(ts) for xs, ts in zip(x, theta, strict=True)])
    assert batched.shape == (4, 6)
    torch.testing.assert_close(batched, expected.detach())


@pytest.mark.parametrize("summary", ["cnn", "glow"])
def test_vmap_over_log_prob_with_a_cnn_summary(summary):
    flow, x, theta = _flow(summary)
    batched = vmap(lambda xs, ts: flow(xs).log_prob(ts))(x, theta)
    expected = torch.stack([flow(xs).log_prob(ts) for xs, ts in zip(x, theta, strict=True)])
    torch.testing.assert_close(batched, expected.detach())


@pytest.mark.parametrize("mode", ["invert", "store"])
def test_grad_through_functional_call_of_a_log_prob_module(mode):
    flow, x, theta = _flow("mlp", mode)
    model = LogProb(flow)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p: dict[str, Tensor]) -> Tensor:
        return -functional_call(model, p, (x[0], theta[0])).mean()

    grads = grad(loss)(params)
    reference = torch.autograd.grad(-model(x[0], theta[0]).mean(), list(model.parameters()))
    for (name, _), expected in zip(model.named_parameters(), reference, strict=True):
        torch.testing.assert_close(grads[name], expected)
    assert any(grads[name].abs().sum() > 0 for name in grads if name.startswith("flow.summary"))


def test_per_sample_gradients_with_vmap_of_grad():
    flow, x, theta = _flow("mlp")
    model = LogProb(flow)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p: dict[str, Tensor], xs: Tensor, ts: Tensor) -> Tensor:
        return -functional_call(model, p, (xs[None], ts[None])).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x[0], theta[0])
    for i in (0, 5):
        reference = torch.autograd.grad(
            -model(x[0, i : i + 1], theta[0, i : i + 1]).sum(), list(model.parameters())
        )
        for (name, _), expected in zip(model.named_parameters(), reference, strict=True):
            torch.testing.assert_close(per_sample[name][i], expected)


def test_a_distribution_escaping_functional_call_is_refused():
    flow, x, theta = _flow("mlp")
    params = {name: p.detach() for name, p in flow.named_parameters()}

    def loss(p: dict[str, Tensor]) -> Tensor:
        # the distribution's transform would run with the flow's own parameters, not p's:
        # its gradients with respect to p would be silently zero
        return -functional_call(flow, p, (x[0],)).log_prob(theta[0]).mean()

    with pytest.raises(ModifiedError, match="functional_call"):
        grad(loss)(params)
    inside = functional_call(flow, params, (x[0],))
    with pytest.raises(ModifiedError, match="swapped"):
        inside.sample((2,))
    flow(x[0]).log_prob(theta[0])  # a distribution built and used outside the call is fine
