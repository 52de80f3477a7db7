"""Invertible layers, one family per module."""

from hybridflow.layers.actnorm import ActNorm
from hybridflow.layers.conditioners import Subnet, default_conditioner
from hybridflow.layers.conv1x1 import InvConv1x1
from hybridflow.layers.coupling import AffineCoupling, CouplingLayer
from hybridflow.layers.squeeze import Squeeze

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "CouplingLayer",
    "InvConv1x1",
    "Squeeze",
    "Subnet",
    "default_conditioner",
]
