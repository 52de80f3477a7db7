"""Flows as torch distributions: shapes, the direction convention, densities, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal

import hybridflow as hf
from hybridflow.distributions import (
    ConditionalFlow,
    FixedDistribution,
    Flow,
    FlowDistribution,
    StandardNormal,
    coupling_flow,
)
from hybridflow.layers import ActNorm, InvConv1x1, Inverse
from hybridflow.networks import Glow
from hybridflow.summary import CNN, MLP, DeepSet, pad_sets

torch.set_default_dtype(torch.float32)


def _perturb(module: nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    """Move every parameter away from its (often identity) initial value, reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _mark_initialized(module: nn.Module) -> None:
    """Skip ActNorm's data-dependent initialisation (the tests perturb parameters instead)."""
    for m in module.modules():
        if isinstance(m, ActNorm):
            m.mark_initialized(True)


def _conditional_flow(
    dtype: torch.dtype = torch.float64, mode: hf.Mode = "invert"
) -> ConditionalFlow:
    torch.manual_seed(0)
    flow = ConditionalFlow(
        coupling_flow(3, cond_features=4, depth=3, hidden=16, mode=mode),
        summary=MLP(5, 4, hidden=16),
        event_shape=(3,),
        observation_shape=(5,),
    ).to(dtype)
    _mark_initialized(flow)
    _perturb(flow)
    return flow


# -- the base ------------------------------------------------------------------------------


def test_standard_normal_matches_torch_and_follows_dtype() -> None:
    base = StandardNormal((2, 3))
    z = torch.randn(4, 2, 3)
    expected = Normal(0.0, 1.0).log_prob(z).sum((1, 2))
    torch.testing.assert_close(base().log_prob(z), expected)
    assert base().batch_shape == () and base().event_shape == (2, 3)
    assert base.double()().sample().dtype == torch.float64
    assert base.log_normalizer() == pytest.approx(3 * math.log(2 * math.pi))


@pytest.mark.parametrize("shape", [(), (0,), (2, -1), "ab"])
def test_standard_normal_refuses_bad_shapes(shape: object) -> None:
    with pytest.raises((ValueError, TypeError), match="event_shape"):
        StandardNormal(shape)  # type: ignore[arg-type]


# -- the direction convention and the density -------------------------------------------------


def test_linear_flow_is_the_gaussian_it_implies() -> None:
    """T(theta) = A theta + b (ActNorm, 1x1 convolution) and z ~ N(0, I) give
    theta ~ N(-A^-1 b, A^-1 A^-T): log_prob and samples must both say so."""
    torch.manual_seed(1)
    chain = hf.Chain(ActNorm(3), InvConv1x1(3, seed=3), ActNorm(3)).double()
    _mark_initialized(chain)
    _perturb(chain, 0.5)
    flow = Flow(chain, event_shape=(3,)).double()
    with torch.no_grad():
        b, _ = chain(torch.zeros(1, 3, dtype=torch.float64))
        columns, _ = chain(torch.eye(3, dtype=torch.float64))
    a = (columns - b).T  # T(e_i) - T(0) = A e_i
    a_inv = torch.linalg.inv(a)
    gaussian = MultivariateNormal(-(a_inv @ b[0]), covariance_matrix=a_inv @ a_inv.T)
    theta = torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(flow().log_prob(theta), gaussian.log_prob(theta))
    torch.manual_seed(2)
    samples = flow().sample((200_000,))
    torch.testing.assert_close(samples.mean(0), gaussian.mean, atol=0.02, rtol=0)
    torch.testing.assert_close(
        torch.cov(samples.T), gaussian.covariance_matrix, atol=0.03, rtol=0.03
    )


