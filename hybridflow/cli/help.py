"""Help texts of the command line: plain text (no reST markup) with every default shown."""

from __future__ import annotations

import argparse
import re
from typing import Any

__all__ = ["HelpFormatter", "add_command", "add_threads_flag", "plain"]

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :func:`~hybridflow.save` -> hybridflow.save
_LITERAL = re.compile(r"``([^`]+)``")


def plain(text: str | None) -> str:
    """A module docstring as terminal text: reST roles and double backquotes removed.

    Example:
        >>> plain("Writes ``model.pt`` (:func:`~hybridflow.save`).")
        'Writes model.pt (save).'
    """
    if not text:
        return ""
    text = _ROLE.sub(lambda m: m.group(1).split(".")[-1] if "~" in m.group(0) else m.group(1), text)
    return _LITERAL.sub(r"\1", text).replace("::\n", ":\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends ``(default: ...)`` to the help of each
    flag with a default (as ``argparse.ArgumentDefaultsHelpFormatter``, but not for ``None``
    or a switch's ``False``, where a help text says what happens without the flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "%(default)" in text
            or not action.option_strings
            or action.default is None
            or action.default is False
            or action.default is argparse.SUPPRESS
        ):
            return action.help
        return f"{text} (default: %(default)s)"


def add_command(
    subparsers: Any, name: str, summary: str, doc: str | None
) -> argparse.ArgumentParser:
    """Register the subcommand ``name``: ``summary`` in the command list, the module
    docstring ``doc`` (as :func:`plain` text) as its description."""
    return subparsers.add_parser(
        name, help=summary, description=plain(doc), formatter_class=HelpFormatter
    )


def add_threads_flag(parser: argparse.ArgumentParser, note: str) -> None:
    """``--threads N`` (default 1): torch CPU threads of the command; ``note`` says why one."""
    parser.add_argument("--threads", type=int, default=1, help=f"torch CPU threads ({note})")
