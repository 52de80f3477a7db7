"""The error the command line reports as a message, not a traceback."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """Bad flags, a bad config or input file, or an output that cannot be written.

    The command line prints the message (which names the flag, file, section or path) and
    exits with status 2, as argparse does for bad flags; nothing has been written by then.
    """
