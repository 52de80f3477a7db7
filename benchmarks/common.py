"""Shared pieces of the benchmarks: the Glow-like model, one training step, memory probes.

They live in the package, :mod:`hybridflow.bench` (one implementation for these scripts and
``hybridflow bench memory``); this module keeps the names the scripts import. Peak memory on
CPU is read the way a fresh process sees it: the child process runs with glibc's mmap and
trim thresholds pinned (``MEMORY_ENV``) so that freed tensors go back to the OS, resets the
high-water mark (``/proc/self/clear_refs``) just before the measured step and reads ``VmHWM``
after it.
"""

from __future__ import annotations

from pathlib import Path

from hybridflow.bench import (
    MEMORY_ENV,
    TIME_ENV,
    GlowLike,
    current_rss,
    gaussian_nll,
    measure_peak,
    measure_time,
    peak_since_reset,
    reset_peak,
    training_step,
)
from hybridflow.bench import run_child as _run_child
from hybridflow.bench.memory_depth import write_csv

__all__ = [
    "MEMORY_ENV",
    "TIME_ENV",
    "GlowLike",
    "current_rss",
    "gaussian_nll",
    "measure_peak",
    "measure_time",
    "peak_since_reset",
    "reset_peak",
    "run_child",
    "training_step",
    "write_csv",
]


def run_child(script: Path, config: dict, env: dict[str, str], timeout: float = 1800) -> dict:
    """Run ``script --child JSON`` in a fresh process with ``env`` added to the environment
    (:func:`hybridflow.bench.run_child` for a script)."""
    return _run_child([str(script)], config, env, timeout)
