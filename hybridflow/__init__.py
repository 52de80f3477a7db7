"""hybridflow: invertible networks for PyTorch whose training memory does not grow with depth."""

from hybridflow import layers, operators, testing
from hybridflow.autograd import Chain, InvertibleModule, Mode, Reconstruction
from hybridflow.operators import LinearOperator, Operator

__all__ = [
    "Chain",
    "InvertibleModule",
    "LinearOperator",
    "Mode",
    "Operator",
    "Reconstruction",
    "layers",
    "operators",
    "testing",
]

__version__ = "0.1.0"
