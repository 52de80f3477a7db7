"""Invertible machinery: the module contract, chains and the reconstructing rule."""

from hybridflow.autograd.chain import Chain, Mode
from hybridflow.autograd.function import ReconstructingFunction
from hybridflow.autograd.module import InvertibleModule, Reconstruction, vjp_wrt

__all__ = [
    "Chain",
    "InvertibleModule",
    "Mode",
    "ReconstructingFunction",
    "Reconstruction",
    "vjp_wrt",
]
