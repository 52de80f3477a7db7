"""Operators with hand-written adjoints and VJPs: adjoints, autograd, NumPy bridge, errors."""

from __future__ import annotations

import copy
import pathlib
import re
import runpy
import sys
import types
from collections.abc import Callable

import numpy as np
import pytest
import scipy.signal
import scipy.sparse
import torch
from torch import Tensor, nn

from hybridflow import Chain
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1
from hybridflow.operators import (
    Adjoint,
    Composition,
    Convolution,
    FunctionLinearOperator,
    Identity,
    LinearOperator,
    Mask,
    MaskedFourier,
    MatrixOperator,
    Operator,
    Scaled,
    Sum,
    Transpose,
    linear_operator,
    operator,
)
from hybridflow.testing.checks import check_taylor
from hybridflow.testing.operators import adjoint_test, check_adjoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
F64 = torch.float64


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, dtype: torch.dtype = F64, seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=_generator(seed), dtype=dtype)


def _mask(*shape: int, seed: int = 0, fraction: float = 0.4) -> Tensor:
    return torch.rand(shape, generator=_generator(seed)) < fraction


# ------------------------------------------------------------------------ the operator zoo


def _conv2d(boundary: str = "zero") -> Convolution:
    return Convolution(torch.rand(3, 4, generator=_generator(1)), (2, 9, 8), boundary=boundary)


def _mri(**kwargs: object) -> MaskedFourier:
    return MaskedFourier(_mask(8, 6, seed=2), **kwargs)


def _dense(m: int = 5, n: int = 7, dtype: torch.dtype = F64, seed: int = 3) -> MatrixOperator:
    return MatrixOperator(_randn(m, n, dtype=dtype, seed=seed))


BUILTINS: dict[str, Callable[[], LinearOperator]] = {
    "conv1d-circular": lambda: Convolution(torch.rand(4, generator=_generator(4)), (10,)),
    "conv1d-zero-even": lambda: Convolution(
        torch.rand(4, generator=_generator(12)), (3, 10), boundary="zero"
    ),
    "conv2d-circular": lambda: _conv2d("circular"),
    "conv2d-zero": lambda: _conv2d("zero"),
    "conv3d-zero": lambda: Convolution(
        torch.rand(2, 3, 2, generator=_generator(13)), (5, 6, 4), boundary="zero"
    ),
    "mri-real-samples": lambda: _mri(),
    "mri-real-grid-centered": lambda: _mri(subsample=False, centered=True),
    "mri-complex-coils": lambda: MaskedFourier(
        _mask(8, 6, seed=2), (3, 8, 6), real_input=False, centered=True
    ),
    "mask-weights": lambda: Mask(torch.rand(6, 5, generator=_generator(5)), (2, 6, 5)),
    "mask-subsample": lambda: Mask(_mask(6, 5, seed=6), (2, 6, 5), subsample=True),
    "matrix-dense": lambda: _dense(),
    "matrix-dense-complex": lambda: _dense(dtype=torch.complex128),
    "matrix-dense-images": lambda: MatrixOperator(_randn(6, 12), in_shape=(3, 4), out_shape=(2, 3)),
    "matrix-torch-sparse": lambda: MatrixOperator(_randn(6, 9).relu().to_sparse()),
    "matrix-scipy-sparse": lambda: MatrixOperator(
        scipy.sparse.random(6, 9, density=0.3, random_state=0, format="csr")
    ),
    "matrix-scipy-sparse-complex": lambda: MatrixOperator(
        scipy.sparse.random(6, 9, density=0.3, random_state=1, format="csc") * (1 - 2j)
    ),
    "identity": lambda: Identity((3, 4)),
}

