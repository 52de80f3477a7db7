"""Byte sizes: parsing memory budgets such as ``"512MiB"`` and printing byte counts."""

from __future__ import annotations

import math
import re

__all__ = ["UNLIMITED", "format_bytes", "parse_bytes"]

UNLIMITED = math.inf
"""A memory budget with no bound: the planner stores everything it can."""

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | float | str, where: str = "memory_budget") -> float:
    """A byte count from an int, a float or a string with a unit.

    Decimal units (``kB``, ``MB``, ``GB``, ``TB``, and ``k``, ``M``, ``G``, ``T``) are powers
    of 1000, binary units (``KiB``, ``MiB``, ``GiB``, ``TiB``) powers of 1024; case does not
    matter. ``math.inf``, ``"inf"`` and ``"unlimited"`` mean no bound.

    Args:
        value: the size, e.g. ``2**30``, ``"512MiB"``, ``"2GB"``, ``"1.5 GiB"``.
        where: how an error message names the value.

    Returns:
        The number of bytes (an integral float, or ``math.inf``).

    Raises:
        TypeError: if ``value`` is neither a number nor a string.
        ValueError: if it is negative, not a number, or has an unknown unit.

    Example:
        >>> parse_bytes("512MiB") == 512 * 2**20, parse_bytes("2GB") == 2e9
        (True, True)
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(
            f"{where} must be a number of bytes or a string such as '512MiB', got {value!r}"
        )
    if isinstance(value, str):
        if value.strip().lower() in ("inf", "unlimited"):
            return UNLIMITED
        match = _PATTERN.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{where}: cannot read {value!r} as a size; write a number and a unit such as "
                "'512MiB', '2GB' or '1.5GiB'"
            )
        number = float(match.group(1)) * _UNITS[unit]
    else:
        number = float(value)
    if math.isnan(number) or number < 0:
        raise ValueError(f"{where} must be a non-negative number of bytes, got {value!r}")
    return number if math.isinf(number) else float(math.floor(number))


def format_bytes(count: float) -> str:
    """``count`` bytes in binary units, e.g. ``"1.50 MiB"`` (``"unlimited"`` for infinity)."""
    if math.isinf(count):
        return "unlimited"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} TiB"
