"""Invertible machinery: the module contract, chains and the reconstructing rule."""

from hybridflow.autograd.chain import Chain, Mode
from hybridflow.autograd.drift import DriftPolicy, DriftReport, max_drift
from hybridflow.autograd.function import ReconstructingFunction
from hybridflow.autograd.module import InvertibleModule, Reconstruction, vjp_wrt
from hybridflow.autograd.validation import set_validation, validation_enabled

__all__ = [
    "Chain",
    "DriftPolicy",
    "DriftReport",
    "InvertibleModule",
    "Mode",
    "ReconstructingFunction",
    "Reconstruction",
    "max_drift",
    "set_validation",
    "validation_enabled",
    "vjp_wrt",
]
