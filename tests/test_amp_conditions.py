"""Mixed precision with conditions: a summary network's bfloat16 condition under autocast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hybridflow as hf
from hybridflow import ConditionalFlow
from hybridflow.distributions import coupling_flow
from hybridflow.layers import ActNorm
from hybridflow.networks import Glow
from hybridflow.summary import CNN, MLP


def _flow(kind: str, mode: hf.Mode) -> ConditionalFlow:
    """A reproducible flow (same parameters for the same kind, whatever the mode)."""
    torch.manual_seed(0)
    if kind == "mlp":
        transform = coupling_flow(3, cond_features=4, depth=3, hidden=16, mode=mode)
        flow = ConditionalFlow(transform, MLP(5, 4, hidden=16), event_shape=(3,))
    elif kind == "cnn":
        transform = coupling_flow(3, cond_features=4, depth=3, hidden=16, mode=mode)
        flow = ConditionalFlow(transform, CNN(1, 4, hidden=8, depth=2), event_shape=(3,))
    else:  # a CNN field conditioning a multiscale image flow
        glow = Glow(1, levels=2, depth=2, hidden=8, cond_features=3, mode=mode, seed=0)
        flow = ConditionalFlow(glow, CNN(1, 3, output="field", hidden=8), event_shape=(1, 8, 8))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in flow.modules():
            if isinstance(module, ActNorm):
                module.mark_initialized(True)
        for p in flow.parameters():  # away from the identity couplings of a fresh flow
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return flow


def _data(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    x_shape, theta_shape = {
        "mlp": ((16, 5), (16, 3)),
        "cnn": ((16, 1, 8, 8), (16, 3)),
        "glow": ((4, 1, 8, 8), (4, 1, 8, 8)),
    }[kind]
    return torch.randn(x_shape, generator=generator), torch.randn(theta_shape, generator=generator)


def _loss(flow: nn.Module, x: torch.Tensor, theta: torch.Tensor, autocast: bool) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return -flow(x.to(theta.dtype)).log_prob(theta).mean()


def _grads(kind: str, mode: hf.Mode, autocast: bool, dtype: torch.dtype) -> list[torch.Tensor]:
    flow = _flow(kind, mode).to(dtype)
    x, theta = _data(kind)
    loss = _loss(flow, x, theta.to(dtype), autocast)
    assert loss.dtype == dtype  # the flow and its density stay in the flow's precision
    return list(torch.autograd.grad(loss, list(flow.parameters())))


def _relative_error(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Relative error of all the gradients as one vector."""
    g = torch.cat([t.double().flatten() for t in grads])
    r = torch.cat([t.flatten() for t in reference])
    return float((g - r).norm() / r.norm())


@pytest.mark.parametrize("kind", ["mlp", "cnn", "glow"])
def test_bfloat16_autocast_gradients_of_a_conditional_flow_with_a_summary(kind):
    reference = _grads(kind, "store", autocast=False, dtype=torch.float64)
    float32 = _relative_error(_grads(kind, "invert", False, torch.float32), reference)
    errors = {
        mode: _relative_error(_grads(kind, mode, True, torch.float32), reference)
        for mode in ("store", "invert")
    }
    assert float32 < 1e-5, float32
    # bfloat16 summaries and conditioners (8 bits of mantissa) cost 0.2-2% of the gradient
    # whatever the mode (benchmarks/amp_conditions.py); reconstruction adds at most as much
    assert errors["store"] < 0.05, errors
    assert errors["invert"] < 2 * errors["store"] + 2e-3, errors


@pytest.mark.parametrize("mode", ["store", "invert"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_bfloat16_autocast_training_reduces_the_loss(kind, mode):
    flow = _flow(kind, mode)
    x, theta = _data(kind)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = _loss(flow, x, theta, autocast=True)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in flow.parameters())
        # the condition's gradient reached the summary network through the cast
        assert all(p.grad.abs().sum() > 0 for p in flow.summary.parameters() if p.dim() > 1)
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


def test_sampling_under_autocast_gives_the_flows_dtype():
    flow = _flow("mlp", "invert")
    x, _ = _data("mlp")
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        samples, log_prob = flow(x[:3]).sample_and_log_prob((2,))
    assert samples.dtype == log_prob.dtype == torch.float32
    assert samples.shape == (2, 3, 3) and torch.isfinite(log_prob).all()


def test_a_genuine_dtype_mismatch_is_still_refused_outside_autocast():
    flow = _flow("mlp", "invert")
    flow.summary.to(torch.bfloat16)  # a bfloat16 summary in front of a float32 flow
    x, theta = _data("mlp")
    with pytest.raises(TypeError, match="bfloat16"):
        flow(x.to(torch.bfloat16)).log_prob(theta)
    glow = _flow("glow", "invert")
    x, theta = _data("glow")
    with pytest.raises(TypeError, match="condition is torch.bfloat16"):
        glow.transform(theta, torch.zeros(4, 3, 8, 8, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # accepted where autocast made it
        z, _ = glow.transform(theta, torch.zeros(4, 3, 8, 8, dtype=torch.bfloat16))
    assert z.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 autocast needs a CUDA device")
def test_float16_cuda_autocast_training_of_a_conditional_flow():
    flow = _flow("cnn", "invert").cuda()
    x, theta = (t.cuda() for t in _data("cnn"))
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda")
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = -flow(x).log_prob(theta).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
