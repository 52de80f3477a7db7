"""Checks of constructor and configuration arguments, shared by every public class.

Each check returns the value it accepts and raises
:class:`~hybridflow.errors.ArgumentTypeError` (a ``TypeError``) for a value of the wrong
type or :class:`~hybridflow.errors.ArgumentError` (a ``ValueError``) for one out of range.
Both quote the value, name the argument (``error.argument``) and the place (``where``, the
class or function that takes it), so ``ActNorm('4')`` reads
``ActNorm: num_features must be an int >= 1, got '4'``.

``bool`` is not accepted as an int or a number here, although Python treats it as one:
``hidden=True`` is a mistake, not a width of 1.

One check per kind of argument: counts (``int >= 1``) go through :func:`positive_int`, other
ints through :func:`integer`, reals through :func:`number`, choices through :func:`one_of`.

>>> positive_int(3, "hidden", "MLP")
3
>>> positive_int(0, "hidden", "MLP")
Traceback (most recent call last):
    ...
hybridflow.errors.ArgumentError: MLP: hidden must be an int >= 1, got 0
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import TypeVar

from hybridflow.errors import ArgumentError, ArgumentTypeError

__all__ = ["boolean", "integer", "number", "one_of", "positive_int"]

T = TypeVar("T")


def _type_error(where: str, name: str, what: str, value: object) -> ArgumentTypeError:
    return ArgumentTypeError(
        f"{name} must be {what}, got {value!r} ({type(value).__name__})",
        argument=name,
        where=(where,),
    )


def _range_text(
    minimum: float | None, maximum: float | None, open_low: bool, open_high: bool
) -> str:
    low = "" if minimum is None else f"{'>' if open_low else '>='} {minimum}"
    high = "" if maximum is None else f"{'<' if open_high else '<='} {maximum}"
    return " and ".join(b for b in (low, high) if b)


def integer(
    value: object,
    name: str,
    where: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    optional: bool = False,
) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) in ``[minimum, maximum]``.

    Args:
        value: what the caller passed.
        name: the argument's name, for the message and ``error.argument``.
        where: the class or function that takes it.
        minimum: smallest accepted value, or ``None``.
        maximum: largest accepted value, or ``None``.
        optional: accept ``None`` too (and return it).

    Raises:
        ArgumentTypeError: not an int (a float such as ``4.0``, a string, a bool).
        ArgumentError: out of range.
    """
    if optional and value is None:
        return value  # type: ignore[return-value]
    bounds = _range_text(minimum, maximum, False, False)
    what = f"an int {bounds}".rstrip() + (" or None" if optional else "")
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(where, name, what, value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ArgumentError(f"{name} must be {what}, got {value!r}", argument=name, where=(where,))
    return value


def positive_int(value: object, name: str, where: str, *, optional: bool = False) -> int:
    """Return ``value`` if it is an ``int >= 1`` (see :func:`integer`); with ``optional``,
    ``None`` too.

    The one check of a count (features, widths, steps, sizes, epochs): every ``int >= 1``
    argument goes through it, so they all read and fail alike.
    """
    return integer(value, name, where, minimum=1, optional=optional)


def number(
    value: object,
    name: str,
    where: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    optional: bool = False,
) -> float:
    """Return ``value`` if it is a finite real number (``int`` or ``float``, not ``bool``) in
    range; ``open_low``/``open_high`` exclude the bounds themselves.

    Raises:
        ArgumentTypeError: not a real number.
        ArgumentError: NaN, infinite or out of range.
    """
    if optional and value is None:
        return value  # type: ignore[return-value]
    bounds = _range_text(minimum, maximum, open_low, open_high)
    what = f"a finite number {bounds}".rstrip() + (" or None" if optional else "")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _type_error(where, name, what, value)
    ok = math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if open_low else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if open_high else value <= maximum
    if not ok:
        raise ArgumentError(f"{name} must be {what}, got {value!r}", argument=name, where=(where,))
    return value


def one_of(value: T, name: str, where: str, choices: Collection[object]) -> T:
    """Return ``value`` if it is one of ``choices`` (a mode, a kind).

    A value must equal a choice and have its type: ``True`` is not the choice ``1``.

    Raises:
        ArgumentError: any other value.
    """
    # of the same type too: True == 1 and 1.0 == 1 in Python, but neither is the mode 1
    if not any(type(value) is type(choice) and value == choice for choice in choices):
        raise ArgumentError(
            f"{name} must be one of {tuple(choices)}, got {value!r}", argument=name, where=(where,)
        )
    return value


def boolean(value: object, name: str, where: str) -> bool:
    """Return ``value`` if it is a ``bool`` (``1`` or ``"yes"`` are refused).

    Raises:
        ArgumentTypeError: anything else.
    """
    if not isinstance(value, bool):
        raise _type_error(where, name, "True or False", value)
    return value
