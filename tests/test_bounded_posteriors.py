"""Bounded supports: ``Bounded`` keeps a flow's mass inside a box or half-line prior; the
acceptance rate of rejection sampling is reported."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import perturb_parameters
from torch.distributions import (
    Dirichlet,
    Exponential,
    HalfNormal,
    Independent,
    Normal,
    Uniform,
)

import hybridflow as hf
from hybridflow.distributions import ConditionalFlow, Flow, coupling_flow, support_bounds
from hybridflow.layers import Bounded
from hybridflow.sbi import NPEConfig, NPETrainer, TwoMoons, rejection_sample, simulate

INF = math.inf


@pytest.mark.parametrize(
    ("lower", "upper", "grid"),
    [([0.5], [2.0], (0.5, 2.0)), ([1.0], [INF], (1.0, 60.0)), ([-INF], [0.0], (-60.0, 0.0))],
    ids=["box", "lower", "upper"],
)
def test_bounded_flow_density_integrates_to_one_on_the_support(float64, lower, upper, grid):
    torch.manual_seed(0)
    chain = coupling_flow(1, depth=2, hidden=8, support=(lower, upper))
    assert isinstance(chain[0], Bounded)
    perturb_parameters(chain, 0.3)
    dist = Flow(chain, event_shape=(1,))()
    edges = torch.linspace(*grid, 200_001)[1:-1, None]
    with torch.no_grad():
        density = dist.log_prob(edges).exp()
    integral = torch.trapezoid(density, edges[:, 0])
    assert abs(float(integral) - 1) < 2e-3
    samples = dist.sample((2000,))
    assert bool(((samples >= lower[0]) & (samples <= upper[0])).all())


def test_support_bounds_reads_torch_priors() -> None:
    box = Independent(Uniform(-torch.ones(3), 2 * torch.ones(3)), 1)
    assert support_bounds(box, 3) == ([-1.0] * 3, [2.0] * 3)
    assert support_bounds(Exponential(torch.ones(2)), 2) == ([0.0, 0.0], [INF, INF])
    assert support_bounds(HalfNormal(1.0), 2) == ([0.0, 0.0], [INF, INF])
    assert support_bounds(Normal(0.0, 1.0), 1) == ([-INF], [INF])
    assert support_bounds(([0, -INF], [1, 5]), 2) == ([0.0, -INF], [1.0, 5.0])
    assert not any(isinstance(m, Bounded) for m in coupling_flow(2, support=Normal(0.0, 1.0)))
    with pytest.raises(TypeError, match="cannot bound a parameter entry by entry"):
        support_bounds(Dirichlet(torch.ones(3)), 3)
    with pytest.raises(ValueError, match="3 bound"):
        support_bounds(box, 2)


def test_bounded_refuses_bad_bounds_and_points_outside() -> None:
    with pytest.raises(ValueError, match="lower < upper"):
        Bounded([1.0], [1.0])
    with pytest.raises(ValueError, match="one bound pair per parameter entry"):
        Bounded([0.0, 0.0], [1.0])
    with pytest.raises(TypeError, match="numbers"):
        Bounded(["a"], [1.0])
    with pytest.raises(ValueError, match="1 input value"):
        Bounded([0.0], [1.0])(torch.tensor([[1.5]]))


def test_bounded_flow_saves_and_loads(tmp_path) -> None:
    flow = Flow(coupling_flow(2, depth=1, hidden=4, support=([0, 0], [1, INF])), event_shape=(2,))
    hf.save(flow, tmp_path / "m.pt")
    loaded, _ = hf.load(tmp_path / "m.pt")
    assert torch.equal(loaded.transform[0].upper, flow.transform[0].upper)


def test_two_moons_posterior_stays_in_the_box_and_rejection_reports_its_rate() -> None:
    task = TwoMoons()
    data = simulate(task, 1000, seed=0)
    torch.manual_seed(0)
    flow = ConditionalFlow(
        coupling_flow(2, 2, depth=2, hidden=16, support=task.prior),
        event_shape=(2,),
        observation_shape=(2,),
    )
    NPETrainer(flow, NPEConfig(max_epochs=3, learning_rate=3e-3)).fit(data.theta, data.x)
    _, x_o = task.observation(0)
    result = rejection_sample(flow, x_o, 3000, prior=task.prior, batch_size=3000)
    assert result.samples.shape == (3000, 2)
    assert result.acceptance_rate > 0.999 and result.drawn >= 3000
    # an unbounded flow on the same data leaks: the rate says so
    torch.manual_seed(0)
    free = ConditionalFlow(coupling_flow(2, 2, depth=2, hidden=16), event_shape=(2,))
    NPETrainer(free, NPEConfig(max_epochs=1, learning_rate=3e-3)).fit(data.theta, data.x)
    leaky = rejection_sample(free, x_o[None], 500, prior=task.prior, batch_size=2000)
    assert leaky.acceptance_rate < 1.0
    assert leaky.drawn == round(500 / leaky.acceptance_rate) or leaky.drawn >= 2000
