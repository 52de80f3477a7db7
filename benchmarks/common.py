"""Shared pieces of the benchmarks: the Glow-like model, one training step, memory probes,
and the command-line options the scripts have in common.

They live in the package, :mod:`hybridflow.bench` (one implementation for these scripts and
``hybridflow bench memory``); this module keeps the names the scripts import. Peak memory on
CPU is read the way a fresh process sees it: the child process runs with glibc's mmap and
trim thresholds pinned (``MEMORY_ENV``) so that freed tensors go back to the OS, resets the
high-water mark (``/proc/self/clear_refs``) just before the measured step and reads ``VmHWM``
after it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
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
    process_rss,
    reset_peak,
    training_step,
)
from hybridflow.bench import run_child as _run_child
from hybridflow.bench.memory_depth import write_csv

__all__ = [
    "MEMORY_ENV",
    "RESULTS",
    "TIME_ENV",
    "GlowLike",
    "add_out_file_option",
    "add_process_options",
    "add_size_options",
    "create_out",
    "current_rss",
    "gaussian_nll",
    "measure_peak",
    "measure_time",
    "parse_or_run_child",
    "peak_since_reset",
    "process_rss",
    "require_peak_probe",
    "reset_peak",
    "run_and_write",
    "run_child",
    "training_step",
    "write_csv",
]


def run_child(script: Path, config: dict, env: dict[str, str], timeout: float = 1800) -> dict:
    """Run ``script --child JSON`` in a fresh process with ``env`` added to the environment
    (:func:`hybridflow.bench.run_child` for a script)."""
    return _run_child([str(script)], config, env, timeout)


RESULTS = Path("benchmarks/results")
"""Where the scripts write their CSV files unless given ``--out``."""

# Help texts of the size options; a name not listed here gets no help text.
SIZE_HELP = {
    "batch": "batch size",
    "depth": "Glow steps",
    "depths": "Glow steps, one model per value",
    "features": "parameter dimension D",
    "hidden": "conditioner width (channels or features)",
    "repeats": "timed repetitions",
    "rounds": "timed rounds per configuration",
    "size": "image side",
}


def add_size_options(parser: argparse.ArgumentParser, **defaults: int | list[int]) -> None:
    """Add an integer option ``--NAME`` per keyword (``_`` written ``-``) with that default;
    a list default makes it take one or more values (``nargs="+"``)."""
    for name, default in defaults.items():
        many = {"nargs": "+"} if isinstance(default, list) else {}
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=default, help=SIZE_HELP.get(name), **many)


def add_process_options(
    parser: argparse.ArgumentParser,
    timeout: float | None = None,
    timeout_help: str = "seconds per process",
) -> None:
    """Add the options of a script that measures in child processes: ``--threads`` (torch
    threads per process), ``--timeout`` (only when a default is given), ``--out`` (the results
    folder) and the hidden ``--child`` (the configuration a child process measures, as JSON)."""
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per measuring process"
    )
    if timeout is not None:
        parser.add_argument("--timeout", type=float, default=timeout, help=timeout_help)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)


def parse_or_run_child(
    parser: argparse.ArgumentParser, argv: list[str] | None, child: Callable[[dict], object]
) -> argparse.Namespace | None:
    """The parsed ``argv``, or None once ``child`` has measured the configuration of
    ``--child JSON`` (this process is then a child of :func:`run_child`, and ``child`` prints
    its result as the last line of JSON on stdout)."""
    args = parser.parse_args(argv)
    if args.child is None:
        return args
    child(json.loads(args.child))
    return None


def require_peak_probe(parser: argparse.ArgumentParser) -> None:
    """Exit with a usage error where peak memory cannot be read (``/proc/self``, Linux only)."""
    if not Path("/proc/self/clear_refs").exists():
        parser.error("peak memory is read from /proc/self (Linux only)")


def create_out(parser: argparse.ArgumentParser, folder: Path) -> None:
    """Create the results folder, or exit with a usage error that says why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"cannot create output folder {folder}: {error}")


def add_out_file_option(parser: argparse.ArgumentParser, name: str) -> None:
    """Add ``--out``, the CSV file a script writes: ``results/NAME`` next to the scripts by
    default."""
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / name)


def run_and_write(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], list[dict]],
    write: Callable[[list[dict], Path], object],
) -> list[dict]:
    """The rows of ``run(args)``, written to ``args.out`` by ``write`` (and said so on
    standard error)."""
    rows = run(args)
    write(rows, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return rows


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each run, the runs taking turns (one call each) for ``repeats``
    rounds, so that every run sees the same machine load. Warm them up before."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}
