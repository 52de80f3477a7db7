"""Argument checks shared by the summary networks."""

from __future__ import annotations

__all__ = ["check_size"]


def check_size(name: str, value: object, minimum: int, where: str) -> int:
    """Return ``value`` if it is an int >= ``minimum``; raise ``ValueError`` quoting it otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{where}: {name} must be an int >= {minimum}, got {value!r}")
    return value
