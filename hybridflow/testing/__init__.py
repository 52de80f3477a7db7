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

__all__ = [
    "TaylorResult",
    "check_inverse",
    "check_invertible_module",
    "check_logdet",
    "check_reconstruction_gradients",
    "check_taylor",
    "taylor_test",
]
