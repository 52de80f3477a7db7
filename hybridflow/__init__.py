"""hybridflow: invertible networks for PyTorch whose training memory does not grow with depth."""

from hybridflow import layers, networks, operators, testing
from hybridflow.autograd import Chain, InvertibleModule, Mode, Reconstruction
from hybridflow.operators import LinearOperator, Operator
from hybridflow.serialization import load, load_state_dict, save

__all__ = [
    "Chain",
    "InvertibleModule",
    "LinearOperator",
    "Mode",
    "Operator",
    "Reconstruction",
    "layers",
    "load",
    "load_state_dict",
    "networks",
    "operators",
    "save",
    "testing",
]

__version__ = "0.1.0"
