"""Truncated sequential NPE on a small Gaussian task whose posterior is much narrower than
its prior (prior N(0, 4), noise 0.1: posterior standard deviation 0.0999)."""

from __future__ import annotations

import math

import pytest
import torch

from hybridflow.distributions import ConditionalFlow, coupling_flow
from hybridflow.operators import Identity
from hybridflow.sbi import LinearInverseProblem, NPEConfig, truncated_npe


def test_tsnpe_truncates_the_prior_to_the_posterior_and_recovers_it() -> None:
    task = LinearInverseProblem(Identity((1,)), prior_std=2.0, noise_std=0.1)
    x_o = torch.tensor([0.7])
    torch.manual_seed(0)
    flow = ConditionalFlow(
        # affine: Gaussian tails (a spline's identity tails keep log q above the HPD
        # threshold far from the posterior until it is well trained)
        coupling_flow(1, 1, depth=1, hidden=16, coupling="affine"),
        event_shape=(1,),
        observation_shape=(1,),
    )
    config = NPEConfig(max_epochs=20, batch_size=32, learning_rate=1e-2, schedule="cosine")
    rounds = truncated_npe(
        task,
        flow,
        x_o,
        rounds=3,
        simulations_per_round=400,
        config=config,
        num_threshold_samples=2000,
    )
    assert [len(r.theta) for r in rounds] == [400, 400, 400]
    assert rounds[0].acceptance_rate == 1.0 and rounds[0].threshold == -math.inf
    # later rounds draw from a region far smaller than the prior...
    for late in rounds[1:]:
        assert math.isfinite(late.threshold) and late.acceptance_rate < 0.5
        assert float(late.theta.std(0).max()) < 0.6  # the prior's is 2
        with torch.no_grad():
            assert bool((flow(x_o).log_prob(late.theta) > -1e9).all())
    # ...and the final posterior matches the exact one at x_o
    mean, covariance = task.posterior_moments(x_o[None])
    std = covariance.diagonal().sqrt()
    with torch.no_grad():
        samples = flow(x_o).sample((4000,)).double()
    assert ((samples.mean(0) - mean[0]).abs() / std).max() < 0.5
    assert ((samples.std(0) / std) - 1).abs().max() < 0.3
    assert rounds[-1].history.epochs >= 1


def test_tsnpe_refuses_bad_rounds() -> None:
    task = LinearInverseProblem(Identity((2,)))
    flow = ConditionalFlow(coupling_flow(2, 2, depth=1, hidden=4), event_shape=(2,))
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        truncated_npe(task, flow, torch.zeros(1, 2), rounds=0)
