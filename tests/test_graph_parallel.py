"""GraphModule under DistributedDataParallel (two gloo processes equal one on the full batch)
and under torch.compile (equal to eager)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from graph_ddp_worker import build_graph, data

from hybridflow.graph import Strategy

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "graph_ddp_worker.py"
TIMEOUT = 240  # seconds: a hang fails the test instead of blocking CI


def _run(out: Path, *flags: str, processes: int = 1) -> list[dict[str, torch.Tensor]]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*launcher, str(WORKER), "--out", str(out), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(processes)]


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(
        float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-30))
        for k in a
        if a[k].is_floating_point()
    )


@pytest.mark.parametrize(
    "flags", [(), ("--micro-batches", "2", "--tile-size", "3")], ids=["invert", "micro+tiles"]
)
def test_graph_module_ddp_two_processes_equal_one_process(tmp_path, flags):
    (single,) = _run(tmp_path / "single")
    ranks = _run(tmp_path / "ddp", *flags, processes=2)
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    # float64 rounding of the two batch halves' sums, amplified by Adam's normalisation of
    # small gradients: measured 8.5e-11 (1x1 convolution differentiated by autograd) and
    # 1.1e-10 (its hand-written rule), worst on a log_diag; a wrong gradient is off by >1e-4
    assert _relative(single, ranks[0]) < 1e-9
    initial = build_graph(4, None, torch.float64).state_dict()
    assert _relative(initial, single) > 1e-4  # the parameters really moved


@pytest.fixture
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("_fresh_dynamo")
@pytest.mark.parametrize(
    "strategy",
    [Strategy("invert"), Strategy("invert", micro_batches=2, tile_size=3)],
    ids=str,
)
def test_compiled_graph_module_training_equals_eager(strategy):
    models = [build_graph(4, strategy, torch.float32) for _ in range(2)]
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in models]
    runs = [models[0], torch.compile(models[1], backend="aot_eager")]

    def train_step(run, optimizer, inputs):
        optimizer.zero_grad()
        loss = run(**inputs)["loss"]
        loss.backward()
        optimizer.step()
        return loss.detach()

    for step in range(2):
        inputs = data(4, step, torch.float32)
        eager = train_step(runs[0], optimizers[0], inputs)
        compiled = train_step(runs[1], optimizers[1], inputs)
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        inputs = data(4, 9, torch.float32)
        torch.testing.assert_close(runs[1](**inputs)["loss"], runs[0](**inputs)["loss"])
