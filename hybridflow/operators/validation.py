"""Input checks shared by operators: per-sample shapes, dtypes and the shapes rules return."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hybridflow.errors import ArgumentTypeError

__all__ = [
    "Shape",
    "as_constant",
    "as_shape",
    "check_batch",
    "check_keywords",
    "check_result_shape",
]

Shape = tuple[int, ...]


def as_shape(shape: Sequence[int], where: str, what: str) -> Shape:
    """Return ``shape`` as a tuple of non-negative ints, or raise naming ``where`` and ``what``.

    Args:
        shape: a sequence of ints, e.g. ``(1, 32, 32)``.
        where: the operator's name for the message.
        what: which shape it is (``"in_shape"``, ``"out_shape"``).
    """
    if not isinstance(shape, Sequence):
        raise TypeError(f"{where}: {what} must be a sequence of ints, got {shape!r}")
    result = tuple(shape)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in result):
        raise ValueError(f"{where}: {what} must hold non-negative ints, got {shape!r}")
    return result


def check_batch(tensor: object, shape: Shape, where: str, what: str = "input") -> Tensor:
    """Check that ``tensor`` is a floating or complex batch of shape ``(B, *shape)``.

    Args:
        tensor: what the caller passed.
        shape: the expected per-sample shape (everything after the batch dimension).
        where: the operator's name for the message.
        what: what the tensor is (``"input"``, ``"adjoint input"``).

    Returns:
        ``tensor``, unchanged.

    Raises:
        TypeError: if ``tensor`` is not a tensor, or holds integers or booleans.
        ValueError: if its shape is not ``(B, *shape)``; the message gives both shapes.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{where}: {what} must be a torch.Tensor, got {type(tensor).__name__}")
    if not (tensor.is_floating_point() or tensor.is_complex()):
        raise TypeError(f"{where}: {what} must be a floating or complex tensor, got {tensor.dtype}")
    if tuple(tensor.shape[1:]) != shape or tensor.dim() != 1 + len(shape):
        expected = ", ".join(["B", *map(str, shape)])
        raise ValueError(
            f"{where}: expected {what} of shape ({expected}) (per-sample shape {shape}, batch "
            f"first), got {tuple(tensor.shape)}"
        )
    return tensor


def check_result_shape(result: object, expected: Shape, where: str, what: str) -> Tensor:
    """Check what a user's rule returned: a tensor of exactly the ``expected`` shape.

    Args:
        result: the returned value.
        expected: the full expected shape, batch dimension included.
        where: the operator's name for the message.
        what: which rule returned it and for what (``"forward"``, ``"vjp for input 0"``).

    Raises:
        TypeError: if ``result`` is not a tensor.
        ValueError: if its shape differs; the message gives both shapes.
    """
    if not isinstance(result, Tensor):
        raise TypeError(f"{where}: {what} returned a {type(result).__name__}, expected a tensor")
    if tuple(result.shape) != expected:
        raise ValueError(
            f"{where}: {what} returned shape {tuple(result.shape)}, expected {expected}"
        )
    return result


def as_constant(value: object, where: str, what: str) -> Tensor:
    """Return operator data (a kernel, a mask, a matrix) as a tensor that is a constant.

    Args:
        value: a tensor, a NumPy array or a nested sequence of numbers.
        where: the operator's name for the message.
        what: what the data is (``"kernel"``, ``"mask"``).

    Raises:
        TypeError: if ``value`` cannot be read as a tensor.
        ValueError: if ``value`` requires grad: operators keep nothing for backward and give
            the gradient of their input only, so a learnable kernel would silently not learn.
    """
    if isinstance(value, Tensor):
        if value.requires_grad:
            raise ValueError(
                f"{where}: the {what} requires grad, but an operator with a hand-written "
                f"adjoint gives the gradient of its input only; pass {what}.detach() for a "
                "constant, or use an autograd module (e.g. nn.Conv2d, nn.Linear) to learn it"
            )
        return value.detach()
    if isinstance(value, np.ndarray | np.generic | Sequence):
        try:
            return torch.from_numpy(np.array(value, order="C"))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{where}: cannot read the {what} as a tensor: {error}") from error
    raise TypeError(
        f"{where}: the {what} must be a tensor or a NumPy array, got {type(value).__name__}"
    )


def check_keywords(build: Callable[..., Any], options: dict[str, Any], where: str) -> None:
    """Refuse, naming the decorator ``where``, keywords that ``build(forward, **options)``
    would not take (an unknown name, a missing required one)."""
    try:
        inspect.signature(build).bind(None, **options)
    except TypeError as error:
        raise ArgumentTypeError(
            f"{error}; it takes the keyword arguments of {build.__name__}", where=(where,)
        ) from None