ALGEBRA: dict[str, Callable[[], LinearOperator]] = {
    "composition": lambda: MaskedFourier(_mask(9, 8), (2, 9, 8)) @ _conv2d(),
    "composition-adjoint": lambda: (MaskedFourier(_mask(9, 8), (2, 9, 8)) @ _conv2d()).H,
    "composition-transpose": lambda: (MaskedFourier(_mask(9, 8), (2, 9, 8)) @ _conv2d()).T,
    "normal-operator": lambda: _mri().H @ _mri(),
    "tikhonov": lambda: _conv2d().H @ _conv2d() + 0.5 * Identity((2, 9, 8)),
    "sum-and-difference": lambda: 2.0 * _conv2d() - _conv2d("circular") + Identity((2, 9, 8)),
    "sum-real-to-complex": lambda: _mri(subsample=False) + Mask(_mask(8, 6, seed=2)),
    "scaled-complex-real": lambda: (1 - 2j) * _conv2d(),
    "scaled-complex-mri": lambda: 3j * _mri(),
    "scaled-complex-mri-adjoint": lambda: (3j * _mri()).H,
    "scaled-complex-mri-transpose": lambda: (3j * _mri()).T,
    "mri-adjoint": lambda: _mri().H,
    "mri-transpose": lambda: _mri().T,
    "complex-matrix-transpose": lambda: _dense(dtype=torch.complex128).T,
    "divided-negated": lambda: -_dense() / 4,
    "numpy-function": lambda: FunctionLinearOperator(
        lambda x: x @ np.arange(12.0).reshape(4, 3).T,
        lambda y: y @ np.arange(12.0).reshape(4, 3),
        in_shape=(3,),
        out_shape=(4,),
        backend="numpy",
    ),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", [*BUILTINS, *ALGEBRA])
def test_adjoint(name: str, dtype: torch.dtype) -> None:
    op = {**BUILTINS, **ALGEBRA}[name]()
    error = check_adjoint(op, dtype=dtype, batch=3)
    assert error < (1e-12 if dtype == torch.float64 else 1e-6)


def test_adjoint_test_catches_wrong_adjoints() -> None:
    matrix = _randn(4, 3, dtype=torch.complex128)
    no_conjugate = FunctionLinearOperator(
        lambda x: x @ matrix.T,
        lambda y: y @ matrix,
        (3,),
        (4,),
        complex_input=True,
        complex_output=True,
    )
    assert adjoint_test(no_conjugate) > 0.1
    with pytest.raises(AssertionError, match="adjoint test failed"):
        check_adjoint(no_conjugate)
    blur = Convolution(torch.tensor([0.1, 0.2, 0.7]), (12,), boundary="zero")
    unflipped = FunctionLinearOperator(blur._forward_map, blur._forward_map, (12,), (12,))
    assert adjoint_test(unflipped) > 1e-2
    # A right adjoint passes with inputs given by the caller, in float32.
    x, y = _randn(2, 12, dtype=torch.float32), _randn(2, 12, dtype=torch.float32, seed=1)
    assert check_adjoint(blur, x, y) < 1e-6


# ---------------------------------------------------------------- values of the built-ins


@pytest.mark.parametrize("kernel_shape", [(3,), (4,), (3, 3), (2, 5)])
def test_zero_boundary_convolution_is_scipy_same(kernel_shape: tuple[int, ...]) -> None:
    kernel = _randn(*kernel_shape, seed=7)
    spatial = (11,) if len(kernel_shape) == 1 else (7, 9)
    x = _randn(2, *spatial, seed=8)
    y = Convolution(kernel, spatial, boundary="zero")(x)
    for b in range(2):
        expected = scipy.signal.convolve(x[b].numpy(), kernel.numpy(), mode="same")
        np.testing.assert_allclose(y[b].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("size", [3, 4])
def test_circular_convolution_is_periodic_sum(size: int) -> None:
    kernel = _randn(size, seed=9)
    x = _randn(2, 10, seed=10)
    centre = (size - 1) // 2
    # y_i = sum_j h_j x_{(i + c - j) mod N}; torch.roll(x, s)[i] = x[i - s].
    expected = sum(kernel[j] * torch.roll(x, j - centre, dims=-1) for j in range(size))
    torch.testing.assert_close(Convolution(kernel, (10,))(x), expected)


@pytest.mark.parametrize("centered", [False, True])
def test_masked_fourier_values(centered: bool) -> None:
    mask = _mask(5, 6, seed=11)
    x = _randn(2, 5, 6, seed=12)
    kspace = torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)) if centered else x, norm="ortho")
    kspace = torch.fft.fftshift(kspace, dim=(-2, -1)) if centered else kspace
    torch.testing.assert_close(MaskedFourier(mask, centered=centered)(x), kspace[:, mask])
    grid = MaskedFourier(mask, subsample=False, centered=centered)(x)
    torch.testing.assert_close(grid, kspace * mask)
    # Orthonormal: on complex images, A A^H is the identity on the samples.
    op = MaskedFourier(mask, real_input=False, centered=centered)
    samples = _randn(2, int(mask.sum()), dtype=torch.complex128, seed=13)
    torch.testing.assert_close(op(op.adjoint(samples)), samples)
    # For real images the adjoint is real: the real part of F^H S^T y.
    back = MaskedFourier(mask, centered=centered).adjoint(samples)
    assert back.dtype == F64
    torch.testing.assert_close(back, op.adjoint(samples).real)


