"""The coupling family: a template, its elementwise maps, HINT's recursion and conditioners."""

from hybridflow.layers.coupling.additive import AdditiveCoupling
from hybridflow.layers.coupling.affine import AffineCoupling
from hybridflow.layers.coupling.base import CouplingBase, CouplingLayer
from hybridflow.layers.coupling.conditional import ConditionalAffine, ConditionalSpline
from hybridflow.layers.coupling.conditioners import (
    ConstantConditioner,
    Subnet,
    check_subnet,
    default_conditioner,
)
from hybridflow.layers.coupling.hint import HINTCoupling
from hybridflow.layers.coupling.spline import SPLINE_BOUND, SplineCoupling, SplineKnots

__all__ = [
    "SPLINE_BOUND",
    "AdditiveCoupling",
    "AffineCoupling",
    "ConditionalAffine",
    "ConditionalSpline",
    "ConstantConditioner",
    "CouplingBase",
    "CouplingLayer",
    "HINTCoupling",
    "SplineCoupling",
    "SplineKnots",
    "Subnet",
    "check_subnet",
    "default_conditioner",
]
