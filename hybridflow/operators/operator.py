"""``Operator``: a function with a hand-written VJP (and optional JVP) as one autograd node."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch
from torch import Tensor, nn

from hybridflow.operators.bridge import (
    Backend,
    check_backend,
    check_transfer,
    from_numpy,
    to_numpy,
)
from hybridflow.operators.validation import (
    Shape,
    as_shape,
    check_batch,
    check_keywords,
    check_result_shape,
)

__all__ = ["Keep", "Operator", "OperatorFunction", "operator"]

Keep = Literal["inputs", "output", "both", "nothing"]
"""What an :class:`Operator` keeps for its VJP (and JVP): its inputs, its output, both
(inputs first, then the output) or nothing (linear maps need nothing)."""


class _Meta(NamedTuple):
    """What backward needs to know about a tensor that it did not keep."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


def _meta(tensor: Tensor) -> _Meta:
    return _Meta(tuple(tensor.shape), tensor.dtype, tensor.device)


class Operator(nn.Module):
    r"""A differentiable function :math:`y = F(x_1, \dots, x_k)` with a hand-written
    vector-jacobian product (VJP), the analogue of a ChainRules ``rrule``.

    Calling the operator, ``F(x)`` or ``F(x, m)``, is an ordinary node of the autograd graph:
    forward runs ``forward`` without autograd, and backward runs ``vjp`` on the output
    gradient. Only what ``keep`` names is saved for backward (with ``ctx.save_for_backward``):

    * ``"inputs"``: ``vjp(grad_output, *inputs)``,
    * ``"output"``: ``vjp(grad_output, output)`` (e.g. :math:`\exp`, whose derivative is
      its output),
    * ``"both"``: ``vjp(grad_output, *inputs, output)``,
    * ``"nothing"``: ``vjp(grad_output)`` (linear maps; see also :class:`LinearOperator`).

    ``vjp`` returns :math:`\bar{x}_i = (\partial F / \partial x_i)^H \bar{y}` for every input:
    one tensor (or array) for one input, a tuple of ``k`` for ``k`` inputs, with ``None`` for
    an input that gets no gradient. Each gradient must have its input's shape, else a
    ``ValueError`` names the operator; it is cast to the input's dtype, and a complex gradient
    of a real input is reduced to its real part (the gradient with respect to that real
    input). An optional ``jvp(*tangents, *kept)`` gives forward-mode AD (``torch.func.jvp``);
    it receives one tangent per input (zeros where an input has none) and returns the output
    tangent.

    Double backward (``create_graph=True``, Hessian-vector products, gradient penalties):
    with ``differentiable_vjp=True`` (the default for ``backend="torch"``) the VJP runs under
    autograd when a graph of the gradient is asked for, so second derivatives are exact as
    long as ``vjp`` is written with differentiable torch operations. With
    ``differentiable_vjp=False`` (always for NumPy) the gradient it returns raises a
    ``RuntimeError`` naming the operator if anything tries to differentiate it, instead of
    silently treating it as a constant.

    Batches: the functions receive whole batches (batch dimension first) and must handle
    them; declare ``in_shape``/``out_shape`` (per sample, of the first input and of the
    output) to have shapes checked at call time with the expected and received shapes.

    NumPy/SciPy: with ``backend="numpy"`` the functions take and return NumPy arrays; the
    conversions are done here, and results come back on the first input's device and in its
    precision (float32 stays float32). A tensor on a GPU is refused with a ``TypeError``
    unless ``allow_device_transfer=True``, which copies to the CPU and back on every call.
    The arrays may share memory with the tensors: functions must not write into their
    arguments.

    Args:
        forward: :math:`F`, called as ``forward(*inputs)``, returning one tensor (or array).
        vjp: the hand-written VJP, called as described above.
        jvp: the optional hand-written JVP.
        keep: what backward needs, one of :data:`Keep`.
        in_shape: optional per-sample shape of the first input.
        out_shape: optional per-sample shape of the output.
        backend: ``"torch"`` or ``"numpy"``.
        allow_device_transfer: for ``backend="numpy"``, accept tensors on a GPU by copying.
        differentiable_vjp: whether ``vjp`` may be differentiated by autograd (double
            backward); ``True`` for ``backend="torch"`` and ``False`` for ``"numpy"`` by
            default, and never ``True`` for NumPy.
        name: how error messages call the operator; the forward function's name by default.

    Example:
        >>> import torch
        >>> from hybridflow.operators import Operator
        >>> square = Operator(lambda x: x**2, lambda g, x: 2 * x * g, keep="inputs", name="sq")
        >>> x = torch.tensor([[1.0, 3.0]], requires_grad=True)
        >>> square(x).sum().backward()
        >>> x.grad
        tensor([[2., 6.]])

    References:
        Orozco et al., "InvertibleNetworks.jl: A Julia package for scalable normalizing
        flows", arXiv:2312.13480, 2023 (its ChainRules bridge).
    """

    def __init__(
        self,
        forward: Callable[..., Any],
        vjp: Callable[..., Any],
        *,
        jvp: Callable[..., Any] | None = None,
        keep: Keep = "inputs",
        in_shape: Sequence[int] | None = None,
        out_shape: Sequence[int] | None = None,
        backend: Backend = "torch",
        allow_device_transfer: bool = False,
        differentiable_vjp: bool | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name if name is not None else getattr(forward, "__name__", "Operator")
        for label, fn in (("forward", forward), ("vjp", vjp), ("jvp", jvp)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{self.name}: {label} must be callable, got {fn!r}")
        if keep not in get_args(Keep):
            raise ValueError(f"{self.name}: keep must be one of {get_args(Keep)}, got {keep!r}")
        self.forward_fn = forward
        self.vjp_fn = vjp
        self.jvp_fn = jvp
        self.keep: Keep = keep
        self.in_shape: Shape | None = (
            None if in_shape is None else as_shape(in_shape, self.name, "in_shape")
        )
        self.out_shape: Shape | None = (
            None if out_shape is None else as_shape(out_shape, self.name, "out_shape")
        )
        self.backend: Backend = check_backend(backend, self.name)
        self.allow_device_transfer = allow_device_transfer
        if differentiable_vjp is None:
            differentiable_vjp = backend == "torch"
        if differentiable_vjp and backend == "numpy":
            raise ValueError(
                f"{self.name}: a vjp written in NumPy cannot be differentiated by autograd; "
                "leave differentiable_vjp unset (False) for backend='numpy'"
            )
        self.differentiable_vjp = bool(differentiable_vjp)

    def extra_repr(self) -> str:
        shapes = f", in_shape={self.in_shape}, out_shape={self.out_shape}"
        return f"name={self.name!r}, keep={self.keep!r}, backend={self.backend!r}{shapes}"

    def forward(self, *inputs: Tensor) -> Tensor:
        """Apply the operator to its inputs, differentiably.

        Args:
            *inputs: one or more tensors, the first a floating or complex batch
                ``(B, *in_shape)``.

        Returns:
            The output, ``(B, *out_shape)`` when ``out_shape`` is declared.
        """
        if not inputs:
            raise TypeError(f"{self.name}: needs at least one input tensor")
        for i, tensor in enumerate(inputs):
            if not isinstance(tensor, Tensor):
                raise TypeError(
                    f"{self.name}: input {i} must be a torch.Tensor, got {type(tensor).__name__}"
                )
            if self.backend == "numpy":
                check_transfer(tensor, self.name, self.allow_device_transfer)
        first = inputs[0]
        if self.in_shape is not None:
            check_batch(first, self.in_shape, self.name, "input 0")
        elif not (first.is_floating_point() or first.is_complex()):
            raise TypeError(
                f"{self.name}: input 0 must be a floating or complex tensor, got {first.dtype}"
            )
        return OperatorFunction.apply(self, *inputs)

    # ---------------------------------------------------- the three rules, with conversions

    def _to_user(self, tensors: Sequence[Tensor]) -> list[Any]:
        if self.backend == "torch":
            return list(tensors)
        return [to_numpy(t, self.name, self.allow_device_transfer) for t in tensors]

    def _to_torch(self, value: object, meta: _Meta, what: str) -> Tensor:
        if self.backend == "numpy" and isinstance(value, np.ndarray | np.generic):
            return from_numpy(value, meta.dtype, meta.device, self.name, what)
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{self.name}: {what} returned a {type(value).__name__}, expected a "
                f"{'NumPy array' if self.backend == 'numpy' else 'torch.Tensor'}"
            )
        return value

    def _saved(self, inputs: Sequence[Tensor], output: Tensor) -> tuple[Tensor, ...]:
        return {
            "inputs": tuple(inputs),
            "output": (output,),
            "both": (*inputs, output),
            "nothing": (),
        }[self.keep]

    def _run_forward(self, inputs: Sequence[Tensor]) -> Tensor:
        output = self._to_torch(
            self.forward_fn(*self._to_user(inputs)), _meta(inputs[0]), "forward"
        )
        if self.out_shape is not None:
            expected = (inputs[0].shape[0], *self.out_shape)
            check_result_shape(output, expected, self.name, "forward")
        return output

    def _run_vjp(
        self, grad_output: Tensor, saved: Sequence[Tensor], metas: Sequence[_Meta]
    ) -> tuple[Tensor | None, ...]:
        grads = self.vjp_fn(*self._to_user([grad_output, *saved]))
        if len(metas) == 1 and not isinstance(grads, tuple | list):
            grads = (grads,)
        if not isinstance(grads, tuple | list) or len(grads) != len(metas):
            count = len(grads) if isinstance(grads, tuple | list) else 1
            raise ValueError(
                f"{self.name}: vjp returned {count} gradient(s) for {len(metas)} input(s); "
                "return one per input (None where an input gets no gradient)"
            )
        return tuple(
            None if grad is None else self._gradient(grad, meta, i)
            for i, (grad, meta) in enumerate(zip(grads, metas, strict=True))
        )

    def _gradient(self, grad: object, meta: _Meta, index: int) -> Tensor:
        what = f"vjp for input {index}"
        tensor = check_result_shape(self._to_torch(grad, meta, what), meta.shape, self.name, what)
        if tensor.is_complex() and not meta.dtype.is_complex:
            tensor = tensor.real
        return tensor.to(dtype=meta.dtype, device=meta.device)

    def _run_jvp(
        self, tangents: Sequence[Tensor | None], saved: Sequence[Tensor], metas: Sequence[_Meta]
    ) -> Tensor:
        if self.jvp_fn is None:
            raise NotImplementedError(
                f"{self.name}: forward-mode AD needs a hand-written jvp; build the Operator "
                "with jvp=..."
            )
        filled = [
            torch.zeros(m.shape, dtype=m.dtype, device=m.device) if t is None else t
            for t, m in zip(tangents, metas, strict=True)
        ]
        result = self.jvp_fn(*self._to_user([*filled, *saved]))
        return self._to_torch(result, metas[0], "jvp")


class _Undifferentiable(torch.autograd.Function):
    """Passes a gradient through; differentiating it raises an error naming the operator.

    The extra inputs are what the gradient depends on (the output gradient, the kept
    tensors): they make the result part of the graph, so a second differentiation reaches
    this node and fails loudly rather than treating the gradient as a constant.
    """

    @staticmethod
    def forward(name: str, grad: Tensor, *depends_on: Tensor) -> Tensor:
        return grad.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.name = inputs[0]

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[None, ...]:
        raise RuntimeError(
            f"{ctx.name}: cannot differentiate the gradient of this operator (double "
            "backward): its vjp is not differentiable (NumPy, or differentiable_vjp=False); "
            "write the vjp in torch with differentiable_vjp=True to get second derivatives"
        )


class OperatorFunction(torch.autograd.Function):
    """Runs an :class:`Operator`, saving only what its ``keep`` names.

    Backward runs the operator's VJP; under ``create_graph=True`` it is recorded by autograd
    (``differentiable_vjp=True``) or guarded so that differentiating it raises an error.
    """

    @staticmethod
    def forward(operator: Operator, *inputs: Tensor) -> Tensor:
        output = operator._run_forward(inputs)
        if any(output is t for t in inputs):
            output = output.clone()  # autograd needs a fresh output
        return output

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        operator, *tensors = inputs
        ctx.operator = operator
        ctx.metas = tuple(_meta(t) for t in tensors)
        ctx.output_meta = _meta(output)
        saved = operator._saved(tensors, output)
        ctx.save_for_backward(*saved)
        if operator.jvp_fn is not None:
            ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        operator: Operator = ctx.operator
        saved = ctx.saved_tensors
        if operator.differentiable_vjp:
            grads = operator._run_vjp(grad_output, saved, ctx.metas)
        else:
            with torch.no_grad():
                grads = operator._run_vjp(grad_output, saved, ctx.metas)
            depends_on = [t for t in (grad_output, *saved) if t.requires_grad]
            if torch.is_grad_enabled() and depends_on:
                grads = tuple(
                    None if g is None else _Undifferentiable.apply(operator.name, g, *depends_on)
                    for g in grads
                )
        needed = ctx.needs_input_grad[1:]
        return (None, *(g if need else None for g, need in zip(grads, needed, strict=True)))

    @staticmethod
    def jvp(ctx: Any, _operator: None, *tangents: Tensor | None) -> Tensor:
        operator: Operator = ctx.operator
        saved = ctx.saved_tensors if operator.jvp_fn is not None else ()
        result = operator._run_jvp(tangents, saved, ctx.metas)
        expected = ctx.output_meta
        result = check_result_shape(result, expected.shape, operator.name, "jvp")
        if result.is_complex() and not expected.dtype.is_complex:
            raise TypeError(f"{operator.name}: jvp returned a complex tangent for a real output")
        return result.to(dtype=expected.dtype, device=expected.device)


def operator(**options: Any) -> Callable[[Callable[..., Any]], Operator]:
    """Decorator form of :class:`Operator`: ``@operator(vjp=..., **options)`` on a forward
    function builds ``Operator(forward, vjp=..., **options)``. The keywords are those of
    :class:`Operator` (one list, one set of defaults), checked when the decorator is made.

    Example:
        >>> import torch
        >>> from hybridflow.operators import operator
        >>> @operator(vjp=lambda g, y: g * y, keep="output")
        ... def exp(x):
        ...     return torch.exp(x)
        >>> x = torch.zeros(1, 2, requires_grad=True)
        >>> exp(x).sum().backward()
        >>> x.grad
        tensor([[1., 1.]])
    """
    check_keywords(Operator, options, "operator")
    return lambda forward: Operator(forward, **options)