def test_masked_fourier_gradient_matches_torch_fft_autograd() -> None:
    mask = _mask(6, 7, seed=14)
    observed = _randn(3, int(mask.sum()), dtype=torch.complex128, seed=15)
    weight = _randn(3, int(mask.sum()), dtype=torch.complex128, seed=16)

    def loss(kspace: Tensor) -> Tensor:
        return (kspace - observed).abs().square().sum() + (weight * kspace).real.sum()

    x = _randn(3, 6, 7, seed=17).requires_grad_(True)
    (ours,) = torch.autograd.grad(loss(MaskedFourier(mask)(x)), x)
    (reference,) = torch.autograd.grad(loss(torch.fft.fft2(x, norm="ortho")[:, mask]), x)
    assert ours.dtype == F64
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_mask_values() -> None:
    mask = torch.tensor([[True, False, True], [False, True, False]])
    x = torch.arange(12.0).reshape(2, 1, 2, 3)
    torch.testing.assert_close(Mask(mask, (1, 2, 3))(x), x * mask)
    picked = Mask(mask, (1, 2, 3), subsample=True)
    torch.testing.assert_close(picked(x), torch.tensor([[[0.0, 2.0, 4.0]], [[6.0, 8.0, 10.0]]]))
    torch.testing.assert_close(picked.adjoint(picked(x)), x * mask)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_matrix_operator_storages_agree() -> None:
    dense = _randn(6, 9, seed=18).relu()
    variants = [
        MatrixOperator(dense),
        MatrixOperator(dense.numpy()),
        MatrixOperator(dense.to_sparse()),
        MatrixOperator(dense.to_sparse_csr()),
        MatrixOperator(scipy.sparse.csr_matrix(dense.numpy())),
        MatrixOperator(scipy.sparse.coo_array(dense.numpy())),
    ]
    x, y = _randn(4, 9, seed=19), _randn(4, 6, seed=20)
    for op in variants:
        torch.testing.assert_close(op(x), x @ dense.T)
        torch.testing.assert_close(op.adjoint(y), y @ dense)
        torch.testing.assert_close(op(x.float()), (x @ dense.T).float())
    images = MatrixOperator(dense, in_shape=(3, 3), out_shape=(2, 3))
    torch.testing.assert_close(images(x.reshape(4, 3, 3)), (x @ dense.T).reshape(4, 2, 3))


# ------------------------------------------------------------------------- the algebra


def test_composition_sum_scaling_values() -> None:
    a, b = _dense(5, 7, seed=21), _dense(7, 4, seed=22)
    c = _dense(5, 7, seed=23)
    x = _randn(3, 4, seed=24)
    torch.testing.assert_close((a @ b)(x), a(b(x)))
    torch.testing.assert_close(a @ b @ x, a(b(x)))
    torch.testing.assert_close(((2.0 * a - c / 2 + a * 3) @ b)(x), 5 * a(b(x)) - 0.5 * c(b(x)))
    torch.testing.assert_close((-a)(b(x)), -a(b(x)))
    d = _dense(4, 5, seed=60)
    chained = (a @ b) @ (d @ a)
    assert isinstance(chained, Composition) and len(chained.operators) == 4
    x7 = _randn(3, 7, seed=63)
    torch.testing.assert_close(chained(x7), a(b(d(a(x7)))))


def test_adjoint_of_composition_is_reversed_composition_of_adjoints() -> None:
    a, b, c = _dense(5, 7, seed=25), _dense(7, 4, seed=26), _dense(4, 3, seed=27)
    composed = a @ b @ c
    for transposed in (composed.T, composed.H):
        assert isinstance(transposed, Composition)
        parts = list(transposed.operators)
        assert [type(p) for p in parts] == [Adjoint] * 3
        assert [p.operator for p in parts] == [c, b, a]
    y = _randn(2, 5, seed=28)
    torch.testing.assert_close(composed.T(y), c.adjoint(b.adjoint(a.adjoint(y))))
    torch.testing.assert_close(composed.adjoint(y), composed.H(y))
    assert a.H.H is a and a.T.T is a
    total = (a + 2.0 * a).H
    assert isinstance(total, Sum) and all(isinstance(t, Scaled | Adjoint) for t in total.operators)


def test_transpose_of_complex_operator_has_no_conjugate() -> None:
    matrix = _randn(5, 3, dtype=torch.complex128, seed=29)
    op = MatrixOperator(matrix)
    y = _randn(2, 5, dtype=torch.complex128, seed=30)
    assert isinstance(op.T, Transpose) and op.T.T is op
    torch.testing.assert_close(op.T(y), y @ matrix)  # A^T y, per sample
    torch.testing.assert_close(op.H(y), y @ matrix.conj())  # A^H y
    real = _dense()
    assert isinstance(real.T, Adjoint)  # for a real operator the transpose is the adjoint
    # The transpose of a real-to-complex operator is complex to real, consistent with A^T.
    mri = _mri()
    mri_t = mri.T
    assert (mri_t.complex_input, mri_t.complex_output) == (True, False)
    k = _randn(2, *mri.out_shape, dtype=torch.complex128, seed=31)
    torch.testing.assert_close(mri_t(k), mri.adjoint(k.conj()))


