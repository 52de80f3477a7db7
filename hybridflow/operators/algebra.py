"""The algebra of linear operators: adjoints, transposes, compositions, sums and scalings."""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from hybridflow.operators.linear import LinearOperator

__all__ = ["Adjoint", "Composition", "Identity", "Scaled", "Sum", "Transpose"]


def _conj(tensor: Tensor) -> Tensor:
    return tensor.conj().resolve_conj() if tensor.is_complex() else tensor


def _is_real_kind(operator: LinearOperator) -> bool:
    return not (operator.complex_input or operator.complex_output)


class Identity(LinearOperator):
    """The identity :math:`I x = x` on batches of per-sample shape ``shape``; self-adjoint.

    Useful in sums, e.g. the normal operator of Tikhonov regularisation
    ``A.H @ A + 0.1 * Identity(A.in_shape)``.

    Args:
        shape: per-sample shape of the input and the output.
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__(shape, shape)

    def _forward_map(self, x: Tensor) -> Tensor:
        return x

    def _adjoint_map(self, y: Tensor) -> Tensor:
        return y

    @property
    def H(self) -> LinearOperator:
        return self

    @property
    def T(self) -> LinearOperator:
        return self


class _Reversed(LinearOperator):
    """An operator from ``operator``'s range to its domain (its adjoint or transpose), named
    ``"<name>.<suffix>"``."""

    def __init__(self, operator: LinearOperator, suffix: str) -> None:
        super().__init__(
            operator.out_shape,
            operator.in_shape,
            complex_input=operator.complex_output,
            complex_output=operator.complex_input,
            name=f"{operator.name}.{suffix}",
        )
        self.operator = operator


class Adjoint(_Reversed):
    """The adjoint :math:`A^H` of an operator: its forward is ``A``'s adjoint and vice versa.

    Built by ``A.H``; ``A.H.H`` is ``A`` itself.

    Args:
        operator: the operator ``A``.
    """

    def __init__(self, operator: LinearOperator) -> None:
        super().__init__(operator, "H")

    def _forward_map(self, x: Tensor) -> Tensor:
        return self.operator._checked_map(x, adjoint=True)

    def _adjoint_map(self, y: Tensor) -> Tensor:
        return self.operator._checked_map(y, adjoint=False)

    @property
    def H(self) -> LinearOperator:
        return self.operator


class Transpose(_Reversed):
    r"""The transpose :math:`A^T y = \overline{A^H \bar{y}}` of a complex operator.

    Built by ``A.T`` for an operator with a complex domain or range (for a real operator
    ``A.T`` is ``A.H``); ``A.T.T`` is ``A`` itself.

    Args:
        operator: the operator ``A``.
    """

    def __init__(self, operator: LinearOperator) -> None:
        super().__init__(operator, "T")

    def _forward_map(self, x: Tensor) -> Tensor:
        return _conj(self.operator._checked_map(_conj(x), adjoint=True))

    def _adjoint_map(self, y: Tensor) -> Tensor:
        return _conj(self.operator._checked_map(_conj(y), adjoint=False))

    @property
    def H(self) -> LinearOperator:
        return Transpose(self.operator.H)

    @property
    def T(self) -> LinearOperator:
        return self.operator


def _flatten(operators: Iterable[LinearOperator], kind: type) -> list[LinearOperator]:
    flat: list[LinearOperator] = []
    for operator in operators:
        if not isinstance(operator, LinearOperator):
            raise TypeError(
                f"{kind.__name__}: expected LinearOperators, got a {type(operator).__name__}"
            )
        flat.extend(operator.operators if isinstance(operator, kind) else [operator])
    if not flat:
        raise ValueError(f"{kind.__name__}: needs at least one operator")
    return flat


class Composition(LinearOperator):
    r"""The composition :math:`A_1 A_2 \cdots A_k`: the last operator is applied first.

    Built by ``A @ B``; nested compositions are flattened. Each operator's ``in_shape`` must
    equal the ``out_shape`` of the one applied before it, which is checked here, when the
    composition is built. Its adjoint is the composition of the adjoints in reverse order,
    :math:`(A B)^H = B^H A^H`, and likewise for the transpose.

    Args:
        *operators: :math:`A_1, \dots, A_k`, in the order they are written.
    """

    def __init__(self, *operators: LinearOperator) -> None:
        flat = _flatten(operators, Composition)
        for left, right in itertools.pairwise(flat):
            if left.in_shape != right.out_shape:
                raise ValueError(
                    f"Composition: cannot compose {left.name} (in_shape {left.in_shape}) after "
                    f"{right.name} (out_shape {right.out_shape})"
                )
        complex_input, complex_output = _composed_kind(flat)
        super().__init__(
            flat[-1].in_shape,
            flat[0].out_shape,
            complex_input=complex_input,
            complex_output=complex_output,
            name="(" + " @ ".join(op.name for op in flat) + ")",
        )
        self.operators = nn.ModuleList(flat)

    def _forward_map(self, x: Tensor) -> Tensor:
        for operator in reversed(self.operators):
            x = operator._checked_map(x, adjoint=False)
        return x

    def _adjoint_map(self, y: Tensor) -> Tensor:
        for operator in self.operators:
            y = operator._checked_map(y, adjoint=True)
        return y

    @property
    def H(self) -> LinearOperator:
        return Composition(*(operator.H for operator in reversed(self.operators)))

    @property
    def T(self) -> LinearOperator:
        return Composition(*(operator.T for operator in reversed(self.operators)))


def _composed_kind(operators: Sequence[LinearOperator]) -> tuple[bool, bool]:
    """Domain and range fields of a composition, following the data from the right.

    Real operators pass complex data through; a real-to-complex operator cannot take the
    complex output of the operator before it.
    """
    applied = list(reversed(operators))
    complex_input = next((op.complex_input for op in applied if not _is_real_kind(op)), False)
    is_complex = complex_input
    previous = None
    for operator in applied:
        if operator.real_to_complex and is_complex:
            after = f"the complex output of {previous.name}" if previous else "complex input"
            raise ValueError(
                f"Composition: {operator.name} maps real to complex and cannot take {after}"
            )
        is_complex = operator.complex_output or (not operator.complex_input and is_complex)
        previous = operator
    return complex_input, is_complex


class Sum(LinearOperator):
    r"""The sum :math:`A_1 + \dots + A_k` of operators with equal shapes.

    Built by ``A + B`` and ``A - B``; nested sums are flattened. Its adjoint is the sum of the
    adjoints.

    Args:
        *operators: the terms.
    """

    def __init__(self, *operators: LinearOperator) -> None:
        flat = _flatten(operators, Sum)
        first = flat[0]
        for term in flat[1:]:
            if (term.in_shape, term.out_shape) != (first.in_shape, first.out_shape):
                raise ValueError(
                    f"Sum: cannot add {term.name} (in_shape {term.in_shape}, out_shape "
                    f"{term.out_shape}) to {first.name} (in_shape {first.in_shape}, out_shape "
                    f"{first.out_shape})"
                )
        complex_input = any(op.complex_input for op in flat)
        if complex_input:
            for term in flat:
                if term.real_to_complex:
                    raise ValueError(
                        f"Sum: {term.name} maps real to complex and cannot be added to an "
                        "operator with a complex domain"
                    )
        super().__init__(
            first.in_shape,
            first.out_shape,
            complex_input=complex_input,
            complex_output=any(op.complex_output for op in flat),
            name="(" + " + ".join(op.name for op in flat) + ")",
        )
        self.operators = nn.ModuleList(flat)

    def _forward_map(self, x: Tensor) -> Tensor:
        terms = [operator._checked_map(x, adjoint=False) for operator in self.operators]
        return sum(terms[1:], start=terms[0])

    def _adjoint_map(self, y: Tensor) -> Tensor:
        terms = [operator._checked_map(y, adjoint=True) for operator in self.operators]
        return sum(terms[1:], start=terms[0])

    @property
    def H(self) -> LinearOperator:
        return Sum(*(operator.H for operator in self.operators))

    @property
    def T(self) -> LinearOperator:
        return Sum(*(operator.T for operator in self.operators))


class Scaled(LinearOperator):
    r"""A scaled operator :math:`\alpha A`, for a real or complex number :math:`\alpha`.

    Built by ``alpha * A``, ``A * alpha``, ``A / alpha`` and ``-A``. The adjoint applies
    :math:`A^H` to :math:`\bar{\alpha} y`. A complex :math:`\alpha` makes a real operator
    complex; it is refused for a complex-to-real operator, whose range cannot hold it.

    Args:
        scale: :math:`\alpha`, an int, float or complex.
        operator: :math:`A`.
    """

    def __init__(self, scale: numbers.Number, operator: LinearOperator) -> None:
        if not isinstance(scale, numbers.Number) or isinstance(scale, bool):
            raise TypeError(f"Scaled: scale must be a number, got {type(scale).__name__}")
        if not isinstance(operator, LinearOperator):
            raise TypeError(f"Scaled: expected a LinearOperator, got {type(operator).__name__}")
        if isinstance(operator, Scaled):
            scale, operator = scale * operator.scale, operator.operator
        scale = complex(scale) if isinstance(scale, complex) else float(scale)
        if isinstance(scale, complex) and scale.imag == 0:
            scale = scale.real
        is_complex = isinstance(scale, complex)
        if is_complex and operator.complex_input and not operator.complex_output:
            raise ValueError(
                f"Scaled: cannot scale {operator.name}, which maps complex to real, by the "
                f"complex number {scale}; scale its input instead"
            )
        super().__init__(
            operator.in_shape,
            operator.out_shape,
            complex_input=operator.complex_input or (is_complex and not operator.complex_output),
            complex_output=operator.complex_output or is_complex,
            name=f"{scale:g} * {operator.name}",
        )
        self.scale: float | complex = scale
        self.operator = operator

    def _forward_map(self, x: Tensor) -> Tensor:
        return self.scale * self.operator._checked_map(x, adjoint=False)

    def _adjoint_map(self, y: Tensor) -> Tensor:
        return self.operator._checked_map(self.scale.conjugate() * y, adjoint=True)

    @property
    def _structured(self) -> bool:
        """Whether the adjoint and transpose can be written as scaled operators."""
        return not (isinstance(self.scale, complex) and self.operator.real_to_complex)

    @property
    def H(self) -> LinearOperator:
        if not self._structured:
            return Adjoint(self)
        return Scaled(self.scale.conjugate(), self.operator.H)

    @property
    def T(self) -> LinearOperator:
        if not self._structured:
            return Transpose(self)
        return Scaled(self.scale, self.operator.T)
