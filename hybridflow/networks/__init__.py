"""Invertible networks built from the layers: multiscale Glow and HINT, conditional or not."""

from hybridflow.networks.glow import Glow, SqueezeKind
from hybridflow.networks.hint import HINT, PermutationKind

__all__ = ["HINT", "Glow", "PermutationKind", "SqueezeKind"]