def test_algebra_shape_and_kind_errors_at_build_time() -> None:
    a, b = _dense(5, 7), _dense(6, 4)
    with pytest.raises(ValueError, match=r"in_shape \(7,\).*out_shape \(6,\)"):
        a @ b
    with pytest.raises(ValueError, match="cannot add"):
        a + b
    complex_op = MatrixOperator(_randn(48, 48, dtype=torch.complex128), (8, 6), (8, 6))
    with pytest.raises(ValueError, match="maps real to complex"):
        _mri() @ complex_op
    with pytest.raises(ValueError, match="maps real to complex"):
        MaskedFourier(_mask(8, 6, seed=2), subsample=False) + complex_op
    with pytest.raises(ValueError, match="complex to real"):
        2j * _mri().H
    with pytest.raises(TypeError):
        a * torch.ones(2)


# ------------------------------------------------------------ autograd through LinearOperator


def _saved_tensor_count(fn: Callable[[], Tensor]) -> int:
    count = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal count
        count += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return count


@pytest.mark.parametrize("name", ["conv2d-zero", "mri-real-samples", "matrix-dense-complex"])
def test_linear_operator_gradients(name: str) -> None:
    op = BUILTINS[name]()
    dtype = torch.complex128 if op.complex_input else F64
    x = _randn(2, *op.in_shape, dtype=dtype, seed=32).requires_grad_(True)
    assert _saved_tensor_count(lambda: op(x)) == 0  # keeps nothing for backward
    weight = _randn(2, *op.out_shape, dtype=op(x).dtype, seed=33)
    (grad,) = torch.autograd.grad((op(x).conj() * weight).real.sum(), x)
    torch.testing.assert_close(grad, op.adjoint(weight))
    torch.autograd.gradcheck(op, (x,))
    torch.autograd.gradgradcheck(op, (x,))
    # Forward mode applies the operator to the tangent.
    tangent = _randn(2, *op.in_shape, dtype=dtype, seed=34)
    _, jvp = torch.func.jvp(op, (x.detach(),), (tangent,))
    torch.testing.assert_close(jvp, op(tangent))


def test_func_transforms_on_linear_operators() -> None:
    op = Composition(Mask(_mask(9, seed=64), subsample=True), Convolution(_randn(3), (9,), "zero"))
    matrix = op(torch.eye(9, dtype=F64)).T  # columns A e_i
    x = _randn(1, 9, seed=65)
    jacobian = torch.func.jacrev(op)(x).reshape(matrix.shape)
    torch.testing.assert_close(jacobian, matrix)
    torch.testing.assert_close(torch.func.jacfwd(op)(x).reshape(matrix.shape), matrix)
    hessian = torch.func.hessian(lambda v: op(v).square().sum())(x).reshape(9, 9)
    torch.testing.assert_close(hessian, 2 * matrix.T @ matrix)
    y = _randn(2, 3, op.out_shape[0], seed=66)  # vmap over dimension 1, batch of 2 inside
    batched = torch.func.vmap(op.adjoint, in_dims=1)(y)
    looped = torch.stack([op.adjoint(y[:, k]) for k in range(3)])
    torch.testing.assert_close(batched, looped)


def test_real_input_to_complex_operator_gets_real_gradient() -> None:
    op = _dense(dtype=torch.complex128)
    x = _randn(2, 7, seed=35).requires_grad_(True)
    weight = _randn(2, 5, dtype=torch.complex128, seed=36)
    (grad,) = torch.autograd.grad((op(x).conj() * weight).real.sum(), x)
    assert grad.dtype == F64
    torch.testing.assert_close(grad, op.adjoint(weight).real)


def test_double_backward_gives_normal_operator() -> None:
    op = _conv2d()
    y = _randn(1, *op.out_shape, seed=37)
    x = _randn(1, *op.in_shape, seed=38).requires_grad_(True)
    v = _randn(1, *op.in_shape, seed=39)
    loss = 0.5 * (op(x) - y).square().sum()
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    (hvp,) = torch.autograd.grad((grad * v).sum(), x)
    torch.testing.assert_close(hvp, op.adjoint(op(v)))


def test_taylor_through_linear_operators() -> None:
    op = MaskedFourier(_mask(9, 8), (2, 9, 8)) @ _conv2d()
    observed = _randn(1, *op.out_shape, dtype=torch.complex128, seed=40)
    check_taylor(lambda x: (op(x) - observed).abs().square().sum(), _randn(1, 2, 9, 8, seed=41))


# ---------------------------------------------------------------- Operator (nonlinear VJPs)


def _sin_vjp(grad: Tensor, x: Tensor) -> Tensor:
    return grad * torch.cos(x)


