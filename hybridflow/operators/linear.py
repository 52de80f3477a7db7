"""``LinearOperator``: a linear map with a hand-written adjoint, applied as one autograd node."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from hybridflow.operators.validation import Shape, as_shape, check_batch, check_result_shape

if TYPE_CHECKING:
    from hybridflow.operators.algebra import Scaled, Sum

__all__ = ["LinearFunction", "LinearOperator"]

# Positions of LinearFunction's inputs: (operator, adjoint, x).
_X = 2


class LinearOperator(nn.Module):
    r"""Base class of linear operators :math:`A: \mathbb{F}^{n} \to \mathbb{F}^{m}` with a
    hand-written adjoint :math:`A^H`.

    Applying the operator, ``A(x)`` or ``A @ x``, is an ordinary differentiable node: forward
    computes :math:`A x` and backward computes :math:`A^H \bar{y}` from the output gradient
    :math:`\bar{y}`. Nothing is kept for backward. Backward is itself an application of the
    operator, so double backward works (``create_graph=True``), and forward-mode AD
    (``torch.func.jvp``) applies :math:`A` to the tangent.

    Contract for subclasses: write :meth:`_forward_map` and :meth:`_adjoint_map`, two raw maps
    of a batch (no autograd, no validation, inputs never mutated), and pass ``in_shape`` and
    ``out_shape`` to ``__init__``. Everything else (validation, autograd, adjoints,
    transposes, composition, sums, scaling) comes from this class. Operator data (kernels,
    masks, matrices) are buffers, so ``.to(device)`` moves them; they are constants, and an
    operator with trainable parameters is refused at call time because a hand-written adjoint
    gives the gradient of the input only.

    Shapes: ``in_shape`` and ``out_shape`` are per sample. ``A(x)`` takes ``x`` of shape
    ``(B, *in_shape)`` and returns ``(B, *out_shape)``; ``A.adjoint(y)`` goes back. A tensor of
    any other shape raises ``ValueError`` at call time with the expected and received shapes.

    Real and complex: ``complex_input`` and ``complex_output`` say which fields the domain and
    range are over. Four kinds follow:

    * real (``False, False``): a real matrix. It also acts on complex tensors, on their real
      and imaginary parts alike.
    * complex (``True, True``): a complex matrix. A real input is treated as complex; its
      gradient is the real part of :math:`A^H \bar{y}`.
    * real to complex (``False, True``), e.g. the Fourier transform of a real image: a complex
      input is refused, and the adjoint returns :math:`\mathrm{Re}(A^H y)`, which is the
      adjoint for the real inner product :math:`\langle u, v \rangle = \mathrm{Re}\sum
      \bar{u} v` that gradients use.
    * complex to real (``True, False``): the adjoint of the previous kind.

    ``A.H`` is the adjoint (conjugate transpose). ``A.T`` is the transpose without
    conjugation, :math:`A^T y = \overline{A^H \bar{y}}`, as ``.T`` of a NumPy array or ``.mT``
    of a tensor; for a real operator it is the adjoint. Both return operators that share
    ``A``'s data; ``A.H.H`` and ``A.T.T`` are ``A`` itself for a basic operator and an equal
    rebuilt one for a composite. Operators compose with ``A @ B`` (apply ``B`` first), add
    with ``A + B`` and ``A - B``, and scale with ``2.0 * A``; the adjoint of a composition is
    the composition of the adjoints in reverse order.

    Args:
        in_shape: per-sample shape of the input (domain), e.g. ``(1, 32, 32)``.
        out_shape: per-sample shape of the output (range).
        complex_input: whether the domain is complex (see above).
        complex_output: whether the range is complex.
        name: how error messages call the operator; the class name by default.

    Example:
        >>> import torch
        >>> from hybridflow.operators import MatrixOperator
        >>> A = MatrixOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]]))
        >>> A.in_shape, A.out_shape
        ((2,), (3,))
        >>> x = torch.tensor([[1.0, 1.0]], requires_grad=True)
        >>> (A @ x).sum().backward()  # the gradient is A^T applied to ones
        >>> x.grad
        tensor([[4., 3.]])
        >>> (2.0 * A.T @ A).in_shape
        (2,)
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        *,
        complex_input: bool = False,
        complex_output: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name if name is not None else type(self).__name__
        self.in_shape: Shape = as_shape(in_shape, self.name, "in_shape")
        self.out_shape: Shape = as_shape(out_shape, self.name, "out_shape")
        self.complex_input = bool(complex_input)
        self.complex_output = bool(complex_output)

    # ----------------------------------------------------------------- the subclass contract

    def _forward_map(self, x: Tensor) -> Tensor:
        """Compute :math:`A x` for a batch ``x`` of shape ``(B, *in_shape)``."""
        raise NotImplementedError(f"{self.name} does not implement _forward_map")

    def _adjoint_map(self, y: Tensor) -> Tensor:
        """Compute :math:`A^H y` for a batch ``y`` of shape ``(B, *out_shape)``."""
        raise NotImplementedError(f"{self.name} does not implement _adjoint_map")

    # ------------------------------------------------------------------------ applying it

    @property
    def real_to_complex(self) -> bool:
        """Whether the domain is real and the range complex (complex inputs are refused)."""
        return not self.complex_input and self.complex_output

    def _checked_map(self, x: Tensor, adjoint: bool) -> Tensor:
        """Run one raw map and check its result's shape; used by autograd and composites.

        Enforces the real-to-complex rules: a complex input to the forward map is refused,
        and the adjoint's result is projected on the real domain.
        """
        if adjoint:
            result = self._adjoint_map(x)
            expected, what = (x.shape[0], *self.in_shape), "adjoint"
        else:
            if self.real_to_complex and x.is_complex():
                raise TypeError(
                    f"{self.name}: maps real inputs to complex outputs but got a complex input "
                    f"({x.dtype}); pass a real tensor"
                )
            result = self._forward_map(x)
            expected, what = (x.shape[0], *self.out_shape), "forward"
        result = check_result_shape(result, expected, self.name, what)
        if adjoint and self.real_to_complex and result.is_complex():
            result = result.real
        return result

    def _check_constant(self) -> None:
        trainable = [n for n, p in self.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(
                f"{self.name}: has trainable parameters {trainable}, but a hand-written adjoint "
                "gives the gradient of the input only; register operator data as buffers (or "
                "call requires_grad_(False)), or use an autograd module for learned maps"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the operator, :math:`y = A x`, differentiably.

        Args:
            x: a batch of shape ``(B, *in_shape)``, floating or complex.

        Returns:
            ``(B, *out_shape)``.
        """
        check_batch(x, self.in_shape, self.name, "input")
        self._check_constant()
        return LinearFunction.apply(self, False, x)

    def adjoint(self, y: Tensor) -> Tensor:
        """Apply the adjoint, :math:`x = A^H y`, differentiably (the same as ``A.H(y)``).

        Args:
            y: a batch of shape ``(B, *out_shape)``.

        Returns:
            ``(B, *in_shape)``.
        """
        check_batch(y, self.out_shape, self.name, "adjoint input")
        self._check_constant()
        return LinearFunction.apply(self, True, y)

    # ------------------------------------------------------------------------ the algebra

    @property
    def H(self) -> LinearOperator:
        """The adjoint (conjugate transpose) :math:`A^H`, as an operator."""
        from hybridflow.operators.algebra import Adjoint

        return Adjoint(self)

    @property
    def T(self) -> LinearOperator:
        """The transpose :math:`A^T` (no conjugation); the adjoint for a real operator."""
        if not (self.complex_input or self.complex_output):
            return self.H
        from hybridflow.operators.algebra import Transpose

        return Transpose(self)

    def __matmul__(self, other: object) -> Any:
        """``A @ B`` composes (apply ``B`` first); ``A @ x`` applies ``A`` to a tensor."""
        if isinstance(other, LinearOperator):
            from hybridflow.operators.algebra import Composition

            return Composition(self, other)
        if isinstance(other, Tensor):
            return self(other)
        return NotImplemented

    def __add__(self, other: object) -> Sum:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        from hybridflow.operators.algebra import Sum

        return Sum(self, other)

    def __sub__(self, other: object) -> Sum:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return self + (-1.0) * other

    def __neg__(self) -> Scaled:
        return (-1.0) * self

    def __mul__(self, scale: object) -> Scaled:
        if not isinstance(scale, numbers.Number) or isinstance(scale, bool):
            return NotImplemented
        from hybridflow.operators.algebra import Scaled

        return Scaled(scale, self)

    __rmul__ = __mul__

    def __truediv__(self, scale: object) -> Scaled:
        if not isinstance(scale, numbers.Number) or isinstance(scale, bool):
            return NotImplemented
        if scale == 0:
            raise ZeroDivisionError(f"{self.name}: division of an operator by zero")
        return self * (1 / scale)

    def extra_repr(self) -> str:
        kinds = {(False, False): "real", (True, True): "complex"}
        kind = kinds.get((self.complex_input, self.complex_output))
        kind = kind or ("real -> complex" if self.real_to_complex else "complex -> real")
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}, {kind}"


class LinearFunction(torch.autograd.Function):
    r"""Applies a :class:`LinearOperator` (``adjoint=False``) or its adjoint (``True``).

    Keeps nothing for backward: the gradient of the input is the other map applied to the
    output gradient, run through this same Function, so it is differentiable again (double
    backward). For a real input, the real part of that gradient is returned. Forward-mode AD
    applies the same map to the tangent, and ``torch.func.vmap`` folds the mapped dimension
    into the batch, so ``torch.func.jacrev``/``hessian`` work too.
    """

    @staticmethod
    def forward(operator: LinearOperator, adjoint: bool, x: Tensor) -> Tensor:
        result = operator._checked_map(x, adjoint)
        return result.clone() if result is x else result  # autograd needs a fresh output

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        operator, adjoint, x = inputs
        ctx.operator = operator
        ctx.adjoint = adjoint
        ctx.real_input = not x.is_complex()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        if not ctx.needs_input_grad[_X]:
            return None, None, None
        grad = LinearFunction.apply(ctx.operator, not ctx.adjoint, grad_output)
        if ctx.real_input and grad.is_complex():
            grad = grad.real
        return None, None, grad

    @staticmethod
    def jvp(ctx: Any, _operator: None, _adjoint: None, tangent: Tensor) -> Tensor:
        return ctx.operator._checked_map(tangent, ctx.adjoint)

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[Any, ...],
        operator: LinearOperator,
        adjoint: bool,
        x: Tensor,
    ) -> tuple[Tensor, int | None]:
        """``torch.func.vmap`` rule: the mapped dimension joins the batch dimension."""
        dim = in_dims[_X]
        if dim is None:
            return LinearFunction.apply(operator, adjoint, x), None
        x = x.movedim(dim, 0)
        folded = LinearFunction.apply(operator, adjoint, x.flatten(0, 1))
        return folded.unflatten(0, x.shape[:2]), 0
