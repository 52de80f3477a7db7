"""hybridflow: invertible networks for PyTorch whose training memory does not grow with depth."""

from hybridflow import layers, testing
from hybridflow.autograd import Chain, InvertibleModule, Mode, Reconstruction

__all__ = ["Chain", "InvertibleModule", "Mode", "Reconstruction", "layers", "testing"]

__version__ = "0.1.0"