@pytest.mark.parametrize(
    ("keep", "fn", "vjp", "saved"),
    [
        ("inputs", torch.sin, _sin_vjp, 1),
        ("output", torch.exp, lambda g, y: g * y, 1),
        ("both", torch.sqrt, lambda g, x, y: g / (2 * y) + 0 * x, 2),
        ("nothing", lambda x: 3 * x.flip(-1), lambda g: 3 * g.flip(-1), 0),
    ],
)
def test_operator_keeps_what_it_declares(
    keep: str, fn: Callable, vjp: Callable, saved: int
) -> None:
    op = Operator(fn, vjp, keep=keep, in_shape=(5,), out_shape=(5,))
    x = _randn(4, 5, seed=42).abs().add(0.5).requires_grad_(True)
    assert _saved_tensor_count(lambda: op(x)) == saved
    weight = _randn(4, 5, seed=43)
    (ours,) = torch.autograd.grad((op(x) * weight).sum(), x)
    (reference,) = torch.autograd.grad((fn(x) * weight).sum(), x)
    torch.testing.assert_close(ours, reference, rtol=1e-13, atol=1e-13)
    check_taylor(lambda z: (op(z) * weight).sum() + op(z).square().sum(), x)


def test_operator_with_several_inputs_and_jvp() -> None:
    # y = x * exp(m), m a shared (unbatched) model: the rrule returns one gradient per input.
    op = Operator(
        lambda x, m: x * m.exp(),
        lambda g, x, m: (g * m.exp(), (g * x * m.exp()).sum(0)),
        jvp=lambda tx, tm, x, m: (tx + x * tm) * m.exp(),
        name="modulate",
    )
    x, m = _randn(3, 4, seed=44).requires_grad_(True), _randn(4, seed=45).requires_grad_(True)
    weight = _randn(3, 4, seed=46)
    ours = torch.autograd.grad((op(x, m) * weight).sum(), (x, m))
    reference = torch.autograd.grad((x * m.exp() * weight).sum(), (x, m))
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    # Only the inputs that need a gradient get one.
    (grad_m,) = torch.autograd.grad((op(x.detach(), m) * weight).sum(), m)
    torch.testing.assert_close(grad_m, reference[1])
    # Forward mode, through torch.func and through forward_ad.
    tx, tm = _randn(3, 4, seed=47), _randn(4, seed=48)
    _, tangent = torch.func.jvp(op, (x.detach(), m.detach()), (tx, tm))
    _, expected = torch.func.jvp(lambda a, b: a * b.exp(), (x.detach(), m.detach()), (tx, tm))
    torch.testing.assert_close(tangent, expected)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x.detach(), tx)
        out = torch.autograd.forward_ad.unpack_dual(op(dual, m.detach())).tangent
    torch.testing.assert_close(out, tx * m.detach().exp())


def test_operator_without_jvp_fails_loudly() -> None:
    op = Operator(torch.sin, _sin_vjp, name="sine")
    x = _randn(2, 3, seed=49)
    with pytest.raises(NotImplementedError, match="sine: forward-mode AD needs"):
        torch.func.jvp(op, (x,), (torch.ones_like(x),))


def test_double_backward_differentiates_torch_vjps_and_refuses_the_others() -> None:
    x = _randn(2, 3, seed=61).requires_grad_(True)
    v = _randn(2, 3, seed=62)
    sine = Operator(torch.sin, _sin_vjp, name="sine")
    (grad,) = torch.autograd.grad(sine(x).sum(), x, create_graph=True)
    (hvp,) = torch.autograd.grad((grad * v).sum(), x)
    torch.testing.assert_close(hvp, -torch.sin(x.detach()) * v)
    refusing = [
        Operator(np.sin, lambda g, x: g * np.cos(x), backend="numpy", name="numpy_sine"),
        Operator(torch.sin, _sin_vjp, differentiable_vjp=False, name="frozen_sine"),
    ]
    for op in refusing:
        # The gradient itself is right; only differentiating it again is refused.
        (grad,) = torch.autograd.grad(op(x).sum() + x.square().sum(), x, create_graph=True)
        torch.testing.assert_close(grad, torch.cos(x) + 2 * x)
        with pytest.raises(RuntimeError, match=f"{op.name}: cannot differentiate the gradient"):
            torch.autograd.grad((grad * v).sum(), x)
    with pytest.raises(ValueError, match="cannot be differentiated by autograd"):
        Operator(np.sin, np.cos, backend="numpy", differentiable_vjp=True)


def test_operator_decorator() -> None:
    @operator(vjp=lambda g, x: g * 2 * x, in_shape=(3,))
    def square(x: Tensor) -> Tensor:
        return x**2

    assert isinstance(square, Operator) and square.name == "square"
    x = _randn(2, 3, seed=50).requires_grad_(True)
    (grad,) = torch.autograd.grad(square(x).sum(), x)
    torch.testing.assert_close(grad, 2 * x)

    @linear_operator(adjoint=lambda y: y.cumsum(-1), in_shape=(4,), out_shape=(4,))
    def reverse_cumsum(x: Tensor) -> Tensor:
        return x.flip(-1).cumsum(-1).flip(-1)

    assert isinstance(reverse_cumsum, FunctionLinearOperator)
    check_adjoint(reverse_cumsum)


