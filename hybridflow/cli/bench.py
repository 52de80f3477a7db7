"""``hybridflow bench memory``: peak step memory versus depth and image size, as CSV and PNG.

The measurement is the library's (:mod:`hybridflow.bench.memory_depth`); this module holds
its flags, shared by ``hybridflow bench memory`` and ``benchmarks/memory_depth.py``
(:func:`main`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hybridflow.bench import memory_depth, peak_memory_unavailable
from hybridflow.cli.errors import UsageError, add_debug_flag
from hybridflow.cli.help import add_command
from hybridflow.cli.outputs import output_folder

__all__ = ["add_arguments", "add_parser", "main", "run", "run_memory", "settings_from_args"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` with its one benchmark, ``memory``."""
    parser = add_command(
        subparsers, "bench", "benchmarks (memory versus depth and image size)", __doc__
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    memory = add_command(
        benchmarks,
        "memory",
        "peak step memory (and time) of store, invert and checkpoint modes",
        memory_depth.__doc__,
    )
    add_arguments(memory, default_out="bench-output")
    add_debug_flag(memory)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``hybridflow bench memory``; returns the exit status."""
    run_memory(args)
    return 0


def add_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    """The flags of the benchmark, shared by ``hybridflow bench memory`` and the script."""
    parser.add_argument("--preset", choices=sorted(memory_depth.PRESETS), default="small")
    parser.add_argument("--sizes", type=int, nargs="+", help="image sides (override preset)")
    parser.add_argument("--depths", type=int, nargs="+", help="Glow steps (override preset)")
    parser.add_argument("--batch", type=int, help="images per step (override preset)")
    parser.add_argument("--hidden", type=int, help="conditioner width (override preset)")
    parser.add_argument("--repeats", type=int, help="fresh processes per configuration")
    parser.add_argument("--timing-steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument(
        "--modes", nargs="+", choices=memory_depth.MODES, default=list(memory_depth.MODES)
    )
    parser.add_argument(
        "--measure",
        choices=["memory", "time", "both"],
        default="both",
        help="peak memory and/or time (each in its own fresh process)",
    )
    parser.add_argument("--out", type=Path, default=Path(default_out), help="output folder")


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of :func:`hybridflow.bench.memory_depth.measure` from parsed flags (preset values fill the gaps).

    Raises:
        UsageError: a size, depth or count out of range, naming the flag, or peak memory
            asked for where it cannot be read.
    """
    settings = {key: getattr(args, key) for key in ("sizes", "depths", "batch", "hidden")}
    settings["repeats"] = args.repeats
    for key, value in memory_depth.PRESETS[args.preset].items():
        if settings[key] is None:
            settings[key] = value
    if min(settings["sizes"]) < 2 or any(s % 2 for s in settings["sizes"]):
        raise UsageError(f"--sizes must be even and at least 2, got {settings['sizes']}")
    if min(settings["depths"]) < 1:
        raise UsageError(f"--depths must be positive, got {settings['depths']}")
    for flag, value in (
        ("--batch", settings["batch"]),
        ("--hidden", settings["hidden"]),
        ("--repeats", settings["repeats"]),
        ("--timing-steps", args.timing_steps),
        ("--threads", args.threads),
    ):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.measure != "time" and (reason := peak_memory_unavailable()) is not None:
        raise UsageError(f"cannot measure peak memory: {reason}; use --measure time")
    return {
        **settings,
        "modes": list(dict.fromkeys(args.modes)),
        "timing_steps": args.timing_steps,
        "threads": args.threads,
        "measure": args.measure,
    }


def run_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure, write CSV and PNG to ``args.out``, print the table; the rows.

    Raises:
        UsageError: bad flags, or an output folder that cannot be written.
    """
    settings = settings_from_args(args)
    with output_folder(args.out) as out:
        rows = memory_depth.measure(settings)
        csv_path = memory_depth.write_csv(rows, out / "memory_depth.csv")
        png_path = memory_depth.plot(rows, out / "memory_depth.png")
    print(memory_depth.report(rows))
    print(f"wrote {csv_path} and {png_path}")
    return rows


def main(argv: list[str] | None = None, default_out: str = "benchmarks/results") -> list[dict]:
    """Parse ``argv`` and :func:`run_memory`; a child process (``--child JSON``) measures one
    configuration and prints it as JSON."""
    parser = argparse.ArgumentParser(description=memory_depth.__doc__.splitlines()[0])
    add_arguments(parser, default_out)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        memory_depth.child_main(["--child", args.child])
        return []
    try:
        return run_memory(args)
    except UsageError as error:
        parser.error(str(error))
