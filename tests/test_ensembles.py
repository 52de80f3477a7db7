"""Posterior ensembles: K flows as one mixture distribution, trained by NPETrainer, built by
the command line's recipes."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

import hybridflow as hf
from hybridflow.cli.main import main
from hybridflow.cli.recipe import build_flow, build_task, check_recipe
from hybridflow.distributions import ConditionalFlow, FlowEnsemble, UniformMixture, coupling_flow
from hybridflow.sbi import GaussianLinear, NPEConfig, NPETrainer, simulate


def test_uniform_mixture_log_prob_sample_and_rsample() -> None:
    loc = torch.tensor([-2.0, 3.0], requires_grad=True)
    mix = UniformMixture([Normal(loc[0], 0.5), Normal(loc[1], 0.5)])
    x = torch.linspace(-4, 5, 7)
    expected = torch.log(
        0.5 * Normal(-2.0, 0.5).log_prob(x).exp() + 0.5 * Normal(3.0, 0.5).log_prob(x).exp()
    )
    torch.testing.assert_close(mix.log_prob(x), expected)
    torch.manual_seed(0)
    samples = mix.sample((20_000,))
    assert abs(float((samples > 0.5).double().mean()) - 0.5) < 0.02  # each member half
    assert mix.has_rsample
    drawn = mix.rsample((64,))
    drawn.sum().backward()
    # every sample moves with the location of the member that drew it: d/dloc sums to 64
    assert float(loc.grad.sum()) == pytest.approx(64.0)
    assert mix.rsample(3).shape == mix.sample(3).shape == (3,)
    with pytest.raises(ValueError, match="member 1 has batch_shape"):
        UniformMixture([Normal(0.0, 1.0), Normal(torch.zeros(2), 1.0)])


def test_npe_trains_each_member_on_its_own_loss_and_the_mixture_is_the_posterior() -> None:
    task = GaussianLinear(2)
    data = simulate(task, 1000, seed=0)
    members = [
        ConditionalFlow(coupling_flow(2, 2, depth=2, hidden=16, seed=k), event_shape=(2,))
        for k in range(2)
    ]
    torch.manual_seed(0)
    ensemble = FlowEnsemble(*members)
    config = NPEConfig(max_epochs=10, batch_size=32, learning_rate=3e-3, schedule="cosine")
    history = NPETrainer(ensemble, config).fit(data.theta, data.x)
    assert history.validation_loss[-1] < history.validation_loss[0]
    x = data.x[:4]
    theta = data.theta[:4]
    per_member = ensemble.member_log_prob(theta, x)
    assert per_member.shape == (2, 4)
    assert not torch.allclose(per_member[0], per_member[1])  # different members
    mixture = ensemble(x).log_prob(theta)
    torch.testing.assert_close(mixture, per_member.logsumexp(0) - math.log(2))
    # a typical observation (x ~ N(0, 0.2 I)); the prior would miss the posterior's mean by
    # 0.67 and its width by 41%
    x_o = torch.tensor([0.3, -0.2])
    with torch.no_grad():
        samples = ensemble(x_o[None]).sample((4000,))[:, 0].double()
    mean, covariance = task.posterior_moments(x_o[None])
    std = covariance.diagonal().sqrt()
    assert ((samples.mean(0) - mean[0]).abs() / std).max() < 0.4
    ratio = samples.std(0) / std  # an ensemble errs on the wide side; the prior's is 1.41
    assert bool(((ratio > 0.85) & (ratio < 1.3)).all()), ratio


def test_recipe_ensemble_trains_saves_and_samples(tmp_path, capsys) -> None:
    recipe = check_recipe({"task": {"name": "two_moons"}, "flow": {"ensemble": 2, "depth": 1}})
    flow = build_flow(recipe, build_task(recipe))
    assert isinstance(flow, FlowEnsemble) and len(flow) == 2
    config = tmp_path / "ens.toml"
    config.write_text(
        '[task]\nname = "two_moons"\n[simulations]\ncount = 128\n'
        "[flow]\nensemble = 2\ndepth = 1\nhidden = 8\n[summary]\nfeatures = 2\nhidden = 8\n"
        'depth = 1\n[training]\nmax_epochs = 1\nbatch_size = 64\nschedule = "constant"\n'
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    loaded, _ = hf.load(out / "model.pt")
    assert isinstance(loaded, FlowEnsemble)
    samples = tmp_path / "s.pt"
    assert main(["sample", "--model", str(out / "model.pt"), "--out", str(samples)]) == 0
    assert torch.load(samples, weights_only=True)["samples"].shape == (256, 4, 2)
    capsys.readouterr()
