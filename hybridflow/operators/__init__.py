"""Operators with hand-written adjoints and VJPs: physics in the same differentiable graph."""

from hybridflow.operators.algebra import Adjoint, Composition, Identity, Scaled, Sum, Transpose
from hybridflow.operators.bridge import Backend
from hybridflow.operators.convolution import Boundary, Convolution
from hybridflow.operators.fourier import MaskedFourier
from hybridflow.operators.functions import FunctionLinearOperator, linear_operator
from hybridflow.operators.linear import LinearFunction, LinearOperator
from hybridflow.operators.mask import Mask
from hybridflow.operators.matrix import MatrixOperator
from hybridflow.operators.operator import Keep, Operator, OperatorFunction, operator

__all__ = [
    "Adjoint",
    "Backend",
    "Boundary",
    "Composition",
    "Convolution",
    "FunctionLinearOperator",
    "Identity",
    "Keep",
    "LinearFunction",
    "LinearOperator",
    "Mask",
    "MaskedFourier",
    "MatrixOperator",
    "Operator",
    "OperatorFunction",
    "Scaled",
    "Sum",
    "Transpose",
    "linear_operator",
    "operator",
]
