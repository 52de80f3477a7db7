"""Bad files and bad command lines: one typed error that names the file, and nothing changed.

Each table row builds one broken model file, checkpoint, resume or command line. Every row
checks the error's type, that its message is one line naming the file (or the argument),
and that files, parameters and output folders are as they were before.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import hybridflow as hf
from hybridflow.cli.main import main
from hybridflow.errors import ArgumentTypeError, CheckpointMismatch, FileFormatError, InputError
from hybridflow.io import digest
from hybridflow.layers import ActNorm, AffineCoupling
from hybridflow.sbi import (
    GaussianLinear,
    NPEConfig,
    NPETrainer,
    ReverseKLConfig,
    ReverseKLTrainer,
    load_checkpoint,
    save_checkpoint,
    simulate,
)
from hybridflow.sbi.training.state import restore_run, rng_state

ROOT = Path(__file__).resolve().parents[1]


class _Crafted:
    """Unpickling this would call ``print``: a stand-in for a pickle that runs code."""

    def __reduce__(self):
        return (print, ("a crafted pickle ran code",))


# -- byte-level damage -------------------------------------------------------------------------


def _tensor_data_offset(path: Path) -> int:
    """Offset in the file of the first byte of the largest stored tensor (torch stores
    tensors uncompressed, one zip entry each under ``data/``)."""
    with zipfile.ZipFile(path) as archive:
        info = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    raw = path.read_bytes()
    name_length = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_length = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    return info.header_offset + 30 + name_length + extra_length


def _flip_bit(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[_tensor_data_offset(path) + 5] ^= 0x10
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _crafted(path: Path) -> None:
    torch.save({"format": "hybridflow", "payload": _Crafted()}, path)


# -- model files -------------------------------------------------------------------------------


def _good_model() -> hf.Chain:
    torch.manual_seed(0)
    return hf.Chain(ActNorm(2), AffineCoupling(2, hidden=4))


def _signed(payload: dict) -> dict:
    """The payload with its checksum recomputed: what a file written that way would hold."""
    body = {k: v for k, v in payload.items() if k != "checksum"}
    return {**body, "checksum": digest(body)}


def _payload(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _edit(change: Callable[[dict], object], sign: bool = True) -> Callable[[Path], None]:
    """Rewrite a good model file with ``change`` applied to its payload (a returned value
    replaces the payload), re-signed unless ``sign`` is false."""

    def rewrite(path: Path) -> None:
        payload = _payload(path)
        result = change(payload)
        payload = payload if result is None else result
        if sign and isinstance(payload, dict):
            payload = _signed(payload)
        torch.save(payload, path)

    return rewrite


def _config_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit_config(payload: dict) -> None:
        config = json.loads(payload["config"])
        change(config)
        payload["config"] = json.dumps(config)

    return _edit(edit_config)


def _set_hidden(value: int) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        config["arguments"]["modules"][1]["arguments"]["hidden"] = value

    return change


def _replace(key: str, value: object) -> Callable[[dict], None]:
    def change(payload: dict) -> None:
        payload[key] = value

    return change


def _first_weight_as_list(payload: dict) -> None:
    name = next(k for k, v in payload["state_dict"].items() if v.dim() == 2)
    payload["state_dict"][name] = payload["state_dict"][name].tolist()


def _bool_buffer_as_float(payload: dict) -> None:
    payload["state_dict"]["layers.0.initialized"] = torch.tensor(1.0)


def _without(key: str) -> Callable[[dict], None]:
    def change(payload: dict) -> None:
        del payload[key]

    return change


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


MODEL_CASES = [
    pytest.param(_empty, "is empty", id="empty-file"),
    pytest.param(_truncate, "is truncated", id="truncated-file"),
    pytest.param(lambda p: p.write_text("weights: 1 2 3"), "not an archive", id="text-file"),
    pytest.param(_folder, "is not a file", id="a-folder"),
    pytest.param(_crafted, "is refused: it holds something other than", id="crafted-pickle"),
    pytest.param(lambda p: torch.save(torch.zeros(3), p), "it holds 'Tensor'", id="a-tensor"),
    pytest.param(_edit(_replace("format", "zuko")), "not a hybridflow model", id="other-format"),
    pytest.param(_edit(_replace("version", 0)), "invalid format version 0", id="version-0"),
    pytest.param(_edit(_replace("version", -2)), "invalid format version -2", id="version-neg"),
    pytest.param(
        _edit(_replace("version", True)), "invalid format version True", id="version-bool"
    ),
    pytest.param(_edit(_replace("version", "2")), "invalid format version '2'", id="version-str"),
    pytest.param(_edit(_replace("version", 99)), "version 99; .* upgrade", id="version-future"),
    pytest.param(_edit(_without("config")), r"missing \['config'\]", id="no-config"),
    pytest.param(_edit(_replace("extra", 1)), r"unexpected \['extra'\]", id="extra-entry"),
    pytest.param(_edit(_replace("config", "{not json")), "config is not valid JSON", id="bad-json"),
    pytest.param(_edit(_replace("config", "[1, 2]")), "config is a JSON list", id="config-list"),
    pytest.param(
        _edit(_replace("config", "[" * 100_000 + "]" * 100_000)),
        "config is not valid JSON",
        id="config-nested-too-deep",
    ),
    pytest.param(
        _edit(_replace("config", {"a": 1})), "config is a dict, not a JSON", id="cfg-dict"
    ),
    pytest.param(_edit(_replace("metadata", "{")), "metadata is not valid JSON", id="bad-metadata"),
    pytest.param(_edit(_replace("state_dict", [])), "state_dict is a list, not a", id="sd-list"),
    pytest.param(_edit(_first_weight_as_list), r"entry '.*weight' is a list", id="tensor-list"),
    pytest.param(_flip_bit, "checksum mismatch", id="flipped-bit"),
    pytest.param(
        _edit(_replace("metadata", '{"epoch": 4}'), sign=False), "checksum mismatch", id="edited"
    ),
    pytest.param(_edit(_without("checksum"), sign=False), r"missing \['checksum'\]", id="no-sum"),
    pytest.param(_edit(_replace("checksum", "abc"), sign=False), "not a SHA-256", id="bad-sum"),
    pytest.param(
        _config_edit(lambda c: c.update({"class": "os.system"})),
        "unknown module class 'os.system'",
        id="unknown-class",
    ),
    pytest.param(
        _config_edit(lambda c: c["arguments"].update({"evil": 1})),
        r"unknown arguments \['evil'\]",
        id="unknown-argument",
    ),
    pytest.param(
        _edit(_replace("config", '{"class": "hybridflow.layers.actnorm.ActNorm"}')),
        r"not a module config \(expected keys 'class' and 'arguments'\)",
        id="not-a-config",
    ),
    pytest.param(
        _config_edit(lambda c: c["arguments"].update({"modules": [{"class": 3}]})),
        "does not build a model.*item 0 is a dict",
        id="plain-dict-as-module",
    ),
    pytest.param(
        _config_edit(_set_hidden(10**8)),  # 40 PB of weights if it were built
        "weights do not fit its config: .*shape mismatches",
        id="huge-layer",
    ),
    pytest.param(
        _config_edit(_set_hidden(10**11)),  # more elements than torch can count
        "does not build a model .*meta device.*overflow",
        id="overflowing-layer",
    ),
    pytest.param(_config_edit(_set_hidden(-3)), "config does not build a model", id="bad-size"),
    pytest.param(_edit(_bool_buffer_as_float), "dtype mismatches", id="dtype-kind"),
]


@pytest.mark.parametrize(("damage", "message"), MODEL_CASES)
def test_bad_model_file(tmp_path: Path, damage, message: str) -> None:
    path = tmp_path / "model.pt"
    hf.save(_good_model(), path)
    damage(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(FileFormatError) as info:
        hf.load(path)
    text = str(info.value)
    assert re.search(message, text), text
    assert text.startswith(str(path)) and info.value.path == str(path)
    assert "\n" not in text and "weights_only" not in text
    assert (path.read_bytes() if path.is_file() else None) == before


def test_crafted_pickle_never_runs(tmp_path: Path, capsys) -> None:
    path = tmp_path / "model.pt"
    _crafted(path)
    with pytest.raises(FileFormatError) as info:
        hf.load(path)
    assert "crafted pickle ran" not in capsys.readouterr().out
    assert type(info.value.__cause__).__name__ == "UnpicklingError"  # torch refused it first


def test_version_1_files_without_checksum_still_load(tmp_path: Path) -> None:
    model = _good_model()
    path = tmp_path / "old.pt"
    hf.save(model, path)
    payload = _payload(path)
    del payload["checksum"]
    torch.save({**payload, "version": 1}, path)
    loaded, _ = hf.load(path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_double_model_loads_as_double(tmp_path: Path) -> None:
    model = _good_model().double()
    hf.save(model, tmp_path / "m.pt")
    loaded, _ = hf.load(tmp_path / "m.pt")
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_unsaveable_metadata_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ArgumentTypeError, match="metadata must be JSON data"):
        hf.save(_good_model(), tmp_path / "m.pt", metadata={"when": object()})
    assert not list(tmp_path.iterdir())


# -- checkpoints -------------------------------------------------------------------------------


def _envelope_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return _edit(change)


CHECKPOINT_CASES = [
    pytest.param(_empty, "is empty", id="ckpt-empty"),
    pytest.param(_truncate, "is truncated", id="ckpt-truncated"),
    pytest.param(_flip_bit, "checksum mismatch", id="ckpt-flipped-bit"),
    pytest.param(_crafted, "is refused", id="ckpt-crafted-pickle"),
    pytest.param(
        lambda p: torch.save({"format": "hybridflow.sbi.npe/1", "model": {}}, p),
        "without checksum .* start the run afresh",
        id="ckpt-legacy",
    ),
    pytest.param(_envelope_edit(_replace("version", 2)), "checkpoint version 2", id="ckpt-v2"),
    pytest.param(_envelope_edit(_replace("state", [1])), "its state is a list", id="ckpt-state"),
]


@pytest.mark.parametrize(("damage", "message"), CHECKPOINT_CASES)
def test_bad_checkpoint(tmp_path: Path, damage, message: str) -> None:
    path = tmp_path / "run.pt"
    save_checkpoint({"step": 3, "weights": torch.arange(64.0)}, path)
    damage(path)
    before = path.read_bytes()
    with pytest.raises(FileFormatError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert re.search(message, text), text
    assert text.startswith(str(path)) and "\n" not in text
    assert path.read_bytes() == before


def test_unsaveable_checkpoint_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ArgumentTypeError, match=r"checkpoint\['state'\]\['config'\] is a"):
        save_checkpoint({"config": NPEConfig()}, tmp_path / "run.pt")
    assert not list(tmp_path.iterdir())


# -- resuming ---------------------------------------------------------------------------------


def _npe_flow(hidden: int = 8) -> hf.ConditionalFlow:
    torch.manual_seed(0)
    return hf.ConditionalFlow(
        hf.distributions.coupling_flow(2, 2, depth=2, hidden=hidden),
        event_shape=(2,),
        observation_shape=(2,),
    )


def _npe_config(**changes) -> NPEConfig:
    return NPEConfig(**{"max_epochs": 2, "batch_size": 32, "progress": False, **changes})


@pytest.fixture(scope="module")
def npe_run(tmp_path_factory) -> tuple[Path, object]:
    """A finished two-epoch NPE run: its checkpoint and its data."""
    data = simulate(GaussianLinear(2), 96, seed=1)
    path = tmp_path_factory.mktemp("npe") / "run.pt"
    NPETrainer(_npe_flow(), _npe_config(max_epochs=3), checkpoint=path).fit(data.theta, data.x)
    return path, data


def _frozen_flow() -> hf.ConditionalFlow:
    flow = _npe_flow()
    next(flow.parameters()).requires_grad_(False)
    return flow


def _rewrite_state(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def rewrite(path: Path) -> None:
        state = load_checkpoint(path)
        change(state)
        save_checkpoint(state, path)

    return rewrite


# (what to do to the checkpoint, the flow, the config, the data slice, error, message)
RESUME_CASES = [
    pytest.param(
        None,
        lambda: _npe_flow(hidden=6),
        {},
        CheckpointMismatch,
        "shape mismatches",
        id="resume-other-architecture",
    ),
    pytest.param(
        None,
        _frozen_flow,
        {},
        CheckpointMismatch,
        "optimizer state is for",
        id="resume-other-trainable-parameters",
    ),
    pytest.param(
        None,
        _npe_flow,
        {"learning_rate": 0.1},
        CheckpointMismatch,
        "other settings",
        id="resume-other-settings",
    ),
    pytest.param(
        None,
        _npe_flow,
        {"data": slice(1, None)},
        CheckpointMismatch,
        "another data",
        id="resume-other-data",
    ),
    pytest.param(
        _flip_bit, _npe_flow, {}, FileFormatError, "checksum mismatch", id="resume-flipped-bit"
    ),
    pytest.param(_truncate, _npe_flow, {}, FileFormatError, "is truncated", id="resume-truncated"),
    pytest.param(
        _rewrite_state(lambda s: s.update(format="hybridflow.sbi.reverse_kl/1")),
        _npe_flow,
        {},
        CheckpointMismatch,
        "not an NPE checkpoint",
        id="resume-other-trainer",
    ),
    pytest.param(
        _rewrite_state(lambda s: s.pop("optimizer")),
        _npe_flow,
        {},
        FileFormatError,
        r"without \['optimizer'\]",
        id="resume-missing-entry",
    ),
    pytest.param(
        _rewrite_state(lambda s: s["history"].pop("train_loss")),
        _npe_flow,
        {},
        FileFormatError,
        "its history has fields",
        id="resume-bad-history",
    ),
]


@pytest.mark.parametrize(("damage", "make_flow", "changes", "error", "message"), RESUME_CASES)
def test_refused_resume_changes_nothing(
    tmp_path: Path, npe_run, damage, make_flow, changes, error, message
) -> None:
    source, data = npe_run
    path = tmp_path / "run.pt"
    path.write_bytes(source.read_bytes())
    if damage is not None:
        damage(path)
    before_file = path.read_bytes()
    flow = make_flow()
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    changes = dict(changes)
    rows = changes.pop("data", slice(None))
    trainer = NPETrainer(flow, _npe_config(max_epochs=3, **changes), checkpoint=path)
    with pytest.raises(error) as info:
        trainer.fit(data.theta[rows], data.x[rows], resume=True)
    text = str(info.value)
    assert type(info.value) is error and re.search(message, text), text
    assert str(path) in text and "\n" not in text
    assert all(torch.equal(v, before[k]) for k, v in flow.state_dict().items())
    assert path.read_bytes() == before_file


def test_reverse_kl_resume_with_other_architecture_changes_nothing(tmp_path: Path) -> None:
    task = GaussianLinear(2)
    config = ReverseKLConfig(steps=2, batch_size=8, num_samples=2, progress=False)
    path = tmp_path / "rkl.pt"
    ReverseKLTrainer(_npe_flow(), task, config, checkpoint=path).fit()
    before_file = path.read_bytes()
    flow = _npe_flow(hidden=6)
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    with pytest.raises(CheckpointMismatch, match=f"{re.escape(str(path))}: checkpoint does not"):
        ReverseKLTrainer(flow, task, config, checkpoint=path).fit(resume=True)
    assert all(torch.equal(v, before[k]) for k, v in flow.state_dict().items())
    assert path.read_bytes() == before_file


def _stepped(flow: torch.nn.Module) -> torch.optim.Optimizer:
    """An AdamW optimiser of ``flow`` after one step (so it has state)."""
    optimizer = torch.optim.AdamW(flow.parameters(), lr=1e-3)
    flow(torch.randn(4, 2)).log_prob(torch.randn(4, 2)).mean().neg().backward()
    optimizer.step()
    return optimizer


def _optimizer_state_of_shape(state: dict) -> None:
    entry = next(iter(state["optimizer"]["state"].values()))
    entry["exp_avg"] = torch.zeros(7, 7)


# (change to the run's state, error, message); the flow and optimiser must stay as they were
RESTORE_CASES = [
    pytest.param(
        lambda s: s.update(model=_npe_flow(hidden=6).state_dict()),
        CheckpointMismatch,
        "checkpoint does not fit ConditionalFlow: shape mismatches",
        id="restore-arch",
    ),
    pytest.param(
        _optimizer_state_of_shape,
        CheckpointMismatch,
        "optimizer state 'exp_avg' of",
        id="restore-optimizer-shapes",
    ),
    pytest.param(
        lambda s: s["optimizer"].update(param_groups=[]),
        CheckpointMismatch,
        r"optimizer state is for \[\] trainable",
        id="restore-optimizer-groups",
    ),
    pytest.param(
        lambda s: s["rng"].update(torch=torch.zeros(3)),
        FileFormatError,
        "random state 'torch'",
        id="restore-rng",
    ),
]


@pytest.mark.parametrize(("change", "error", "message"), RESTORE_CASES)
def test_refused_restore_changes_neither_flow_nor_optimizer(
    tmp_path: Path, change, error, message
) -> None:
    source = _npe_flow()
    generator = torch.Generator().manual_seed(1)
    state = {
        "model": {k: v.clone() for k, v in source.state_dict().items()},
        "optimizer": _stepped(source).state_dict(),
        "scheduler": None,
        "rng": rng_state(generator, torch.device("cpu")),
    }
    change(state)
    torch.manual_seed(5)  # other weights and another optimiser state than the checkpoint's
    flow = hf.ConditionalFlow(
        hf.distributions.coupling_flow(2, 2, depth=2, hidden=8),
        event_shape=(2,),
        observation_shape=(2,),
    )
    optimizer = _stepped(flow)
    weights = {k: v.clone() for k, v in flow.state_dict().items()}
    moments = {i: {k: v.clone() for k, v in e.items()} for i, e in optimizer.state.items()}
    path = tmp_path / "run.pt"
    with pytest.raises(error, match=message) as info:
        restore_run(state, path, flow, optimizer, None, generator, torch.device("cpu"))
    assert str(path) in str(info.value)
    assert all(torch.equal(v, weights[k]) for k, v in flow.state_dict().items())
    for index, entry in optimizer.state.items():
        assert all(torch.equal(v, moments[index][k]) for k, v in entry.items())


STATE_DICT_CASES = [
    pytest.param(
        lambda s: s.pop("layers.0.log_scale"),
        r"missing keys \['layers.0.log_scale'\]",
        id="sd-missing-key",
    ),
    pytest.param(
        lambda s: s.update({"layers.0.log_scale": [0.0, 0.0]}),
        r"not tensors \['layers.0.log_scale'\]",
        id="sd-not-a-tensor",
    ),
    pytest.param(
        lambda s: s.update({"layers.0.initialized": torch.tensor(7)}),
        "dtype mismatches: layers.0.initialized",
        id="sd-int-for-bool",
    ),
    pytest.param(
        lambda s: s.update({f"extra.{i}": torch.zeros(1) for i in range(8)}),
        r"unexpected keys \[.*, \.\.\. 3 more\]",
        id="sd-many-unexpected",
    ),
]


@pytest.mark.parametrize(("change", "message"), STATE_DICT_CASES)
def test_checked_load_state_dict_changes_nothing(change, message: str) -> None:
    model = _good_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    change(state)
    with pytest.raises(CheckpointMismatch, match=message) as info:
        hf.load_state_dict(model, state, source="weights.pt")
    assert str(info.value).startswith("weights.pt: ") and info.value.path == "weights.pt"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -- temporary files of killed writes ----------------------------------------------------------


def test_temporary_file_of_a_killed_write_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "run.pt"
    script = (
        "import os, signal, sys\n"
        "from hybridflow.io import atomic_write\n"
        "def die(file):\n"
        "    file.write(b'half of a checkpoint')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write(sys.argv[1], die)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(target)], cwd=ROOT, timeout=120, check=False
    )
    assert result.returncode == -signal.SIGKILL
    (stale,) = tmp_path.iterdir()
    assert re.fullmatch(r"\.run\.pt\.[0-9a-f]{16}\.tmp", stale.name)
    old = os.stat(stale).st_mtime_ns - 10**9
    others = [tmp_path / ".other.pt.0123456789abcdef.tmp", tmp_path / ".run.pt.mine.tmp"]
    for other in others:  # not temporary files of run.pt: kept
        other.write_text("keep")
        os.utime(other, ns=(old, old))
    save_checkpoint({"step": 1}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["run.pt", *(p.name for p in others)]
    )
    assert load_checkpoint(target) == {"step": 1}


# -- the command line --------------------------------------------------------------------------

RECIPE = """
[task]
name = "gaussian_linear"
dim = 2

