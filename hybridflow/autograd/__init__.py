"""Invertible machinery: the module contract, chains and the reconstructing rule."""

from hybridflow.autograd.chain import Chain, Mode
from hybridflow.autograd.function import ReconstructingFunction
from hybridflow.autograd.module import InvertibleModule, Reconstruction, vjp_wrt
from hybridflow.autograd.validation import set_validation, validation_enabled

__all__ = [
    "Chain",
    "InvertibleModule",
    "Mode",
    "ReconstructingFunction",
    "Reconstruction",
    "set_validation",
    "validation_enabled",
    "vjp_wrt",
]