def test_nonlinear_flow_density_integrates_to_one() -> None:
    torch.manual_seed(0)
    flow = Flow(
        coupling_flow(2, depth=3, hidden=16, coupling="spline", bound=3.0), event_shape=(2,)
    )
    flow = flow.double()
    _mark_initialized(flow)
    _perturb(flow, 0.2)
    grid = torch.linspace(-9, 9, 601, dtype=torch.float64)
    theta = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        mass = flow().log_prob(theta).exp().sum() * (grid[1] - grid[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=5e-3)


def test_sample_and_log_prob_agree_with_log_prob() -> None:
    flow = _conditional_flow()
    x = torch.randn(4, 5, dtype=torch.float64)
    dist = flow(x)
    samples, log_prob = dist.sample_and_log_prob((6,))
    assert samples.shape == (6, 4, 3) and log_prob.shape == (6, 4)
    torch.testing.assert_close(dist.log_prob(samples), log_prob, atol=1e-9, rtol=1e-9)
    r_samples, r_log_prob = dist.rsample_and_log_prob((6,))
    torch.testing.assert_close(dist.log_prob(r_samples.detach()), r_log_prob.detach())


# -- shapes ----------------------------------------------------------------------------------


def test_conditional_shapes_follow_zuko() -> None:
    flow = _conditional_flow(torch.float32)
    x = torch.randn(4, 5)
    dist = flow(x)
    assert isinstance(dist, FlowDistribution) and isinstance(dist, torch.distributions.Distribution)
    assert dist.batch_shape == (4,) and dist.event_shape == (3,)
    assert dist.sample().shape == (4, 3)
    assert dist.sample((2, 6)).shape == (2, 6, 4, 3)
    assert dist.log_prob(torch.randn(4, 3)).shape == (4,)
    assert dist.log_prob(torch.randn(7, 4, 3)).shape == (7, 4)
    broadcast = dist.log_prob(torch.randn(7, 1, 3))
    assert broadcast.shape == (7, 4)
    one = flow(x[2])  # one unbatched observation
    assert one.batch_shape == () and one.sample((5,)).shape == (5, 3)
    theta = torch.randn(5, 3)
    torch.testing.assert_close(one.log_prob(theta), flow(x[2:3].expand(5, 5)).log_prob(theta))
    with pytest.raises(ValueError, match="event shape"):
        dist.log_prob(torch.randn(4, 2))
    with pytest.raises(ValueError, match="broadcast"):
        dist.log_prob(torch.randn(3, 3))


def test_unconditional_flow_shapes() -> None:
    flow = Flow(coupling_flow(4, depth=2, hidden=8), event_shape=(4,))
    dist = flow()
    assert dist.batch_shape == () and dist.sample((3,)).shape == (3, 4)
    assert dist.log_prob(torch.randn(2, 5, 4)).shape == (2, 5)
    assert dist.log_prob(torch.randn(4)).shape == ()


def test_image_flows_with_a_conditional_glow() -> None:
    torch.manual_seed(0)
    glow = Glow(1, levels=2, depth=1, hidden=8, cond_features=3, seed=0)
    flow = ConditionalFlow(glow, CNN(1, 3, output="field", hidden=8), event_shape=(1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    theta = torch.rand(2, 1, 8, 8)
    loss = -flow(x).log_prob(theta).mean()
    loss.backward()
    assert all(p.grad is not None for p in flow.summary.parameters())
    dist = flow(x)
    assert dist.sample((3,)).shape == (3, 2, 1, 8, 8)
    unconditional = Flow(Glow(2, levels=1, depth=1, hidden=8), event_shape=(2, 4, 4))
    assert unconditional().log_prob(torch.randn(5, 2, 4, 4)).shape == (5,)


def test_custom_base_and_generative_transforms() -> None:
    """A base given as a distribution, and a transform built in the generative direction
    wrapped in Inverse."""
    torch.manual_seed(0)
    scale = torch.tensor([1.0, 2.0])
    base = torch.distributions.Independent(Normal(torch.zeros(2), scale), 1)
    chain = hf.Chain(ActNorm(2))
    _mark_initialized(chain)
    flow = Flow(Inverse(chain), base)
    assert isinstance(flow.base, FixedDistribution)
    theta = torch.randn(3, 2)
    torch.testing.assert_close(flow().log_prob(theta), base.log_prob(theta))
    with pytest.raises(ValueError, match="disagrees"):
        Flow(hf.Chain(ActNorm(2)), base, event_shape=(3,))


# -- gradients ---------------------------------------------------------------------------


@pytest.mark.parametrize("loss_kind", ["log_prob", "rsample"])
def test_invert_mode_gradients_equal_plain_autograd(loss_kind: str) -> None:
    """NPE (log_prob) and reverse-KL (rsample) losses give the summary network and the
    transform the same gradients whether the chain stores or reconstructs activations."""
    x = torch.randn(6, 5, dtype=torch.float64)
    theta = torch.randn(6, 3, dtype=torch.float64)
    grads = {}
    for mode in ("store", "invert"):
        flow = _conditional_flow(torch.float64, mode)
        torch.manual_seed(5)
        if loss_kind == "log_prob":
            loss = -flow(x).log_prob(theta).mean()
        else:
            samples, log_q = flow(x).rsample_and_log_prob((4,))
            loss = (log_q + samples.square().sum(-1)).mean()
        loss.backward()
        grads[mode] = [p.grad.clone() for p in flow.parameters()]
    assert any(g.abs().sum() > 0 for g in grads["invert"][-4:])  # summary gradients exist
    for a, b in zip(grads["store"], grads["invert"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


# -- sets through the flow -------------------------------------------------------------------


def test_set_observations_with_masks_and_lists() -> None:
    torch.manual_seed(0)
    flow = ConditionalFlow(
        coupling_flow(2, cond_features=4, depth=2, hidden=8),
        DeepSet(2, 4, hidden=8),
        event_shape=(2,),
        observation_shape=(None, 2),
    )
    sets = [torch.randn(3, 2), torch.randn(1, 2), torch.randn(5, 2)]
    padded, mask = pad_sets(sets)
    theta = torch.randn(3, 2)
    from_padded = flow(padded, mask=mask).log_prob(theta)
    from_list = flow(sets).log_prob(theta)
    torch.testing.assert_close(from_padded, from_list)
    single = flow(sets[1]).log_prob(theta[1])
    torch.testing.assert_close(single, from_list[1])


# -- bad input ------------------------------------------------------------------------------


def test_construction_errors() -> None:
    conditional = coupling_flow(2, cond_features=2, depth=1, hidden=4)
    unconditional = coupling_flow(2, depth=1, hidden=4)
    with pytest.raises(ValueError, match="takes no condition"):
        ConditionalFlow(unconditional, event_shape=(2,))
    with pytest.raises(ValueError, match="takes a condition"):
        Flow(conditional, event_shape=(2,))
    with pytest.raises(ValueError, match="event_shape"):
        ConditionalFlow(conditional)
    with pytest.raises(TypeError, match="InvertibleModule"):
        ConditionalFlow(nn.Linear(2, 2), event_shape=(2,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="summary"):
        ConditionalFlow(conditional, summary=lambda x: x, event_shape=(2,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_shape"):
        ConditionalFlow(conditional, base=Normal(torch.zeros(2), torch.ones(2)))
    with pytest.raises(ValueError, match="observation_shape"):
        ConditionalFlow(conditional, event_shape=(2,), observation_shape=(-1,))
    with pytest.raises(ValueError, match="coupling must be"):
        coupling_flow(2, coupling="maf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="features must be"):
        coupling_flow(0)


def test_observation_errors_name_the_shapes() -> None:
    flow = _conditional_flow(torch.float32)
    with pytest.raises(
        ValueError, match=r"observation of shape \(4, 6\) does not match observation_shape \(5,\)"
    ):
        flow(torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 5\)"):
        flow(torch.randn(2, 3, 5))
    bad = torch.randn(4, 5)
    bad[1, 2] = math.nan
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        flow(bad)
    plain = ConditionalFlow(coupling_flow(2, cond_features=2, depth=1, hidden=4), event_shape=(2,))
    with pytest.raises(TypeError, match="must be a tensor"):
        plain([torch.randn(2)])
    with pytest.raises(ValueError, match=r"observation_shape=\(2,\)"):
        plain(torch.randn(2))
