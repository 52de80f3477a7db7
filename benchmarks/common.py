"""Shared pieces of the benchmarks: the Glow-like model, one training step, memory probes.

Peak memory on CPU is read the way a fresh process sees it: the child process runs with
glibc's mmap and trim thresholds pinned (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``)
so that freed tensors go back to the OS, resets the high-water mark (``/proc/self/clear_refs``)
just before the measured step and reads ``VmHWM`` after it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import hybridflow as hf
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1, Squeeze

__all__ = [
    "MEMORY_ENV",
    "TIME_ENV",
    "GlowLike",
    "current_rss",
    "measure_peak",
    "measure_time",
    "peak_since_reset",
    "reset_peak",
    "run_child",
    "training_step",
]

# Memory is read with glibc returning freed blocks to the OS, so the peak of each step shows.
# That makes every large allocation a fresh mmap, which distorts time: steps are timed in a
# separate process with the default allocator.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
TIME_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


class GlowLike(nn.Module):
    """A single-scale Glow: ``Squeeze(2)`` then ``depth`` x (ActNorm, InvConv1x1, AffineCoupling).

    ``mode`` is ``"store"`` (plain autograd), ``"invert"`` (hybridflow's reconstruction) or
    ``"checkpoint"`` (``torch.utils.checkpoint`` around every Glow step, store-mode layers).
    """

    def __init__(
        self, channels: int, depth: int, hidden: int, mode: str, anchor_every: int | None = None
    ) -> None:
        super().__init__()
        width = 4 * channels
        steps = [
            hf.Chain(
                ActNorm(width),
                InvConv1x1(width),
                AffineCoupling(width, hidden=hidden, spatial_dims=2),
                mode="store",
            )
            for _ in range(depth)
        ]
        self.mode = mode
        if mode == "checkpoint":
            self.squeeze = Squeeze(2)
            self.steps = nn.ModuleList(steps)
        else:
            self.flow = hf.Chain(Squeeze(2), *steps, mode=mode, anchor_every=anchor_every)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mode != "checkpoint":
            return self.flow(x)
        h, logdet = self.squeeze(x)
        for step in self.steps:
            h, step_logdet = checkpoint(step, h, use_reentrant=False)
            logdet = logdet + step_logdet
        return h, logdet


def gaussian_nll(z: Tensor, logdet: Tensor) -> Tensor:
    """Negative log likelihood per dimension under a standard normal base."""
    dims = z[0].numel()
    log_pz = -0.5 * (z**2).flatten(1).sum(1) - 0.5 * dims * torch.log(torch.tensor(2 * torch.pi))
    return -(log_pz + logdet).mean() / dims


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor) -> float:
    """Forward, Gaussian NLL with logdet, backward, optimizer step; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    z, logdet = model(x)
    loss = gaussian_nll(z, logdet)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def current_rss() -> int:
    """Resident set size in bytes."""
    return _status_kib("VmRSS") * 1024


def reset_peak() -> None:
    """Reset the kernel's high-water mark of this process's resident memory."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_since_reset() -> int:
    """Peak resident set size (bytes) since :func:`reset_peak`."""
    return _status_kib("VmHWM") * 1024


def measure_peak(step: Callable[[], object]) -> int:
    """Peak RSS increase (bytes) over one step, after a warm-up step (optimizer state,
    ActNorm initialisation). Run it in a process started with :data:`MEMORY_ENV`."""
    step()
    before = current_rss()
    reset_peak()
    step()
    return peak_since_reset() - before


def measure_time(step: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` steps after a warm-up step."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_child(script: Path, config: dict, env: dict[str, str], timeout: float = 1800) -> dict:
    """Run ``script --child JSON`` in a fresh process with ``env`` added to the environment."""
    env = {**os.environ, **env}
    result = subprocess.run(
        [sys.executable, str(script), "--child", json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child failed for {config}:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
