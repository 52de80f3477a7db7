"""Normalizing flows as ``torch.distributions``: conditional (with a summary network) or not."""

from hybridflow.distributions.base import FixedDistribution, StandardNormal
from hybridflow.distributions.builders import CouplingKind, coupling_flow
from hybridflow.distributions.distribution import FlowDistribution
from hybridflow.distributions.flows import ConditionalFlow, Flow
from hybridflow.distributions.support import Support, support_bounds

__all__ = [
    "ConditionalFlow",
    "CouplingKind",
    "FixedDistribution",
    "Flow",
    "FlowDistribution",
    "StandardNormal",
    "Support",
    "coupling_flow",
    "support_bounds",
]
