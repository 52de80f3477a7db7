"""Public checkers for linear operators: the adjoint ("dot product") test."""

from __future__ import annotations

import torch
from torch import Tensor

from hybridflow.operators.linear import LinearOperator

__all__ = ["adjoint_test", "check_adjoint", "default_adjoint_tolerance"]

_TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-1}


def default_adjoint_tolerance(dtype: torch.dtype) -> float:
    """Relative error :func:`check_adjoint` accepts for ``dtype`` (real or complex).

    ``1e-10`` for float64/complex128, ``1e-5`` for float32/complex64: a right adjoint sits
    near the rounding error, ``1e-16`` and ``1e-7`` times a small factor, and a wrong one
    (a missing conjugate, a flipped kernel, an off-by-one crop) near 1.
    """
    real = dtype.to_real()
    if real not in _TOLERANCES:
        raise ValueError(f"default_adjoint_tolerance: no default for {dtype}; pass rtol")
    return _TOLERANCES[real]


def _random(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    is_complex: bool,
    device: torch.device | str | None,
    generator: torch.Generator,
) -> Tensor:
    if is_complex:
        dtype = dtype.to_real().to_complex()
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


def _inner(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`\sum \bar{a} b` over the whole batch, in double precision."""
    wide = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64
    return torch.vdot(a.reshape(-1).to(wide), b.reshape(-1).to(wide))


def adjoint_test(
    operator: LinearOperator,
    x: Tensor | None = None,
    y: Tensor | None = None,
    *,
    batch: int = 2,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> float:
    r"""Dot-product test of an operator's adjoint; returns the relative error.

    .. math::
        \epsilon = \frac{|\langle A x, y \rangle - \langle x, A^H y \rangle|}
        {\max(\|A x\| \, \|y\|, \; \|x\| \, \|A^H y\|)}

    with :math:`\langle u, v \rangle = \sum \bar{u} v` over the whole batch. By
    Cauchy-Schwarz both inner products are at most the denominator, so :math:`\epsilon` is
    the error relative to the largest value the test could see: near the rounding error for
    a right adjoint, near 1 for a wrong one. When ``x`` or ``y`` is real, the real parts are
    compared (the real inner product, for which the adjoint of a real-to-complex operator is
    defined); when both are complex, the complex values are.

    The operator is applied through its differentiable entry points (``A(x)`` and
    ``A.adjoint(y)``) under ``no_grad``, so shapes are validated as in use. Inner products
    are taken in double precision, so the result measures the operator's own rounding.

    Args:
        operator: the operator to test.
        x: a batch ``(B, *in_shape)``; random normal (complex when the operator's domain is)
            by default.
        y: a batch ``(B, *out_shape)``; random normal (complex when the range is) by default.
        batch: ``B`` for random ``x`` and ``y``.
        dtype: real dtype of random ``x`` and ``y`` (their complex counterpart when complex).
        device: device of random ``x`` and ``y``.
        seed: seed of random ``x`` and ``y``.

    Returns:
        The relative error :math:`\epsilon`.
    """
    if not isinstance(operator, LinearOperator):
        raise TypeError(f"adjoint_test: expected a LinearOperator, got {type(operator).__name__}")
    generator = torch.Generator().manual_seed(seed)
    if x is None:
        shape = (batch, *operator.in_shape)
        x = _random(shape, dtype, operator.complex_input, device, generator)
    if y is None:
        shape = (batch, *operator.out_shape)
        y = _random(shape, dtype, operator.complex_output, device, generator)
    with torch.no_grad():
        ax = operator(x)
        ahy = operator.adjoint(y)
    lhs, rhs = _inner(ax, y), _inner(x, ahy)
    if not (x.is_complex() and y.is_complex()):
        lhs, rhs = lhs.real, rhs.real
    scale = max(float(ax.norm()) * float(y.norm()), float(x.norm()) * float(ahy.norm()), 1e-300)
    return float((lhs - rhs).abs()) / scale


def check_adjoint(
    operator: LinearOperator,
    x: Tensor | None = None,
    y: Tensor | None = None,
    *,
    batch: int = 2,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    seed: int = 0,
    rtol: float | None = None,
) -> float:
    """Assert that :func:`adjoint_test` passes; returns the relative error.

    Args:
        operator: the operator to test.
        x: a batch ``(B, *in_shape)``, random by default (as for :func:`adjoint_test`).
        y: a batch ``(B, *out_shape)``, random by default.
        batch: ``B`` for random ``x`` and ``y``.
        dtype: real dtype of random ``x`` and ``y``.
        device: device of random ``x`` and ``y``.
        seed: seed of random ``x`` and ``y``.
        rtol: the largest accepted relative error;
            :func:`default_adjoint_tolerance` of the inputs' dtype by default.

    Raises:
        AssertionError: naming the operator, with the error and the tolerance.

    Example:
        >>> import torch
        >>> from hybridflow.operators import Convolution
        >>> from hybridflow.testing.operators import check_adjoint
        >>> blur = Convolution(torch.ones(3, 3) / 9, in_shape=(8, 8), boundary="zero")
        >>> check_adjoint(blur) < 1e-12
        True
    """
    error = adjoint_test(operator, x, y, batch=batch, dtype=dtype, device=device, seed=seed)
    reference = x.dtype if x is not None else dtype
    tolerance = default_adjoint_tolerance(reference) if rtol is None else rtol
    if not error <= tolerance:
        name = getattr(operator, "name", type(operator).__name__)
        raise AssertionError(
            f"{name}: adjoint test failed, |<Ax, y> - <x, A^H y>| is {error:.3e} of "
            f"max(|Ax| |y|, |x| |A^H y|) (tolerance {tolerance:.1e}); the adjoint does not "
            "match the forward map"
        )
    return error
