"""Matrix operators: a dense or sparse matrix (torch, NumPy or SciPy) acting on flattened samples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

from hybridflow.operators.linear import LinearOperator
from hybridflow.operators.validation import as_constant, as_shape

__all__ = ["MatrixOperator"]


def _coo(indices: Any, values: Any, shape: tuple[int, int]) -> Tensor:
    return torch.sparse_coo_tensor(
        torch.as_tensor(np.asarray(indices), dtype=torch.int64),
        torch.as_tensor(values),
        shape,
        check_invariants=True,
    ).coalesce()


def _read_matrix(matrix: object, where: str) -> Tensor:
    """A dense tensor, or a coalesced sparse COO tensor for sparse input."""
    if scipy.sparse.issparse(matrix):
        coo = scipy.sparse.coo_array(matrix)
        return _coo(np.vstack([coo.row, coo.col]), np.array(coo.data), coo.shape)
    tensor = as_constant(matrix, where, "matrix")
    if tensor.layout != torch.strided:
        tensor = tensor.to_sparse_coo().coalesce()
    return tensor


class MatrixOperator(LinearOperator):
    r"""Multiplication by a matrix :math:`A \in \mathbb{F}^{m \times n}`: :math:`y = A x`.

    ``matrix`` may be a dense tensor, a torch sparse tensor (any layout; stored as COO), a
    NumPy array or a SciPy sparse matrix or array (converted to a torch sparse tensor, so it
    runs on any device). The adjoint multiplies by :math:`A^H`; for a sparse matrix it is
    built once, here. Samples are flattened row-major: ``in_shape`` and ``out_shape`` may be
    any shapes with :math:`n` and :math:`m` entries (``(n,)`` and ``(m,)`` by default), e.g.
    ``in_shape=(H, W)`` for a matrix acting on images. The matrix is a buffer, cast to the
    input's precision at each call; a complex matrix makes a complex operator.

    Args:
        matrix: the matrix, shape ``(m, n)``.
        in_shape: per-sample input shape with :math:`n` entries.
        out_shape: per-sample output shape with :math:`m` entries.

    Example:
        >>> import scipy.sparse, torch
        >>> from hybridflow.operators import MatrixOperator
        >>> A = MatrixOperator(scipy.sparse.eye(3, format="csr") * 2.0)
        >>> A(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[2., 4., 6.]])
    """

    def __init__(
        self,
        matrix: Tensor | np.ndarray | Any,
        in_shape: Sequence[int] | None = None,
        out_shape: Sequence[int] | None = None,
    ) -> None:
        name = type(self).__name__
        tensor = _read_matrix(matrix, name)
        if tensor.dim() != 2:
            raise ValueError(f"{name}: expected a 2D matrix, got shape {tuple(tensor.shape)}")
        if not (tensor.is_floating_point() or tensor.is_complex()):
            raise TypeError(f"{name}: the matrix must be floating or complex, got {tensor.dtype}")
        m, n = tensor.shape
        shapes = []
        for what, given, size in (("in_shape", in_shape, n), ("out_shape", out_shape, m)):
            shape = (size,) if given is None else as_shape(given, name, what)
            if math.prod(shape) != size:
                raise ValueError(
                    f"{name}: {what} {shape} has {math.prod(shape)} entries but the matrix of "
                    f"shape {(m, n)} needs {size}"
                )
            shapes.append(shape)
        is_complex = tensor.is_complex()
        super().__init__(*shapes, complex_input=is_complex, complex_output=is_complex)
        self.sparse = tensor.layout == torch.sparse_coo
        self.register_buffer("matrix", tensor)
        if self.sparse:
            adjoint = tensor.t().coalesce()
            adjoint = adjoint.conj_physical() if is_complex else adjoint
            self.register_buffer("matrix_adjoint", adjoint, persistent=False)

    def extra_repr(self) -> str:
        storage = f"sparse, nnz={self.matrix._nnz()}" if self.sparse else "dense"
        return f"{super().extra_repr()}, {storage}"

    def _cast(self, matrix: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Bring the matrix and the flattened batch to one dtype, in ``x``'s precision."""
        dtype = x.dtype.to_real()
        if x.is_complex() or matrix.is_complex():
            dtype = dtype.to_complex()
        flat = x.reshape(x.shape[0], -1).to(dtype)
        return matrix.to(device=x.device, dtype=dtype), flat

    def _multiply(self, x: Tensor, adjoint: bool) -> Tensor:
        out_shape = self.in_shape if adjoint else self.out_shape
        if self.sparse:
            matrix, flat = self._cast(self.matrix_adjoint if adjoint else self.matrix, x)
            result = torch.sparse.mm(matrix, flat.T.contiguous()).T
        else:
            matrix, flat = self._cast(self.matrix, x)
            result = flat @ matrix.conj() if adjoint else flat @ matrix.T
        return result.reshape(x.shape[0], *out_shape)

    def _forward_map(self, x: Tensor) -> Tensor:
        return self._multiply(x, adjoint=False)

    def _adjoint_map(self, y: Tensor) -> Tensor:
        return self._multiply(y, adjoint=True)
