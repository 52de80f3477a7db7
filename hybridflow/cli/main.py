"""The ``hybridflow`` command: parse the arguments and run one subcommand.

Subcommands (one module each): ``demo``, ``train``, ``sample``, ``bench memory``. Every user
error (bad flags, bad configs, missing, damaged or mismatched files, output folders that
cannot be written, and every :mod:`hybridflow.errors` error the library raises, such as too
few simulations for the validation fraction) is reported as one line,
``hybridflow <command>: error: ...``, with exit status 2 and no traceback (``--debug`` prints
it too); a missing optional dependency (scikit-learn, matplotlib) likewise, with status 1; an
interrupted run exits with status 130 and leaves only whole files behind. A failed run leaves
no empty output folder.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from hybridflow.cli import bench, demo, sample, train
from hybridflow.cli.errors import UsageError, add_debug_flag
from hybridflow.errors import HybridflowError

__all__ = ["build_parser", "main"]

_COMMANDS = {"bench": bench, "demo": demo, "sample": sample, "train": train}


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``hybridflow`` and its subcommands.

    Example:
        >>> args = build_parser().parse_args(["demo", "--quick", "--out", "somewhere"])
        >>> args.command, args.quick, str(args.out)
        ('demo', True, 'somewhere')
    """
    from hybridflow import __version__

    parser = argparse.ArgumentParser(
        prog="hybridflow",
        description="Invertible networks whose training memory does not grow with depth: "
        "train and sample posterior flows, run the demo and the benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"hybridflow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_debug_flag(parser, top=True)
    for module in _COMMANDS.values():
        add_debug_flag(module.add_parser(commands))
    return parser


def _one_line(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _report(args: argparse.Namespace, error: BaseException) -> None:
    if args.debug:
        traceback.print_exception(error)
    print(f"hybridflow {args.command}: error: {_one_line(error)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hybridflow`` with ``argv`` (default: the process's arguments); the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command].run(args)
    except (UsageError, HybridflowError) as error:
        _report(args, error)
        return 2
    except ImportError as error:  # an optional dependency; the message says what to install
        _report(args, error)
        return 1
    except KeyboardInterrupt:
        print(
            f"hybridflow {args.command}: interrupted; the files written so far are whole "
            "(train: rerun with --resume)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
