"""Linear operators from a pair of plain functions (torch or NumPy/SciPy): forward and adjoint."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from hybridflow.operators.bridge import Backend, check_backend, from_numpy, to_numpy
from hybridflow.operators.linear import LinearOperator
from hybridflow.operators.validation import check_keywords

__all__ = ["FunctionLinearOperator", "linear_operator"]


class FunctionLinearOperator(LinearOperator):
    r"""A :class:`LinearOperator` from two functions of a batch, :math:`x \mapsto A x` and
    :math:`y \mapsto A^H y`.

    Both functions take a batch (batch dimension first) and return a batch; they are run
    without autograd. With ``backend="numpy"`` they take and return NumPy arrays (SciPy code
    fits here): results come back as tensors on the input's device, in its precision
    (see :mod:`hybridflow.operators.bridge`). Check a new operator with
    :func:`hybridflow.testing.operators.check_adjoint`.

    Args:
        forward: :math:`A`, maps ``(B, *in_shape)`` to ``(B, *out_shape)``.
        adjoint: :math:`A^H`, maps ``(B, *out_shape)`` to ``(B, *in_shape)``.
        in_shape: per-sample input shape.
        out_shape: per-sample output shape.
        backend: ``"torch"`` or ``"numpy"``.
        allow_device_transfer: for ``backend="numpy"``, accept tensors on a GPU by copying
            them to the CPU and back on every call (refused by default, with an error).
        complex_input: whether the domain is complex (see :class:`LinearOperator`).
        complex_output: whether the range is complex.
        name: how error messages call the operator; the forward function's name by default.

    Example:
        >>> import numpy as np, torch
        >>> from hybridflow.operators import FunctionLinearOperator
        >>> diff = FunctionLinearOperator(
        ...     lambda x: np.diff(x, axis=-1),
        ...     lambda y: np.pad(y, ((0, 0), (1, 0))) - np.pad(y, ((0, 0), (0, 1))),
        ...     in_shape=(4,), out_shape=(3,), backend="numpy", name="diff",
        ... )
        >>> diff(torch.tensor([[1.0, 2.0, 4.0, 8.0]]))
        tensor([[1., 2., 4.]])
    """

    def __init__(
        self,
        forward: Callable[[Any], Any],
        adjoint: Callable[[Any], Any],
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        *,
        backend: Backend = "torch",
        allow_device_transfer: bool = False,
        complex_input: bool = False,
        complex_output: bool = False,
        name: str | None = None,
    ) -> None:
        name = name if name is not None else getattr(forward, "__name__", "FunctionLinearOperator")
        if not callable(forward) or not callable(adjoint):
            raise TypeError(f"{name}: forward and adjoint must be callables")
        super().__init__(
            in_shape,
            out_shape,
            complex_input=complex_input,
            complex_output=complex_output,
            name=name,
        )
        self.forward_fn = forward
        self.adjoint_fn = adjoint
        self.backend: Backend = check_backend(backend, name)
        self.allow_device_transfer = allow_device_transfer

    def _call(self, fn: Callable[[Any], Any], x: Tensor, what: str) -> Tensor:
        if self.backend == "torch":
            return fn(x)
        result = fn(to_numpy(x, self.name, self.allow_device_transfer))
        return from_numpy(result, x.dtype, x.device, self.name, what)

    def _forward_map(self, x: Tensor) -> Tensor:
        return self._call(self.forward_fn, x, "forward")

    def _adjoint_map(self, y: Tensor) -> Tensor:
        return self._call(self.adjoint_fn, y, "adjoint")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"


def linear_operator(**options: Any) -> Callable[[Callable[[Any], Any]], FunctionLinearOperator]:
    """Decorator form of :class:`FunctionLinearOperator`: ``@linear_operator(adjoint=...,
    in_shape=..., out_shape=..., **options)`` on a forward function builds
    ``FunctionLinearOperator(forward, adjoint=..., ...)``. The keywords are those of
    :class:`FunctionLinearOperator`, checked when the decorator is made.

    Example:
        >>> import torch
        >>> from hybridflow.operators import linear_operator
        >>> @linear_operator(adjoint=lambda y: y.flip(-1), in_shape=(3,), out_shape=(3,))
        ... def reverse(x):
        ...     return x.flip(-1)
        >>> reverse(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[3., 2., 1.]])
    """
    check_keywords(FunctionLinearOperator, options, "linear_operator")
    return lambda forward: FunctionLinearOperator(forward, **options)
