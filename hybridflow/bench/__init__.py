"""Benchmarks as a library: peak memory and time in fresh processes and the Glow-like model.

The measurements that start child processes are submodules, run as ``python -m`` by their
parents: :mod:`hybridflow.bench.memory_depth` (memory versus depth and image size) and
:mod:`hybridflow.bench.step_memory` (one posterior-training step per mode).
The package re-exports the public names of :mod:`~hybridflow.bench.glow_like` and
:mod:`~hybridflow.bench.probes`, as their ``__all__`` lists them."""

from hybridflow.bench import glow_like, probes
from hybridflow.bench.glow_like import BenchMode, GlowLike, gaussian_nll, training_step
from hybridflow.bench.probes import (
    MEMORY_ENV,
    TIME_ENV,
    ChildError,
    child_main,
    current_rss,
    measure_peak,
    measure_time,
    peak_memory_unavailable,
    peak_since_reset,
    process_rss,
    reset_peak,
    run_child,
    saved_bytes,
    saved_storages,
)

__all__ = [*glow_like.__all__, *probes.__all__]
