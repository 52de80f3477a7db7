"""``hybridflow bench memory``: peak step memory versus depth and image size, as CSV and PNG."""

from __future__ import annotations

import argparse
from typing import Any

from hybridflow.bench import memory_depth
from hybridflow.cli.errors import add_debug_flag
from hybridflow.cli.help import HelpFormatter, plain

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` with its one benchmark, ``memory``."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks (memory versus depth and image size)",
        description=plain(__doc__),
        formatter_class=HelpFormatter,
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    memory = benchmarks.add_parser(
        "memory",
        help="peak step memory (and time) of store, invert and checkpoint modes",
        description=plain(memory_depth.__doc__),
        formatter_class=HelpFormatter,
    )
    memory_depth.add_arguments(memory, default_out="bench-output")
    add_debug_flag(memory)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``hybridflow bench memory``; returns the exit status."""
    memory_depth.run(args)
    return 0
