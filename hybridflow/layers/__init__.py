"""Invertible layers, one family per module (the package re-exports the coupling family's
public names, as :mod:`hybridflow.layers.coupling` lists them)."""

from hybridflow.layers import coupling
from hybridflow.layers.actnorm import ActNorm
from hybridflow.layers.conv1x1 import InvConv1x1
from hybridflow.layers.coupling import (
    SPLINE_BOUND,
    AdditiveCoupling,
    AffineCoupling,
    ConditionalAffine,
    ConditionalSpline,
    ConstantConditioner,
    CouplingBase,
    CouplingLayer,
    HINTCoupling,
    SplineCoupling,
    SplineKnots,
    Subnet,
    check_subnet,
    default_conditioner,
)
from hybridflow.layers.elementwise import Affine, LeakyReLU
from hybridflow.layers.haar import HaarSqueeze
from hybridflow.layers.inverse import Inverse
from hybridflow.layers.multiscale import ResizeCondition, Split
from hybridflow.layers.permutation import Permute, Reverse
from hybridflow.layers.receptive_field import receptive_halo
from hybridflow.layers.squeeze import Squeeze
from hybridflow.layers.support import Bounded
from hybridflow.layers.volume_preserving import VolumePreserving
from hybridflow.layers.wrapper import Wrapper

__all__ = [
    *coupling.__all__,
    "ActNorm",
    "Affine",
    "Bounded",
    "HaarSqueeze",
    "InvConv1x1",
    "Inverse",
    "LeakyReLU",
    "Permute",
    "ResizeCondition",
    "Reverse",
    "Split",
    "Squeeze",
    "VolumePreserving",
    "Wrapper",
    "receptive_halo",
]