def test_decorators_take_the_classes_keywords_and_check_them_at_once() -> None:
    @operator(vjp=lambda g, x: g, name="identity")
    def same(x: Tensor) -> Tensor:
        return x

    assert same.name == "identity"
    with pytest.raises(TypeError, match="operator: missing a required argument: 'vjp'"):
        operator(keep="output")
    with pytest.raises(TypeError, match="linear_operator: got an unexpected keyword .*'shape'"):
        linear_operator(adjoint=lambda y: y, in_shape=(3,), out_shape=(3,), shape=(3,))


# -------------------------------------------------------------------- the NumPy bridge


def _numpy_operator(matrix: np.ndarray, **kwargs: object) -> Operator:
    """F(x) = tanh(x) W^T, written in NumPy with a hand-written VJP."""

    def forward(x: np.ndarray) -> np.ndarray:
        return np.tanh(x) @ matrix.T

    def vjp(grad: np.ndarray, x: np.ndarray) -> np.ndarray:
        return (grad @ matrix) * (1 - np.tanh(x) ** 2)

    return Operator(forward, vjp, keep="inputs", backend="numpy", name="tanh_matrix", **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_operator_keeps_dtype_and_matches_torch(dtype: torch.dtype) -> None:
    matrix = np.random.default_rng(0).standard_normal((3, 5))  # float64 arrays
    op = _numpy_operator(matrix, in_shape=(5,), out_shape=(3,))
    x = _randn(4, 5, dtype=dtype, seed=51).requires_grad_(True)
    y = op(x)
    assert y.dtype == dtype and y.device == x.device
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    assert grad.dtype == dtype
    w = torch.from_numpy(matrix).to(dtype)
    (reference,) = torch.autograd.grad((torch.tanh(x) @ w.T).square().sum(), x)
    tolerance = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(grad, reference, rtol=tolerance, atol=tolerance)


def test_scipy_linear_operator_matches_matrix_operator() -> None:
    sparse = scipy.sparse.random(6, 8, density=0.4, random_state=2, format="csr")
    op = FunctionLinearOperator(
        lambda x: (sparse @ x.T).T, lambda y: (sparse.T @ y.T).T, (8,), (6,), backend="numpy"
    )
    check_adjoint(op)
    x = _randn(3, 8, seed=52).requires_grad_(True)
    (ours,) = torch.autograd.grad(op(x).square().sum(), x)
    (reference,) = torch.autograd.grad(MatrixOperator(sparse)(x).square().sum(), x)
    torch.testing.assert_close(ours, reference, rtol=1e-13, atol=1e-13)


def test_numpy_operator_in_a_chain_with_an_autograd_module_trains_like_torch() -> None:
    """NumPy rule + reconstructing chain + nn.Linear: gradients equal pure torch to 1e-10."""
    torch.manual_seed(0)
    features, size, outputs = 4, 6, 5
    matrix = np.random.default_rng(1).standard_normal((outputs, size)) / 2
    embed = nn.Linear(features, size).double()
    flow = Chain(
        ActNorm(size), InvConv1x1(size, seed=0), AffineCoupling(size, hidden=16), mode="invert"
    ).double()
    u = _randn(16, features, seed=53)
    target = _randn(16, outputs, seed=54)
    with torch.no_grad():
        flow(embed(u))  # ActNorm's data-dependent initialisation, before copying
    numpy_op = _numpy_operator(matrix, in_shape=(size,), out_shape=(outputs,))
    w = torch.from_numpy(matrix)

    def torch_op(x: Tensor) -> Tensor:
        return torch.tanh(x) @ w.T

    reference_embed, reference_flow = copy.deepcopy(embed), copy.deepcopy(flow)
    reference_flow.mode = "store"
    models = {
        "numpy+invert": (embed, flow, numpy_op),
        "torch+store": (reference_embed, reference_flow, torch_op),
    }

    def loss_of(embedding: nn.Module, chain: Chain, op: Callable, inputs: Tensor) -> Tensor:
        x, logdet = chain(embedding(inputs))
        return 0.5 * (op(x) - target).square().sum(dim=1).mean() - 0.1 * logdet.mean()

    grads = {}
    for key, (embedding, chain, op) in models.items():
        inputs = u.clone().requires_grad_(True)
        params = [inputs, *embedding.parameters(), *chain.parameters()]
        grads[key] = torch.autograd.grad(loss_of(embedding, chain, op, inputs), params)
    for ours, reference in zip(grads["numpy+invert"], grads["torch+store"], strict=True):
        assert float((ours - reference).norm()) <= 1e-10 * max(float(reference.norm()), 1.0)

    histories: dict[str, list[float]] = {}
    for key, (embedding, chain, op) in models.items():
        params = [*embedding.parameters(), *chain.parameters()]
        optimizer = torch.optim.Adam(params, lr=1e-2)
        histories[key] = []
        for _ in range(15):
            loss = loss_of(embedding, chain, op, u)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            histories[key].append(float(loss.detach()))
    ours, reference = histories["numpy+invert"], histories["torch+store"]
    assert ours[-1] < 0.8 * ours[0]
    np.testing.assert_allclose(ours, reference, rtol=1e-9)
    for a, b in zip(embed.parameters(), reference_embed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_numpy_operator_refuses_device_tensors_unless_allowed() -> None:
    matrix = np.eye(3)
    on_device = torch.empty(2, 3, device="meta")
    with pytest.raises(TypeError, match=r"tanh_matrix: .*NumPy.*meta.*allow_device_transfer=True"):
        _numpy_operator(matrix)(on_device)
    linear = FunctionLinearOperator(lambda x: x, lambda y: y, (3,), (3,), backend="numpy")
    with pytest.raises(TypeError, match="allow_device_transfer=True"):
        linear(on_device)
    with pytest.raises(ValueError, match="backend must be one of"):
        Operator(np.sin, np.cos, backend="jax")


# -------------------------------------------------------------------------- bad input


def test_shape_mismatch_names_expected_and_received_shapes() -> None:
    op = Convolution(torch.ones(3, 3), (1, 8, 8))
    with pytest.raises(ValueError, match=re.escape("expected input of shape (B, 1, 8, 8)")):
        op(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=re.escape("got (2, 1, 8, 7)")):
        op(torch.zeros(2, 1, 8, 7))
    with pytest.raises(ValueError, match=re.escape("adjoint input of shape (B, 1, 8, 8)")):
        op.adjoint(torch.zeros(1, 1, 9, 8))
    with pytest.raises(ValueError, match=re.escape("(B, 10)")):
        _dense(10, 7).H(torch.zeros(3, 7))
    with pytest.raises(TypeError, match="floating or complex"):
        op(torch.zeros(2, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="complex input"):
        _mri()(torch.zeros(1, 8, 6, dtype=torch.complex64))
    with pytest.raises(ValueError, match=re.escape("square: expected input 0 of shape (B, 3)")):
        Operator(torch.square, _sin_vjp, in_shape=(3,), name="square")(torch.zeros(2, 4))


def test_wrong_shapes_returned_by_user_rules_name_the_operator() -> None:
    x = _randn(2, 4, seed=55).requires_grad_(True)
    bad_vjp = Operator(torch.sin, lambda g, x: g[:, :3], name="short_vjp")
    with pytest.raises(ValueError, match=r"short_vjp: vjp for input 0 returned shape \(2, 3\)"):
        bad_vjp(x).sum().backward()
    bad_count = Operator(torch.sin, lambda g, x: (g, g), name="two_grads")
    with pytest.raises(ValueError, match="two_grads: vjp returned 2 gradient"):
        bad_count(x).sum().backward()
    numpy_vjp = Operator(np.sin, lambda g, x: g.T, backend="numpy", name="numpy_sine")
    with pytest.raises(ValueError, match=r"numpy_sine: vjp for input 0 returned shape \(4, 2\)"):
        numpy_vjp(x).sum().backward()
    not_array = Operator(lambda x: x.tolist(), _sin_vjp, backend="numpy", name="lister")
    with pytest.raises(TypeError, match="lister: forward returned a list"):
        not_array(x)
    bad_forward = Operator(torch.sin, _sin_vjp, out_shape=(3,), name="sine3")
    with pytest.raises(ValueError, match=r"sine3: forward returned shape \(2, 4\), expected"):
        bad_forward(x)
    bad_adjoint = FunctionLinearOperator(lambda x: x, lambda y: y[:, :2], (4,), (4,), name="cut")
    with pytest.raises(ValueError, match=r"cut: adjoint returned shape \(2, 2\), expected"):
        bad_adjoint(x).sum().backward()
    composed = bad_adjoint @ Identity((4,))
    with pytest.raises(ValueError, match="cut: adjoint returned"):
        composed(x).sum().backward()


def test_operator_data_must_be_constant() -> None:
    with pytest.raises(ValueError, match="kernel requires grad"):
        Convolution(torch.ones(3, requires_grad=True), (8,))
    with pytest.raises(ValueError, match="matrix requires grad"):
        MatrixOperator(nn.Parameter(torch.ones(2, 2)))

    class Learned(LinearOperator):
        def __init__(self) -> None:
            super().__init__((2,), (2,))
            self.weight = nn.Parameter(torch.ones(2))

        def _forward_map(self, x: Tensor) -> Tensor:
            return x * self.weight

        def _adjoint_map(self, y: Tensor) -> Tensor:
            return y * self.weight

    with pytest.raises(ValueError, match=r"Learned: has trainable parameters \['weight'\]"):
        Learned()(torch.ones(1, 2))
    assert Learned().requires_grad_(False)(torch.ones(1, 2)).shape == (1, 2)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="boundary must be one of"):
        Convolution(torch.ones(3), (8,), boundary="reflect")
    with pytest.raises(ValueError, match="no larger than the input"):
        Convolution(torch.ones(9), (8,))
    with pytest.raises(ValueError, match="must match the last dimensions"):
        Mask(torch.ones(3, 4, dtype=torch.bool), (4, 3))
    with pytest.raises(TypeError, match="boolean mask"):
        Mask(torch.ones(3), subsample=True)
    with pytest.raises(ValueError, match="has 6 entries but the matrix"):
        MatrixOperator(torch.ones(4, 5), in_shape=(2, 3))
    with pytest.raises(ValueError, match="keep must be one of"):
        Operator(torch.sin, _sin_vjp, keep="everything")


# ---------------------------------------------------------------- modules, devices, docs


def test_operators_are_modules() -> None:
    op = MaskedFourier(_mask(8, 6, seed=2)) @ Convolution(
        torch.rand(3, 3, generator=_generator()), (8, 6), "zero"
    )
    assert {name for name, _ in op.named_buffers()} >= {"operators.0.mask", "operators.1.kernel"}
    clone = MaskedFourier(_mask(8, 6, seed=2)) @ Convolution(torch.zeros(3, 3), (8, 6), "zero")
    clone.load_state_dict(op.state_dict())
    x = _randn(2, 8, 6, seed=56)
    torch.testing.assert_close(clone(x), op(x))
    assert "real -> complex" in repr(op)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_operators_on_cuda() -> None:
    for name, factory in {**BUILTINS, **ALGEBRA}.items():
        op = factory()
        if name == "numpy-function":
            continue
        cpu = adjoint_test(op, dtype=torch.float32)
        assert check_adjoint(op.cuda(), dtype=torch.float32, device="cuda") < 1e-5, name
        assert cpu < 1e-5
    x = _randn(2, 5, seed=57).cuda().requires_grad_(True)
    matrix = np.random.default_rng(0).standard_normal((3, 5))
    with pytest.raises(TypeError, match="allow_device_transfer"):
        _numpy_operator(matrix)(x)
    op = _numpy_operator(matrix, allow_device_transfer=True)
    y = op(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert y.is_cuda and grad.is_cuda and grad.dtype == F64


def _load_example() -> types.SimpleNamespace:
    path = ROOT / "examples" / "physics_reverse_kl.py"
    return types.SimpleNamespace(**runpy.run_path(str(path), run_name="physics_reverse_kl"))


def test_physics_reverse_kl_example_trains() -> None:
    example = _load_example()
    result = example.main(steps=40, size=8, depth=2, hidden=16, batch=32, verbose=False)
    losses, kls = result["losses"], result["kl"]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert np.mean(kls[-5:]) < 0.2 * np.mean(kls[:5])


def test_physics_reverse_kl_example_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = ROOT / "examples" / "physics_reverse_kl.py"
    arguments = ["--size", "4", "--steps", "3", "--depth", "1", "--batch", "8"]
    monkeypatch.setattr(sys, "argv", [str(path), *arguments])
    runpy.run_path(str(path), run_name="__main__")
    printed = capsys.readouterr().out
    assert "step     3" in printed and "KL(q || posterior)" in printed


def test_physics_reverse_kl_gradients_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow's gradients (reconstruction) and A's (adjoint) equal plain autograd's."""
    example = _load_example()
    problem = example.build_problem(8, 0.1, 0, F64)
    flow = example.build_flow(8, 2, 16, F64)
    z = _randn(16, 8, seed=58)
    with torch.no_grad():
        flow(z)  # ActNorm's initialisation
    reference_flow = copy.deepcopy(flow)
    reference_flow.mode = "store"
    matrix = problem.operator(torch.eye(8, dtype=F64)).T
    dense = copy.copy(problem)
    dense.operator = lambda x: x @ matrix.T

    adjoint_calls = []
    original = Mask._adjoint_map

    def counting(self: Mask, y: Tensor) -> Tensor:
        adjoint_calls.append(tuple(y.shape))
        return original(self, y)

    monkeypatch.setattr(Mask, "_adjoint_map", counting)
    ours = torch.autograd.grad(example.reverse_kl_loss(flow, problem, z), list(flow.parameters()))
    assert adjoint_calls == [(16, 4)]  # backward went through the hand-written adjoint
    reference = torch.autograd.grad(
        example.reverse_kl_loss(reference_flow, dense, z), list(reference_flow.parameters())
    )
    for a, b in zip(ours, reference, strict=True):
        assert float((a - b).norm()) <= 1e-10 * max(float(b.norm()), 1.0)


def test_doc_page_examples_run() -> None:
    text = (ROOT / "docs" / "operators.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "docs/operators.md has no python examples"
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "docs/operators.md", "exec"), namespace)
