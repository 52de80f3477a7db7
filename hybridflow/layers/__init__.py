"""Invertible layers, one family per module."""

from hybridflow.layers.actnorm import ActNorm
from hybridflow.layers.additive_coupling import AdditiveCoupling
from hybridflow.layers.conditional_elementwise import ConditionalAffine, ConditionalSpline
from hybridflow.layers.conditioners import ConstantConditioner, Subnet, default_conditioner
from hybridflow.layers.conv1x1 import InvConv1x1
from hybridflow.layers.coupling import AffineCoupling, CouplingLayer
from hybridflow.layers.elementwise import Affine, LeakyReLU
from hybridflow.layers.haar import HaarSqueeze
from hybridflow.layers.hint_coupling import HINTCoupling
from hybridflow.layers.inverse import Inverse
from hybridflow.layers.multiscale import ResizeCondition, Split
from hybridflow.layers.permutation import Permute, Reverse
from hybridflow.layers.receptive_field import receptive_halo
from hybridflow.layers.spline_coupling import SPLINE_BOUND, SplineCoupling, SplineKnots
from hybridflow.layers.squeeze import Squeeze
from hybridflow.layers.support import Bounded

__all__ = [
    "SPLINE_BOUND",
    "ActNorm",
    "AdditiveCoupling",
    "Affine",
    "AffineCoupling",
    "Bounded",
    "ConditionalAffine",
    "ConditionalSpline",
    "ConstantConditioner",
    "CouplingLayer",
    "HINTCoupling",
    "HaarSqueeze",
    "InvConv1x1",
    "Inverse",
    "LeakyReLU",
    "Permute",
    "ResizeCondition",
    "Reverse",
    "SplineCoupling",
    "SplineKnots",
    "Split",
    "Squeeze",
    "Subnet",
    "default_conditioner",
    "receptive_halo",
]
