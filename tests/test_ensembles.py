"""Posterior ensembles: K flows as one mixture distribution, trained by NPETrainer, built by
the command line's recipes."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import train_from_recipe
from torch.distributions import Normal

import hybridflow as hf
from hybridflow.cli.main import main
from hybridflow.cli.recipe import build_flow, build_task, check_recipe, recipe_summary
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


def _member(seed: int) -> ConditionalFlow:
    torch.manual_seed(100 + seed)  # the conditioners' initial weights
    return ConditionalFlow(
        coupling_flow(2, 2, depth=1, hidden=8, seed=seed), event_shape=(2,), observation_shape=(2,)
    )


@pytest.mark.parametrize("clip", [None, 0.5])
def test_npe_trains_each_member_as_if_alone_and_the_mixture_is_their_average(clip) -> None:
    """Members share no parameter: with the same batches, each ends where it would have
    trained alone: the step follows the sum of their losses and clips each member apart."""
    task = GaussianLinear(2)
    data = simulate(task, 300, seed=0)
    config = NPEConfig(max_epochs=3, batch_size=32, learning_rate=3e-3, clip_grad_norm=clip)
    ensemble = FlowEnsemble(_member(0), _member(1))
    history = NPETrainer(ensemble, config).fit(data.theta, data.x)
    assert history.validation_loss[-1] < history.validation_loss[0]
    for k in range(2):
        alone = _member(k)
        start = [p.detach().clone() for p in alone.parameters()]
        NPETrainer(alone, config).fit(data.theta, data.x)
        moved = max(
            float((p.detach() - p0).abs().max())
            for p, p0 in zip(alone.parameters(), start, strict=True)
        )
        assert moved > 0.05  # training moved the weights far more than the tolerance
        for (name, a), b in zip(
            ensemble.members[k].named_parameters(), alone.parameters(), strict=True
        ):
            # the sum of the members' losses: each member moves exactly as it would alone
            assert float((a - b).detach().abs().max()) < 1e-6, name
    x, theta = data.x[:4], data.theta[:4]
    per_member = ensemble.member_log_prob(theta, x)
    assert per_member.shape == (2, 4)
    assert not torch.allclose(per_member[0], per_member[1])  # different members
    mixture = ensemble(x).log_prob(theta)
    torch.testing.assert_close(mixture, per_member.logsumexp(0) - math.log(2))
    with torch.no_grad():
        samples = ensemble(x[0]).sample((1000,))
    assert samples.shape == (1000, 2)


def test_vector_recipes_default_to_three_members_and_image_recipes_to_one() -> None:
    recipe = check_recipe({"task": {"name": "slcp"}, "flow": {"depth": 1, "hidden": 4}})
    flow = build_flow(recipe, build_task(recipe))
    assert recipe["flow"]["ensemble"] == 3 and isinstance(flow, FlowEnsemble) and len(flow) == 3
    first, second = (dict(m.named_parameters()) for m in flow.members[:2])
    name = "transform.layers.2.conditioner.0.weight"
    assert not torch.equal(first[name], second[name])  # seeds 0, 1, 2
    image = check_recipe({"task": {"name": "digits"}})
    assert image["flow"]["ensemble"] == 1
    single = check_recipe({"task": {"name": "slcp"}, "flow": {"ensemble": 1}})
    assert single["flow"]["ensemble"] == 1  # the recipe wins
    assert "an ensemble of 3 coupling flows (depth=1" in recipe_summary(recipe)
    assert "; coupling flow (depth=5" in recipe_summary(single)


def _tiny_two_moons(ensemble: str) -> str:
    """A one-epoch two-moons recipe; ``ensemble`` is its ``[flow]`` line ("" for the default)."""
    return (
        '[task]\nname = "two_moons"\n[simulations]\ncount = 128\n'
        f"[flow]\n{ensemble}depth = 1\nhidden = 8\n[summary]\nfeatures = 2\nhidden = 8\n"
        'depth = 1\n[training]\nmax_epochs = 1\nbatch_size = 64\nschedule = "constant"\n'
    )


def test_resuming_with_another_number_of_members_names_the_key(tmp_path, capsys) -> None:
    out = train_from_recipe(tmp_path, _tiny_two_moons("ensemble = 1\n"))
    before = (out / "checkpoint.pt").read_bytes()
    config = tmp_path / "default.toml"
    config.write_text(_tiny_two_moons(""))  # the default: 3 members
    argv = ["train", "--config", str(config), "--out", str(out), "--resume", "--quiet"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "holds 1 flow(s) and the recipe builds 3" in error and "set ensemble = 1" in error
    assert (out / "checkpoint.pt").read_bytes() == before  # nothing touched


def test_recipe_ensemble_trains_saves_and_samples(tmp_path, capsys) -> None:
    recipe = check_recipe({"task": {"name": "two_moons"}, "flow": {"ensemble": 2, "depth": 1}})
    flow = build_flow(recipe, build_task(recipe))
    assert isinstance(flow, FlowEnsemble) and len(flow) == 2
    out = train_from_recipe(tmp_path, _tiny_two_moons("ensemble = 2\n"))
    loaded, _ = hf.load(out / "model.pt")
    assert isinstance(loaded, FlowEnsemble)
    samples = tmp_path / "s.pt"
    argv = ["sample", "--model", str(out / "model.pt"), "--out", str(samples), "--c2st", "fast"]
    assert main(argv) == 0
    assert torch.load(samples, weights_only=True)["samples"].shape == (256, 4, 2)
    capsys.readouterr()
