"""Posteriors of any parameter dimension: one parameter, odd dimensions, through the trainer
and the command line; an unbatched observation without ``observation_shape``."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import train_from_recipe

from hybridflow.cli.main import main
from hybridflow.cli.recipe import check_recipe
from hybridflow.distributions import ConditionalFlow, Flow, coupling_flow
from hybridflow.layers import SPLINE_BOUND, ConditionalAffine, ConditionalSpline, SplineCoupling
from hybridflow.sbi import (
    GaussianLinear,
    LeakageWarning,
    NPEConfig,
    NPETrainer,
    TwoMoons,
    load_checkpoint,
    simulate,
)


def test_one_parameter_flow_is_elementwise_and_spline_by_default() -> None:
    chain = coupling_flow(1, 3, depth=2, hidden=8)
    blocks = [type(m) for m in chain.modules() if isinstance(m, ConditionalSpline)]
    assert len(blocks) == 2
    assert all(m.bound == SPLINE_BOUND for m in chain.modules() if isinstance(m, SplineCoupling))
    assert SplineCoupling(4).bound == SPLINE_BOUND  # one bound for both
    affine = coupling_flow(1, 3, depth=1, coupling="affine")
    assert any(isinstance(m, ConditionalAffine) for m in affine.modules())
    # an unconditional 1-D flow has learned constant knots
    flow = Flow(coupling_flow(1, depth=1, hidden=8), event_shape=(1,))
    assert flow().sample((7,)).shape == (7, 1)


@pytest.mark.parametrize("dim", [1, 3])
def test_npe_recovers_one_and_odd_dimensional_gaussian_posteriors(dim: int) -> None:
    """Posterior N(x / 2, 0.05 I). The tolerances are test_sbi's (a mean error of 0.4 posterior
    standard deviations alone gives a C2ST of 0.58) with 2000 simulations; the prior misses
    the width by 41%."""
    task = GaussianLinear(dim)
    data = simulate(task, 2000, seed=0)
    torch.manual_seed(0)
    flow = ConditionalFlow(
        coupling_flow(dim, dim, depth=2, hidden=32),
        event_shape=(dim,),
        observation_shape=(dim,),
    )
    config = NPEConfig(max_epochs=15, learning_rate=3e-3, schedule="cosine")
    NPETrainer(flow, config).fit(data.theta, data.x)
    _, x_o = task.observation(0)
    with torch.no_grad():
        samples = flow(x_o).sample((4000,)).double()
    mean, covariance = task.posterior_moments(x_o[None])
    std = covariance.diagonal().sqrt()
    assert ((samples.mean(0) - mean[0]).abs() / std).max() < 0.4
    assert ((samples.std(0) / std) - 1).abs().max() < 0.2


def test_unbatched_observation_without_observation_shape_says_what_to_pass() -> None:
    flow = ConditionalFlow(coupling_flow(1, 2, depth=1, hidden=4), event_shape=(1,))
    assert flow(torch.randn(5, 2)).batch_shape == (5,)
    with pytest.raises(ValueError, match=r"observation_shape=\(2,\)"):
        flow(torch.randn(2))
    shaped = ConditionalFlow(
        coupling_flow(1, 2, depth=1, hidden=4), event_shape=(1,), observation_shape=(2,)
    )
    assert shaped(torch.randn(2)).batch_shape == ()


def test_cli_trains_and_samples_a_one_parameter_task(tmp_path, capsys) -> None:
    out = train_from_recipe(
        tmp_path,
        '[task]\nname = "gaussian_linear"\ndim = 1\n[simulations]\ncount = 128\n'
        "[flow]\ndepth = 1\nhidden = 8\n[summary]\nfeatures = 2\nhidden = 8\ndepth = 1\n"
        '[training]\nmax_epochs = 1\nbatch_size = 64\nschedule = "constant"\npatience = false\n',
    )
    model = out / "model.pt"
    assert model.is_file()
    args = ["sample", "--model", str(model), "--out", str(tmp_path / "s.pt"), "--num", "50"]
    png = tmp_path / "s.png"
    assert main([*args, "--c2st", "fast", "--png", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "samples inside the prior's support: 100.0%" in printed
    assert "C2ST against the reference posterior (fast recipe" in printed
    result = torch.load(tmp_path / "s.pt", weights_only=True)
    assert result["reference"].shape == result["samples"].shape == (50, 4, 1)
    assert result["c2st"].shape == (4,) and ((result["c2st"] > 0) & (result["c2st"] < 1)).all()
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main([*args, "--c2st", "none"]) == 0
    assert "C2ST" not in capsys.readouterr().out


def test_cli_mlp_summary_standardizes_with_the_training_statistics(tmp_path) -> None:
    from hybridflow.cli.recipe import build_flow, build_task, check_recipe, fit_standardize
    from hybridflow.summary import Sequential, Standardize

    recipe = check_recipe({"task": {"name": "slcp"}})
    assert recipe["summary"]["standardize"] and recipe["flow"]["coupling"] == "spline"
    task = build_task(recipe)
    flow = build_flow(recipe, task)
    members = flow.members  # the vector recipe's ensemble: every member standardizes
    assert len(members) == recipe["flow"]["ensemble"] > 1
    for member in members:
        assert isinstance(member.summary, Sequential)
        assert isinstance(member.summary[0], Standardize)
    data = simulate(task, 64, seed=0)
    fit_standardize(flow, data.x)
    for member in members:
        torch.testing.assert_close(member.summary[0].mean, data.x.mean(0))
    assert not check_recipe({"task": {"name": "digits"}})["summary"]["standardize"]


def test_plateau_schedule_stops_once_the_learning_rate_floor_brings_nothing() -> None:
    """A learning rate far too small to improve anything: the plateau schedule halves it to
    its floor within a few epochs, and the run stops there instead of waiting out patience."""
    task = GaussianLinear(2)
    data = simulate(task, 256, seed=0)
    flow = ConditionalFlow(coupling_flow(2, 2, depth=1, hidden=4), event_shape=(2,))
    config = NPEConfig(
        max_epochs=100,
        batch_size=128,
        learning_rate=1e-6,
        min_learning_rate=2.5e-7,
        schedule_patience=1,
        patience=50,
    )
    history = NPETrainer(flow, config).fit(data.theta, data.x)
    assert history.stopped_early
    assert min(history.learning_rate) == pytest.approx(2.5e-7)
    assert history.epochs < 20  # not 50 epochs of patience at the floor


def _tiny_config(tmp_path, epochs: int = 1):
    config = tmp_path / "tiny.toml"
    config.write_text(
        '[task]\nname = "gaussian_linear"\ndim = 2\n[simulations]\ncount = 128\n'
        "[flow]\ndepth = 1\nhidden = 8\n[summary]\nfeatures = 2\nhidden = 8\ndepth = 1\n"
        f'[training]\nmax_epochs = {epochs}\nbatch_size = 64\nschedule = "constant"\n'
        "patience = false\n"
    )
    return config


def test_cli_quiet_threads_resume_extends_and_help_is_plain(tmp_path, capsys) -> None:
    from hybridflow.cli.main import build_parser

    config, out = _tiny_config(tmp_path), tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _check_cli_flags(config, out, capsys, build_parser, tmp_path)
    finally:
        torch.set_num_threads(threads)  # leave the process as the test found it


def _check_cli_flags(config, out, capsys, build_parser, tmp_path) -> None:
    seen = []
    import hybridflow.cli.train as train_module

    real = train_module.train_recipe

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    train_module.train_recipe = spy
    try:
        assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    finally:
        train_module.train_recipe = real
    assert seen == [1]  # the demo's default, --threads 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # --quiet is quiet
    # --resume --epochs N trains a finished run on to N epochs
    argv = ["train", "--config", str(config), "--out", str(out), "--resume", "--epochs", "3"]
    assert main(argv) == 0
    assert "training on to 3" in capsys.readouterr().err
    history = load_checkpoint(out / "checkpoint.pt")["history"]  # checked, checksummed
    assert len(history["train_loss"]) == 3
    sample = ["sample", "--model", str(out / "model.pt"), "--out", str(tmp_path / "s.pt")]
    assert main([*sample, "--quiet", "--c2st", "none"]) == 0
    assert capsys.readouterr().out == ""
    # help: no reST, defaults shown
    for command in ("train", "sample", "demo"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = capsys.readouterr().out
        assert "``" not in text and ":func:" not in text and ":class:" not in text
        assert "(default: 1)" in text  # --threads
    assert (
        "(default: 256)"
        in build_parser()._subparsers._group_actions[0].choices["sample"].format_help()
    )


def test_sample_import_loads_a_model_with_the_users_own_summary(tmp_path, capsys) -> None:
    import subprocess
    import sys
    from pathlib import Path

    module = tmp_path / "my_summary.py"
    module.write_text(
        "from torch import nn\nfrom hybridflow.config import Configurable\n\n"
        "class Half(nn.Module, Configurable):\n"
        "    def __init__(self, scale: float = 0.5):\n"
        "        super().__init__()\n        self.scale = scale\n"
        "    def forward(self, x):\n        return x * self.scale\n"
    )
    build = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); import hybridflow as hf\n"
        "from my_summary import Half\n"
        "from hybridflow.distributions import ConditionalFlow, coupling_flow\n"
        "flow = ConditionalFlow(coupling_flow(2, 2, depth=1, hidden=4), Half(),"
        " event_shape=(2,), observation_shape=(2,))\n"
        "hf.save(flow, sys.argv[2])\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    model = tmp_path / "m.pt"
    subprocess.run([sys.executable, "-c", build, str(tmp_path), str(model)], check=True, env=env)
    x_file = tmp_path / "x.pt"
    torch.save(torch.randn(3, 2), x_file)
    argv = ["sample", "--model", str(model), "--observations", str(x_file), "--out"]
    run = [sys.executable, "-m", "hybridflow", *argv, str(tmp_path / "s.pt")]
    refused = subprocess.run(run, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "my_summary.Half" in refused.stderr
    sys_path_env = {**env, "PYTHONPATH": f"{root}:{tmp_path}"}
    loaded = subprocess.run(
        [*run, "--import", "my_summary"], env=sys_path_env, text=True, capture_output=True
    )
    assert loaded.returncode == 0, loaded.stderr
    assert torch.load(tmp_path / "s.pt", weights_only=True)["samples"].shape == (256, 3, 2)
    missing = subprocess.run(
        [*run, "--import", "no_such_module_x"], env=sys_path_env, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "--import no_such_module_x" in missing.stderr


def test_cli_samples_a_box_prior_task_by_rejection_inside_the_box(tmp_path, capsys) -> None:
    out = train_from_recipe(
        tmp_path,
        '[task]\nname = "two_moons"\n[simulations]\ncount = 128\n'
        "[flow]\ndepth = 1\nhidden = 8\n[summary]\nfeatures = 2\nhidden = 8\ndepth = 1\n"
        '[training]\nmax_epochs = 1\nbatch_size = 64\nschedule = "constant"\npatience = false\n',
    )
    recipe = check_recipe({"task": {"name": "two_moons"}})
    assert recipe["flow"]["support"] == "real"  # the default: rejection, not a Bounded layer
    saved = tmp_path / "s.pt"
    args = ["sample", "--model", str(out / "model.pt"), "--out", str(saved), "--num", "300"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeakageWarning)  # an untrained flow leaks much
        assert main([*args, "--c2st", "none"]) == 0
    printed = capsys.readouterr().out
    result = torch.load(saved, weights_only=True)
    samples, inside = result["samples"], result["inside_prior"]
    assert samples.shape == (300, 4, 2)
    assert TwoMoons().prior.support.check(samples).all()  # every stored sample in the box
    assert inside.shape == (4,) and ((inside > 0) & (inside < 1)).all()  # some were rejected
    assert "(the others rejected)" in printed
