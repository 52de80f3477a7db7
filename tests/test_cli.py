"""The ``hybridflow`` command line: each command at tiny sizes, bad input, resume."""

from __future__ import annotations

import csv
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hybridflow as hf
from hybridflow.cli import bench as memory_depth  # the benchmark's command line
from hybridflow.cli.errors import UsageError
from hybridflow.cli.main import main
from hybridflow.cli.outputs import check_output_folder
from hybridflow.cli.recipe import build_flow, build_task, check_recipe, load_recipe
from hybridflow.distributions import ConditionalFlow, FlowEnsemble
from hybridflow.sbi.training.npe_objective import NPEObjective

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"

TINY_TOML = """
[task]
name = "gaussian_linear"
dim = 3

[simulations]
count = 256
seed = 1

[flow]
kind = "coupling"
depth = 2
hidden = 16

[summary]
kind = "mlp"
features = 4
hidden = 16
depth = 1

[training]
max_epochs = 2
batch_size = 64
learning_rate = 1e-3
schedule = "constant"
patience = false
"""


def _config(tmp_path: Path, text: str = TINY_TOML, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


def _training_rows(path: Path) -> list[dict[str, str]]:
    """The history without the drift column: the drift guard measures other steps in a
    resumed run (its call counter starts afresh), which changes nothing that is trained."""
    return [{k: v for k, v in row.items() if k != "drift"} for row in _rows(path)]


# -- demo ----------------------------------------------------------------------------------


def test_demo_quick_trains_samples_measures_and_reports(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--observations", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "checkpoint.pt",
        "history.csv",
        "metrics.json",
        "model.pt",
        "posterior.png",
        "report.md",
        "samples.pt",
        "training_curve.png",
    ]
    for png in ("posterior.png", "training_curve.png"):
        assert (out / png).read_bytes()[:8] == PNG
    samples = torch.load(out / "samples.pt", weights_only=True)
    assert samples["samples"].shape == (256, 2, 1, 8, 8)
    assert samples["truth"].shape == samples["observations"].shape == (2, 1, 8, 8)
    assert torch.allclose(samples["mean"], samples["samples"].mean(0))
    flow, metadata = hf.load(out / "model.pt")
    assert isinstance(flow, ConditionalFlow) and flow.transform.mode == "invert"
    assert metadata["recipe"]["task"] == {
        "name": "digits",
        "kind": "inpaint",
        "noise_std": 0.05,
        "blur_std": 1.0,
        "keep": 0.5,
        "mask_seed": 0,
    }
    report = (out / "report.md").read_text()
    assert "![posterior](posterior.png)" in report and "![training curve]" in report
    assert report.count("| `invert` |") == 2 and report.count("| `store` |") == 2

    # one training step at the trained depth (1) and at four times it, in both modes
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["coverage_90"] <= 1.0 and metrics["rmse_posterior_mean"] > 0
    memory = {(m["flow_depth"], m["mode"]): m for m in metrics["memory"]}
    assert sorted(memory) == [(1, "invert"), (1, "store"), (4, "invert"), (4, "store")]
    # the flow's own saved tensors: store keeps every layer's, invert only output + condition
    shallow_store, deep_store = memory[1, "store"], memory[4, "store"]
    shallow_invert, deep_invert = memory[1, "invert"], memory[4, "invert"]
    assert shallow_store["flow_saved_bytes"] > 2 * shallow_invert["flow_saved_bytes"]
    assert deep_store["flow_saved_bytes"] > 3 * shallow_store["flow_saved_bytes"]
    assert deep_invert["flow_saved_bytes"] == shallow_invert["flow_saved_bytes"]
    assert deep_invert["summary_saved_bytes"] == shallow_invert["summary_saved_bytes"] > 0
    assert deep_invert["param_bytes"] > shallow_invert["param_bytes"]
    if sys.platform.startswith("linux"):
        assert all(m["peak_bytes"] > 0 and m["note"] is None for m in memory.values())
        assert "n/a" not in report.split("## Memory")[1].split("Each row")[0]

    # the summary printed at the end names the measured peaks and the files
    assert "4 steps per scale, invert mode: one training step peaks at" in printed
    assert str(out / "report.md") in printed


def test_demo_deblur_without_memory_measurement(tmp_path) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--quiet", "--kind", "deblur", "--no-memory", "--samples", "16"]
    assert main([*argv, "--observations", "1", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "DigitsInverseProblem(kind='deblur')" in report and "Not measured" in report
    assert json.loads((out / "metrics.json").read_text())["memory"] == []
    assert (out / "posterior.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--quick", "--samples", "1"], "--samples must be at least 2, got 1"),
        (["demo", "--quick", "--epochs", "0"], "max_epochs must be an int >= 1, got 0"),
        (["demo", "--quick", "--threads", "0"], "--threads must be at least 1, got 0"),
        (["demo", "--quick", "--simulations", "1"], "count must be an int >= 2, got 1"),
        (["train", "--config", "CONFIG", "--epochs", "0"], "max_epochs must be an int >= 1"),
    ],
)
def test_bad_values_are_refused_before_writing(tmp_path, capsys, argv, message) -> None:
    out = tmp_path / "never"
    argv = [str(_config(tmp_path)) if a == "CONFIG" else a for a in argv]
    assert main([*argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# -- bad flags, missing files, unwritable folders ------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["train"], "the following arguments are required: --config"),
        (["demo", "--kind", "sharpen"], "invalid choice: 'sharpen'"),
        (["sample", "--model", "m.pt", "--num", "many"], "invalid int value: 'many'"),
        (["bench"], "the following arguments are required: BENCHMARK"),
        (["train", "--config", "c.toml", "--resume", "--overwrite"], "not allowed with"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_flags_exit_2_with_argparse_message(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_optional_dependency_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    import hybridflow.cli.train as train_command

    def no_matplotlib(*args, **kwargs):
        raise ImportError("figures need matplotlib: pip install 'hybridflow[sbi]'")

    monkeypatch.setattr(train_command, "pyplot", no_matplotlib)
    argv = ["train", "--config", str(_config(tmp_path)), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        "hybridflow train: error: figures need matplotlib: pip install 'hybridflow[sbi]'\n"
    )
    assert not (tmp_path / "o").exists()  # refused before any training or writing


def test_missing_config_file(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["train", "--config", str(tmp_path / "absent.toml"), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("hybridflow train: error: config file")
    assert "absent.toml does not exist" in err
    assert not out.exists()


def test_missing_model_and_observation_files(tmp_path, capsys) -> None:
    assert main(["sample", "--model", str(tmp_path / "none.pt")]) == 2
    assert "model file" in capsys.readouterr().err
    not_a_model = tmp_path / "junk.pt"
    not_a_model.write_bytes(b"not a torch file")
    assert main(["sample", "--model", str(not_a_model), "--out", str(tmp_path / "s.pt")]) == 2
    assert f"{not_a_model} is not a model file" in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["demo", "--quick"],
        ["train", "--config", "CONFIG"],
        ["bench", "memory", "--sizes", "8", "--depths", "1"],
        ["sample", "--model", "MODEL"],
    ],
)
def test_unwritable_output_folder(tmp_path, capsys, command) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    config = _config(tmp_path)
    argv = [str(config) if a == "CONFIG" else a for a in command]
    if command[0] == "sample":
        argv = [*argv, "--out", str(blocker / "sub" / "samples.pt")]
    else:
        argv = [*argv, "--out", str(blocker / "sub")]
    if command[0] == "sample":  # a real model, so that the output folder is what fails
        recipe = check_recipe({"task": {"name": "two_moons"}, "flow": {"depth": 1, "hidden": 4}})
        hf.save(build_flow(recipe, build_task(recipe)), tmp_path / "model.pt", {"recipe": recipe})
    argv = [str(tmp_path / "model.pt") if a == "MODEL" else a for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{blocker} is a file" in err
    assert blocker.read_text() == "in the way"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_check_output_folder_creates_and_refuses() -> None:
    with pytest.raises(UsageError, match="is a file"):
        check_output_folder(Path(__file__) / "sub")


# -- recipes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({}, r"\[task\] name is required"),
        ({"task": {"name": "three_moons"}}, "name must be one of digits, gaussian_linear"),
        ({"task": {"name": "two_moons"}, "optimiser": {}}, "unknown section"),
        ({"task": {"name": "two_moons"}, "flow": {"deph": 3}}, r"\[flow\] has unknown key"),
        ({"task": {"name": "two_moons"}, "flow": {"kind": "glow"}}, "needs image parameters"),
        ({"task": {"name": "digits"}, "summary": {"kind": "lstm"}}, "kind must be one of"),
        ({"task": {"name": "two_moons"}, "summary": {"kind": "cnn"}}, "needs image obs"),
        ({"task": {"name": "two_moons"}, "simulations": {"count": 1}}, "count must be an int"),
        ({"task": {"name": "two_moons"}, "flow": {"hidden": 0}}, r"\[flow\] hidden must be an"),
        ({"task": {"name": "digits"}, "summary": {"features": 2.5}}, "features must be an int"),
        ({"task": {"name": "two_moons"}, "training": {"batch_size": 0}}, "batch_size must be"),
        ({"task": {"name": "two_moons"}, "training": {"epochs": 3}}, "known: batch_size"),
    ],
)
def test_bad_recipes_are_named(recipe, message) -> None:
    with pytest.raises(UsageError, match=message):
        check_recipe(recipe, "my.toml")


def test_recipe_errors_from_building_name_the_section() -> None:
    recipe = check_recipe({"task": {"name": "digits"}, "flow": {"levels": 4}})
    with pytest.raises(UsageError, match=r"\[flow\] levels = 4: .* divisible by 2\*\*levels = 16"):
        build_flow(recipe, build_task(recipe))
    bad_task = check_recipe({"task": {"name": "digits", "kind": "sharpen"}})
    with pytest.raises(UsageError, match=r"\[task\] DigitsInverseProblem: kind must be"):
        build_task(bad_task)
    bad_clamp = check_recipe({"task": {"name": "digits"}, "flow": {"squeeze": "wavelet"}})
    with pytest.raises(UsageError, match=r"\[flow\]/\[summary\] Glow: squeeze must be one of"):
        build_flow(bad_clamp, build_task(bad_clamp))


def test_vector_recipes_take_their_coupling_and_summary_width_from_the_task_sizes() -> None:
    def sized(task: dict, **sections) -> tuple[str, int]:
        recipe = check_recipe({"task": task, **sections})
        return recipe["flow"]["coupling"], recipe["summary"]["hidden"]

    assert sized({"name": "two_moons"}) == ("spline", 64)
    assert sized({"name": "gaussian_linear"}) == ("affine", 64)  # 10 parameters
    assert sized({"name": "gaussian_linear", "dim": 3}) == ("spline", 64)
    assert sized({"name": "gaussian_linear", "dim": 100}) == ("affine", 128)
    given = {"flow": {"coupling": "spline"}, "summary": {"hidden": 16}}
    assert sized({"name": "gaussian_linear"}, **given) == ("spline", 16)  # the recipe wins
    recipe = check_recipe({"task": {"name": "gaussian_linear"}})
    flow = build_flow(recipe, build_task(recipe))
    assert any(type(m).__name__ == "AffineCoupling" for m in flow.modules())
    with pytest.raises(UsageError, match=r"\[task\] .*dim"):
        check_recipe({"task": {"name": "gaussian_linear", "dim": 0}})


def test_mlp_summary_dropout_follows_the_observation_size() -> None:
    def dropouts(recipe: dict) -> tuple[float, int]:
        checked = check_recipe(recipe)
        flow = build_flow(checked, build_task(checked))
        member = flow.members[0] if isinstance(flow, FlowEnsemble) else flow
        layers = [m for m in member.modules() if isinstance(m, torch.nn.Dropout)]
        return checked["summary"]["dropout"], sum(
            m.p == checked["summary"]["dropout"] for m in layers
        )

    assert dropouts({"task": {"name": "slcp"}}) == (0.0, 0)  # 8 entries: no Dropout layer
    assert dropouts({"task": {"name": "gaussian_linear", "dim": 64}}) == (0.0, 0)
    assert dropouts({"task": {"name": "gaussian_linear", "dim": 65}}) == (0.1, 2)
    given = {"task": {"name": "gaussian_linear", "dim": 65}, "summary": {"dropout": 0.0}}
    assert dropouts(given) == (0.0, 0)  # the recipe wins
    with pytest.raises(UsageError, match=r"\[flow\]/\[summary\] .*dropout"):
        dropouts({"task": {"name": "slcp"}, "summary": {"dropout": 1.5}})


def test_invalid_toml_is_reported(tmp_path, capsys) -> None:
    config = _config(tmp_path, "[task\nname = ", "broken.toml")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    with pytest.raises(UsageError, match=r"expected a \.toml"):
        load_recipe(_config(tmp_path, "x", "recipe.json"))


def test_yaml_recipe_matches_toml(tmp_path) -> None:
    pytest.importorskip("yaml", reason="YAML configs need PyYAML (installed by the docs extra)")
    yaml_text = "task:\n  name: gaussian_linear\n  dim: 3\ntraining:\n  patience: false\n"
    toml_text = '[task]\nname = "gaussian_linear"\ndim = 3\n[training]\npatience = false\n'
    from_yaml = load_recipe(_config(tmp_path, yaml_text, "r.yaml"))
    assert from_yaml == load_recipe(_config(tmp_path, toml_text, "r.toml"))
    assert from_yaml["training"]["patience"] is None


# -- train, resume, sample -----------------------------------------------------------------


def test_train_writes_model_and_resume_equals_an_uninterrupted_run(tmp_path, capsys) -> None:
    config = _config(tmp_path)
    straight, split = tmp_path / "straight", tmp_path / "split"
    # (issue 15: --quiet prints nothing, so this run is not quiet)
    assert main(["train", "--config", str(config), "--out", str(straight)]) == 0
    printed = capsys.readouterr().out
    assert "trained 2 epoch(s)" in printed and str(straight / "model.pt") in printed
    for name in ("model.pt", "checkpoint.pt", "history.csv", "training_curve.png"):
        assert (straight / name).is_file()
    assert (straight / "training_curve.png").read_bytes()[:8] == PNG

    # interrupted (Ctrl-C) during the second epoch, then resumed: the same losses and weights
    original = NPEObjective.train_unit  # one epoch
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    argv = ["train", "--config", str(config), "--out", str(split), "--quiet"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(NPEObjective, "train_unit", interrupted)
        assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in split.iterdir()) == ["checkpoint.pt"]  # whole files only
    assert main(argv) == 2  # a checkpoint exists: refuse to clobber it
    assert "pass --resume to continue" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert _training_rows(split / "history.csv") == _training_rows(straight / "history.csv")
    first, _ = hf.load(straight / "model.pt")
    second, _ = hf.load(split / "model.pt")
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # resuming a finished run trains nothing more and says so
    assert main([*argv, "--resume"]) == 0
    assert _training_rows(split / "history.csv") == _training_rows(straight / "history.csv")


def test_resume_refuses_changed_settings_and_keeps_the_checkpoint(tmp_path, capsys) -> None:
    config = _config(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "--config", str(config), "--out", str(out), "--quiet"]
    assert main([*argv, "--epochs", "1"]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    changed = _config(tmp_path, TINY_TOML.replace("learning_rate = 1e-3", "learning_rate = 0.1"))
    code = main(["train", "--config", str(changed), "--out", str(out), "--quiet", "--resume"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot resume" in err
    assert "learning_rate: 0.001 -> 0.1" in err
    assert (out / "checkpoint.pt").read_bytes() == before
    # --overwrite starts afresh
    assert main([*argv, "--overwrite"]) == 0
    assert len(_rows(out / "history.csv")) == 2


def test_sample_from_held_out_and_from_a_tensor_file(tmp_path, capsys) -> None:
    config = _config(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    model = str(out / "model.pt")
    target = tmp_path / "samples" / "held.pt"
    png = tmp_path / "samples" / "held.png"
    argv = ["sample", "--model", model, "--held-out", "0", "3", "--num", "50"]
    assert main([*argv, "--out", str(target), "--png", str(png)]) == 0
    drawn = torch.load(target, weights_only=True)
    assert drawn["samples"].shape == (50, 2, 3) and drawn["truth"].shape == (2, 3)
    assert png.read_bytes()[:8] == PNG
    # the same seed gives the same samples; observations from a file give the same as held-out
    x_file = tmp_path / "x.pt"
    torch.save(drawn["observations"], x_file)
    again = tmp_path / "again.pt"
    assert main(["sample", "--model", model, "--observations", str(x_file), "--num", "50",
                 "--out", str(again)]) == 0  # fmt: skip
    assert torch.equal(torch.load(again, weights_only=True)["samples"], drawn["samples"])
    # one unbatched observation
    torch.save({"x": drawn["observations"][0]}, x_file)
    assert main(["sample", "--model", model, "--observations", str(x_file), "--num", "5",
                 "--out", str(again)]) == 0  # fmt: skip
    assert torch.load(again, weights_only=True)["samples"].shape == (5, 1, 3)
    # observations of the wrong shape: both shapes named, nothing written
    torch.save(torch.zeros(2, 4), x_file)
    wrong = tmp_path / "wrong.pt"
    assert main(["sample", "--model", model, "--observations", str(x_file),
                 "--out", str(wrong)]) == 2  # fmt: skip
    assert "observation_shape (3,)" in capsys.readouterr().err
    assert not wrong.exists()


def test_sample_needs_observations_for_a_model_without_recipe(tmp_path, capsys) -> None:
    recipe = check_recipe({"task": {"name": "two_moons"}, "flow": {"depth": 1, "hidden": 8}})
    flow = build_flow(recipe, build_task(recipe))
    hf.save(flow, tmp_path / "plain.pt")
    assert main(["sample", "--model", str(tmp_path / "plain.pt"), "--out",
                 str(tmp_path / "s.pt")]) == 2  # fmt: skip
    assert "pass --observations FILE" in capsys.readouterr().err


# -- bench memory and the entry points -------------------------------------------------------


def test_bench_memory_writes_csv_and_png(tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    argv = ["bench", "memory", "--sizes", "8", "16", "--depths", "1", "3", "--modes", "store",
            "invert", "--batch", "2", "--hidden", "4", "--measure", "memory", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = _rows(out / "memory_depth.csv")
    assert {(r["mode"], r["depth"], r["size"]) for r in rows} == {
        (m, d, s) for m in ("store", "invert") for d in ("1", "3") for s in ("8", "16")
    }
    assert all(float(r["peak_mib"]) > 0 for r in rows)
    assert (out / "memory_depth.png").read_bytes()[:8] == PNG
    assert "invert, 16x16: peak less parameter gradients at depth 3" in capsys.readouterr().out


def test_bench_memory_refuses_bad_sizes(tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    assert main(["bench", "memory", "--sizes", "7", "--out", str(out)]) == 2
    assert "--sizes must be even" in capsys.readouterr().err
    assert not out.exists()


def test_benchmark_script_is_a_thin_wrapper(capsys) -> None:
    script = runpy.run_path(str(ROOT / "benchmarks" / "memory_depth.py"), run_name="wrapper")
    assert script["main"] is memory_depth.main
    with pytest.raises(SystemExit) as exit_info:
        script["main"](["--depths", "0"])
    assert exit_info.value.code == 2
    assert "--depths must be positive" in capsys.readouterr().err


def test_benchmark_common_module_keeps_its_names_over_the_package(tmp_path) -> None:
    common = runpy.run_path(str(ROOT / "benchmarks" / "common.py"), run_name="common")
    from hybridflow import bench

    assert common["GlowLike"] is bench.GlowLike and common["measure_peak"] is bench.measure_peak
    config = {"mode": "invert", "depth": 1, "size": 8, "batch": 2, "hidden": 4,
              "timing_steps": 1, "threads": 1, "measure": "memory"}  # fmt: skip
    result = common["run_child"](
        ROOT / "benchmarks" / "memory_depth.py", config, common["MEMORY_ENV"], timeout=300
    )
    assert result["mode"] == "invert" and result["peak_bytes"] > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_image_posterior_figure_without_truth_or_mask(tmp_path, channels) -> None:
    from hybridflow.cli.figures import image_posterior

    samples = torch.rand(5, 2, channels, 8, 8)
    path = image_posterior(samples[0], samples, tmp_path / "figure.png", shown_samples=2)
    assert path.read_bytes()[:8] == PNG


def test_atomic_outputs_get_ordinary_permissions_and_leave_no_temporary_files(tmp_path) -> None:
    import os

    from hybridflow.io import write_text

    umask = os.umask(0o022)
    os.umask(umask)
    path = write_text(tmp_path / "report.md", "# done\n")
    assert path.read_text() == "# done\n"
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_python_dash_m_hybridflow_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hybridflow", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--resume" in result.stdout and "--config" in result.stdout
