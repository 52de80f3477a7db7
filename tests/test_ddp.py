"""DistributedDataParallel over two gloo processes equals one process on the full batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "ddp_train.py"
TIMEOUT = 240  # seconds: a hang fails the test instead of blocking CI


def _run(out: Path, *flags: str, processes: int = 1) -> list[dict[str, torch.Tensor]]:
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
        ]
        if processes > 1
        else [sys.executable]
    )
    command = [*launcher, str(SCRIPT), "--steps", "4", "--float64", "--out", str(out), *flags]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(processes)]


def _max_relative_difference(a, b):
    return max(
        float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-30))
        for k in a
        if a[k].is_floating_point()
    )


@pytest.mark.parametrize(
    "flags",
    [(), ("--find-unused-parameters", "--accumulate", "2")],
    ids=["plain", "find-unused-and-no_sync-accumulation"],
)
def test_ddp_two_processes_equal_one_process(tmp_path, flags):
    (single,) = _run(tmp_path / "single")
    ranks = _run(tmp_path / "ddp", *flags, processes=2)
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert _max_relative_difference(single, ranks[0]) < 1e-6
    # the parameters really moved: the comparison is not between two initial states
    torch.manual_seed(0)
    sys.path.insert(0, str(SCRIPT.parent))
    from ddp_train import PosteriorModel

    initial = PosteriorModel(4, 32).double().state_dict()
    assert _max_relative_difference(initial, single) > 1e-3
