"""The error the command line reports as a message, not a traceback, and the ``--debug`` flag
that shows the traceback too."""

from __future__ import annotations

import argparse

__all__ = ["UsageError", "add_debug_flag"]


class UsageError(ValueError):
    """Bad flags, a bad config or input file, or an output that cannot be written.

    The command line prints the message (which names the flag, file, section or path) and
    exits with status 2, as argparse does for bad flags; nothing has been written by then.
    Errors of :mod:`hybridflow.errors` raised by the library are reported the same way.
    """


def add_debug_flag(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """Add ``--debug`` (print the traceback of an error too) to ``parser``.

    Give ``top=True`` for the top-level parser only: subcommands' flags set nothing unless
    given, so ``hybridflow --debug train ...`` and ``hybridflow train ... --debug`` both work.
    """
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="on an error, print its traceback too",
    )
