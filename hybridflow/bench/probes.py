"""Peak memory and time of one step, read the way a fresh process sees them.

Peak memory on CPU is the growth of the resident set over one step: the process runs with
glibc's mmap and trim thresholds pinned (:data:`MEMORY_ENV`) so that freed tensors go back
to the operating system, takes a warm-up step (optimizer state, ActNorm initialisation,
allocator pools), resets the kernel's high-water mark (writing ``5`` to
``/proc/self/clear_refs``), runs the measured step and reads ``VmHWM`` from
``/proc/self/status``. That needs Linux's ``/proc``; :func:`peak_memory_unavailable` says
why it cannot be read elsewhere. The bytes that autograd keeps for backward
(:func:`saved_bytes`) are counted on every platform.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

__all__ = [
    "MEMORY_ENV",
    "TIME_ENV",
    "ChildError",
    "child_main",
    "current_rss",
    "measure_peak",
    "measure_time",
    "peak_memory_unavailable",
    "peak_since_reset",
    "process_rss",
    "reset_peak",
    "run_child",
    "saved_bytes",
    "saved_storages",
]

MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
"""Environment of a memory-measuring process: glibc returns every freed block of 64 KiB or
more to the OS at once, so each step's peak shows in the resident set. It also makes each
large allocation a fresh mmap, which distorts time: time is measured in another process."""

TIME_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Environment of a timing process: OpenMP threads sleep instead of spinning when idle."""

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class ChildError(RuntimeError):
    """A measuring child process failed; the message ends with its standard error."""


def _status_kib(field: str, status: Path = _STATUS) -> int:
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in {status}")


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux ``/proc``)."""
    return _status_kib("VmRSS") * 1024


def process_rss(pid: int) -> int:
    """Resident set size in bytes of the process ``pid`` (Linux ``/proc``), as a watchdog
    reads it: 0 once the process has exited (a zombie has no resident set left)."""
    try:
        return _status_kib("VmRSS", Path(f"/proc/{pid}/status")) * 1024
    except (OSError, RuntimeError):
        return 0


def reset_peak() -> None:
    """Reset the kernel's high-water mark of this process's resident memory."""
    _CLEAR_REFS.write_text("5")


def peak_since_reset() -> int:
    """Peak resident set size in bytes since :func:`reset_peak`."""
    return _status_kib("VmHWM") * 1024


def peak_memory_unavailable() -> str | None:
    """``None`` where this process can read its peak memory, else the reason it cannot.

    Example:
        >>> reason = peak_memory_unavailable()
        >>> reason is None or isinstance(reason, str)
        True
    """
    if not sys.platform.startswith("linux"):
        return f"peak memory is read from Linux's /proc, and this is {sys.platform}"
    try:
        current_rss()
        peak_since_reset()
        reset_peak()
    except (OSError, RuntimeError, ValueError) as error:
        return f"/proc cannot be used here ({error})"
    return None


def measure_peak(step: Callable[[], object]) -> int:
    """Peak growth of the resident set (bytes) over one call of ``step``, after a warm-up call.

    Run it in a fresh process started with :data:`MEMORY_ENV` (see :func:`run_child`).
    """
    step()
    before = current_rss()
    reset_peak()
    step()
    return peak_since_reset() - before


def measure_time(step: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``step`` after a warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def saved_storages(step: Callable[[], object]) -> dict[int, int]:
    """The storages of the tensors autograd saves for backward while ``step`` runs, as
    ``{address: bytes}`` (each storage once; parameters, which are kept anyway, left out).

    Give it a forward pass: what it saves is what the graph holds until backward. (A
    backward inside ``step`` would add what reconstructing rules save for a moment while they
    run.) Counted with :func:`torch.autograd.graph.saved_tensors_hooks`, so it works on every
    platform.
    """
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.nn.Parameter):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return storages


def saved_bytes(step: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saves for backward while ``step`` (a forward pass) runs,
    each storage once; see :func:`saved_storages`.

    Example:
        >>> import torch
        >>> w = torch.ones(3, requires_grad=True)
        >>> x = torch.ones(1000)
        >>> saved_bytes(lambda: (x[:3] * w).exp().sum())  # x's storage and exp's output
        4012
    """
    return sum(saved_storages(step).values())


def run_child(
    argv: Sequence[str],
    config: Mapping[str, object],
    env: Mapping[str, str],
    timeout: float = 1800,
) -> dict:
    """Run ``python *argv --child JSON`` in a fresh process with ``env`` added to the
    environment; the child prints one JSON object as its last line, which is returned.

    Raises:
        ChildError: the child failed or timed out; the message holds its standard error.
    """
    command = [sys.executable, *argv, "--child", json.dumps(dict(config))]
    try:
        result = subprocess.run(
            command,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise ChildError(f"measuring child timed out after {timeout:g} s for {config}") from error
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise ChildError(
            f"measuring child failed (exit {result.returncode}) for {config}:\n"
            f"{result.stderr[-2000:]}"
        )
    return json.loads(lines[-1])


def child_main(measure: Callable[[dict], dict], argv: Sequence[str] | None = None) -> None:
    """A measuring child's entry point (the other end of :func:`run_child`): parse
    ``--child JSON``, run ``measure`` on that configuration and print its result as JSON."""
    parser = argparse.ArgumentParser(description="one measurement, in a fresh process")
    parser.add_argument("--child", required=True, help="the configuration, as JSON")
    args = parser.parse_args(argv)
    print(json.dumps(measure(json.loads(args.child))))
