"""Invertible networks built from the layers: multiscale Glow and HINT, conditional or not."""

from hybridflow.networks.base import Network
from hybridflow.networks.glow import Glow, SqueezeKind
from hybridflow.networks.hint import HINT, PermutationKind
from hybridflow.networks.steps import glow_step

__all__ = ["HINT", "Glow", "Network", "PermutationKind", "SqueezeKind", "glow_step"]
