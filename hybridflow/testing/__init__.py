"""Public checkers for users' own invertible blocks (and ours)."""

from hybridflow.testing.checks import (
    TaylorResult,
    check_inverse,
    check_invertible_module,
    check_logdet,
    check_reconstruction_gradients,
    check_taylor,
    taylor_test,
)
from hybridflow.testing.operators import adjoint_test, check_adjoint, default_adjoint_tolerance

__all__ = [
    "TaylorResult",
    "adjoint_test",
    "check_adjoint",
    "check_inverse",
    "check_invertible_module",
    "check_logdet",
    "check_reconstruction_gradients",
    "check_taylor",
    "default_adjoint_tolerance",
    "taylor_test",
]
