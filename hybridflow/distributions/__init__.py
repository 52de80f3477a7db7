"""Normalizing flows as ``torch.distributions``: conditional (with a summary network) or not."""

from hybridflow.distributions.base import FixedDistribution, StandardNormal
from hybridflow.distributions.builders import CouplingKind, coupling_flow
from hybridflow.distributions.distribution import FlowDistribution
from hybridflow.distributions.ensemble import FlowEnsemble
from hybridflow.distributions.flows import ConditionalFlow, Flow
from hybridflow.distributions.mixture import UniformMixture
from hybridflow.distributions.support import Support, support_bounds

__all__ = [
    "ConditionalFlow",
    "CouplingKind",
    "FixedDistribution",
    "Flow",
    "FlowDistribution",
    "FlowEnsemble",
    "StandardNormal",
    "Support",
    "UniformMixture",
    "coupling_flow",
    "support_bounds",
]