[simulations]
count = 64
seed = 1

[flow]
kind = "coupling"
depth = 1
hidden = 8

[summary]
kind = "mlp"
features = 2
hidden = 8
depth = 1

[training]
max_epochs = 1
batch_size = 32
schedule = "constant"
patience = false
"""


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """A folder with a recipe and a one-epoch ``hybridflow train`` run of it (``run/``)."""
    folder = tmp_path_factory.mktemp("cli")
    (folder / "tiny.toml").write_text(RECIPE)
    argv = ["train", "--config", str(folder / "tiny.toml"), "--out", str(folder / "run")]
    assert main([*argv, "--quiet"]) == 0
    return folder


def _copy_run(source: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    for name in ("checkpoint.pt", "model.pt"):
        (tmp_path / "run" / name).write_bytes((source / "run" / name).read_bytes())
    (tmp_path / "tiny.toml").write_text(RECIPE)


def _recipe(tmp_path: Path, *changes: tuple[str, str]) -> None:
    text = RECIPE
    for old, new in changes:
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "tiny.toml").write_text(text)


TOO_FEW = (("count = 64", "count = 4"), ("[training]\n", "[training]\nvalidation_fraction = 0.9\n"))


def _observations(tmp_path: Path, value: object) -> None:
    torch.save(value, tmp_path / "x.pt")


TRAIN = ["train", "--config", "{tmp}/tiny.toml", "--quiet"]
RESUME = [*TRAIN, "--out", "{tmp}/run", "--resume"]
SAMPLE = ["sample", "--model", "{tmp}/run/model.pt", "--out", "{tmp}/new/samples.pt"]
OBSERVED = [*SAMPLE, "--observations", "{tmp}/x.pt"]

# A spoiled file: how it is spoiled and what the command must say of it.
SPOILS = {
    "crafted": (_crafted, "is refused"),
    "truncated": (_truncate, "is truncated"),
    "flipped-bit": (_flip_bit, "checksum mismatch"),
    "empty": (_empty, "is empty"),
}
# (case, argv, what the message says first, the file the command reads, the spoils tried on it)
SPOILED_FILES = [
    ("cli-resume", RESUME, "cannot resume: .*", "run/checkpoint.pt", ("flipped-bit", "empty")),
    ("cli-sample-model", SAMPLE, "", "run/model.pt", ("crafted", "truncated", "flipped-bit")),
    ("cli-sample-observations", OBSERVED, "", "x.pt", ("crafted", "empty")),
]

# (prepare the folder, argv, what the message must say, the file it must name)
CLI_CASES = [
    pytest.param(
        lambda t: _recipe(t, *TOO_FEW),
        [*TRAIN, "--out", "{tmp}/new"],
        "4 simulation.* leave none for training with validation_fraction=0.9",
        None,
        id="cli-too-few-sims",
    ),
    pytest.param(
        lambda t: _recipe(t, ("hidden = 8\n\n[summary]", "hidden = 12\n\n[summary]")),
        RESUME,
        "cannot resume: .*shape mismatches",
        "run/checkpoint.pt",
        id="cli-resume-edited-flow",
    ),
    pytest.param(
        lambda t: None,
        ["sample", "--model", "{tmp}/run/checkpoint.pt", "--out", "{tmp}/new/s.pt"],
        "not a hybridflow model file",
        "run/checkpoint.pt",
        id="cli-sample-checkpoint-as-model",
    ),
    pytest.param(
        lambda t: _observations(t, torch.zeros(3, 5)),
        OBSERVED,
        r"shape \(3, 5\) .* observation_shape",
        None,
        id="cli-sample-wrong-observation-shape",
    ),
    *(
        pytest.param(
            lambda t, spoil=SPOILS[kind][0], name=name: spoil(t / name),
            argv,
            prefix + SPOILS[kind][1],
            name,
            id=f"{case}-{kind}",
        )
        for case, argv, prefix, name, kinds in SPOILED_FILES
        for kind in kinds
    ),
]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("prepare", "argv", "message", "names"), CLI_CASES)
def test_bad_command_line_is_one_line_and_changes_nothing(
    tmp_path: Path, cli_run: Path, capsys, prepare, argv, message: str, names: str
) -> None:
    _copy_run(cli_run, tmp_path)
    prepare(tmp_path)
    before = _files(tmp_path)
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"hybridflow {argv[0]}: error: "), err
    assert re.search(message, err) and "Traceback" not in err and "weights_only" not in err, err
    if names is not None:  # else the message names the argument (checked by its pattern)
        assert str(tmp_path / names) in err
    assert _files(tmp_path) == before  # no file written, changed or removed
    assert not (tmp_path / "new").exists()  # no output folder left behind


def test_debug_flag_prints_the_traceback(tmp_path: Path, capsys) -> None:
    _recipe(tmp_path, *TOO_FEW)
    argv = ["train", "--config", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--quiet", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "InputError" in err
    assert err.splitlines()[-1].startswith("hybridflow train: error: NPETrainer: ")
    assert not (tmp_path / "o").exists()


def test_trainer_input_errors_are_typed() -> None:
    data = simulate(GaussianLinear(2), 4, seed=0)
    trainer = NPETrainer(_npe_flow(), _npe_config(validation_fraction=0.9))
    with pytest.raises(InputError, match="4 simulation"):
        trainer.fit(data.theta, data.x)
