"""Saving and loading: bit-exact state_dicts, versioned model files, clear mismatch errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import glow_chain
from torch import nn

import hybridflow as hf
from hybridflow.config import from_config, get_config
from hybridflow.io import digest
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1, Squeeze

ROOT = Path(__file__).resolve().parents[1]


def _resigned(payload):
    """A model-file payload edited in a test, with its checksum recomputed (as a file that
    was written that way would have)."""
    body = {k: v for k, v in payload.items() if k != "checksum"}
    return {**body, "checksum": digest(body)}


def _model():
    return glow_chain(3, 2, "invert", cond=2, squeeze=True, anchor_every=2)


def test_state_dict_round_trip_is_bit_exact_and_keeps_actnorm_flag():
    model = _model()
    other = glow_chain(3, 2, "invert", cond=2, squeeze=True, seed=7)
    other[1].mark_initialized(False)
    hf.load_state_dict(other, model.state_dict())
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert other[1].is_initialized


def test_config_round_trip_rebuilds_the_same_architecture():
    model = _model()
    config = json.loads(json.dumps(get_config(model)))
    rebuilt = from_config(config)
    assert isinstance(rebuilt, hf.Chain) and rebuilt.mode == "invert" and rebuilt.anchor_every == 2
    assert [type(m) for m in rebuilt] == [type(m) for m in model]
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_save_and_load_in_a_fresh_process(tmp_path):
    model = _model()
    model.mode = "store"  # state changed after construction is saved too
    x, cond = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 2, 2)
    hf.save(model, tmp_path / "model.pt", metadata={"epoch": 3})
    torch.save({"x": x, "cond": cond}, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import torch, hybridflow as hf
        model, metadata = hf.load({str(tmp_path / "model.pt")!r})
        inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        y, logdet = model(inputs["x"], inputs["cond"])
        torch.save({{"y": y, "logdet": logdet, "mode": model.mode, "epoch": metadata["epoch"]}},
                   {str(tmp_path / "out.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=120)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    y, logdet = model(x, cond)
    assert torch.equal(out["y"], y) and torch.equal(out["logdet"], logdet)
    assert out["mode"] == "store" and out["epoch"] == 3


def test_mismatched_checkpoint_names_keys_and_shapes_and_changes_nothing():
    model = glow_chain(4, 2, "invert", spatial_dims=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = glow_chain(4, 2, "invert", spatial_dims=0, seed=3).state_dict()
    state["layers.0.log_scale"] = torch.zeros(5)
    state["layers.99.weight"] = torch.zeros(1)
    del state["layers.1.lower"]
    with pytest.raises(ValueError) as info:
        hf.load_state_dict(model, state)
    message = str(info.value)
    assert "missing keys ['layers.1.lower']" in message
    assert "unexpected keys ['layers.99.weight']" in message
    assert "layers.0.log_scale: checkpoint (5,), model (4,)" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_loading_a_mismatched_model_file(tmp_path):
    hf.save(glow_chain(4, 2, "invert", spatial_dims=0), tmp_path / "a.pt")
    payload = torch.load(tmp_path / "a.pt", weights_only=True)
    payload["state_dict"]["layers.2.conditioner.0.weight"] = torch.zeros(3, 3)
    torch.save(_resigned(payload), tmp_path / "b.pt")
    with pytest.raises(ValueError, match=r"layers.2.conditioner.0.weight: checkpoint \(3, 3\)"):
        hf.load(tmp_path / "b.pt")


def test_custom_subnet_cannot_be_saved_as_config(tmp_path):
    layer = AffineCoupling(4, subnet=lambda i, o: nn.Linear(i, o))
    with pytest.raises(TypeError, match="AffineCoupling argument 'subnet' is a function"):
        hf.save(hf.Chain(layer), tmp_path / "m.pt")
    assert not list(tmp_path.iterdir())


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    hf.save(_model(), path)
    good = path.read_bytes()

    def broken_save(obj, file):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        hf.save(_model(), path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file"):
        hf.load(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a hybridflow model file"):
        hf.load(tmp_path / "other.pt")
    hf.save(hf.Chain(ActNorm(2)), tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save(_resigned({**payload, "version": 99}), tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format version 99"):
        hf.load(tmp_path / "future.pt")
    payload["config"] = json.dumps({"class": "os.system", "arguments": {}})
    torch.save(_resigned(payload), tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="unknown module class 'os.system'"):
        hf.load(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf.save(hf.Chain(ActNorm(2)), tmp_path / "no" / "m.pt")


@pytest.mark.parametrize(
    "make",
    [
        lambda: ActNorm(3),
        lambda: InvConv1x1(3),
        lambda: Squeeze(2),
        lambda: AffineCoupling(4, hidden=8, cond_features=2, spatial_dims=3),
    ],
)
def test_layers_survive_save_and_load(tmp_path, make):
    layer = make()
    hf.save(layer, tmp_path / "layer.pt")
    loaded, _ = hf.load(tmp_path / "layer.pt")
    assert type(loaded) is type(layer)
    for (k, a), b in zip(layer.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_dtype_and_device_moves_cover_every_buffer():
    model = _model()
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        moved = _model().to(dtype)
        floating = [t for t in moved.state_dict().values() if t.is_floating_point()]
        assert floating and all(t.dtype == dtype for t in floating)
        assert moved[1].initialized.dtype == torch.bool
    half = _model().half()
    y, logdet = half(torch.randn(2, 3, 4, 4).half(), torch.randn(2, 2, 2, 2).half())
    assert y.dtype == torch.float16 and y.isfinite().all() and logdet.isfinite().all()
    reference, _ = model(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 2, 2))
    assert reference.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip_matches_cpu():
    model = _model().double()
    x, cond = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 2, 2, 2).double()
    y, logdet = model(x, cond)
    moved = model.to("cuda")
    y_cuda, logdet_cuda = moved(x.cuda(), cond.cuda())
    torch.testing.assert_close(y_cuda.cpu(), y)
    torch.testing.assert_close(logdet_cuda.cpu(), logdet)


def _set_flow(summary):
    from hybridflow.distributions import ConditionalFlow, coupling_flow

    return ConditionalFlow(
        coupling_flow(2, 4, depth=2, hidden=8), summary, event_shape=(2,), observation_shape=(5, 3)
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: _set_flow(hf.summary.DeepSet(3, 4, hidden=8)),
        lambda: _set_flow(hf.summary.SetTransformer(3, 4, hidden=8, heads=2)),
        lambda: _set_flow(hf.summary.MLP((5, 3), 4, hidden=8)),
        lambda: hf.ConditionalFlow(
            hf.networks.Glow(1, levels=1, depth=1, hidden=4, cond_features=2),
            hf.summary.CNN(1, 2, hidden=4, depth=1, output="field"),
            event_shape=(1, 4, 4),
        ),
        lambda: hf.Flow(hf.distributions.coupling_flow(2, depth=2, hidden=8), event_shape=(2,)),
    ],
    ids=["deepset", "set_transformer", "mlp", "glow_cnn", "flow"],
)
def test_flows_with_summary_networks_survive_save_and_load(tmp_path, make):
    torch.manual_seed(0)
    model = make()
    conditional = isinstance(model, hf.ConditionalFlow)
    shape = model.event_shape
    x = torch.randn(3, *((5, 3) if conditional and model.observation_shape else (1, 4, 4)))
    theta = torch.randn(3, *shape)
    dist = model(x) if conditional else model()
    log_q = dist.log_prob(theta)  # also initialises ActNorm from this batch
    hf.save(model, tmp_path / "model.pt")
    loaded, _ = hf.load(tmp_path / "model.pt")
    assert type(loaded) is type(model)
    if conditional:
        assert type(loaded.summary) is type(model.summary)
    reloaded = loaded(x) if conditional else loaded()
    assert torch.allclose(reloaded.log_prob(theta), log_q)


def test_configs_saved_under_old_class_paths_and_argument_names_still_load():
    glow = hf.networks.Glow(1, levels=2, depth=1, hidden=4, cond_features=2, seed=0)
    config = json.loads(json.dumps(get_config(glow)))
    arguments = config["arguments"]
    arguments["in_channels"] = arguments.pop("num_features")
    arguments["cond_channels"] = arguments.pop("cond_features")
    rebuilt = from_config(config)
    assert get_config(rebuilt) == get_config(glow)
    hf.load_state_dict(rebuilt, glow.state_dict())
    old_hint = {
        "class": "hybridflow.layers.hint_coupling.HINTCoupling",
        "arguments": {"num_features": 4, "depth": 3, "hidden": 4, "cond_features": 2},
    }
    hint = from_config(old_hint)
    assert isinstance(hint, hf.layers.HINTCoupling) and hint.recursion == 3
    both = {**old_hint, "arguments": {**old_hint["arguments"], "recursion": 2}}
    with pytest.raises(ValueError, match="both the old and the new name"):
        from_config(both)
