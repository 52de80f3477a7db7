"""hybridflow: invertible networks for PyTorch whose training memory does not grow with depth."""

import importlib
from typing import Any

from hybridflow import distributions, errors, graph, layers, networks, operators, summary, testing
from hybridflow.autograd import (
    Chain,
    DriftReport,
    InvertibleModule,
    Mode,
    Reconstruction,
    set_validation,
)
from hybridflow.distributions import ConditionalFlow, Flow
from hybridflow.errors import (
    ArgumentError,
    ArgumentTypeError,
    CheckpointMismatch,
    DriftWarning,
    FileFormatError,
    HybridflowError,
    InputError,
    InputTypeError,
    ModifiedError,
    ReconstructionError,
)
from hybridflow.graph import BudgetError, Graph, GraphModule, Plan, Strategy
from hybridflow.io import load, load_state_dict, save
from hybridflow.operators import LinearOperator, Operator

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "BudgetError",
    "Chain",
    "CheckpointMismatch",
    "ConditionalFlow",
    "DriftReport",
    "DriftWarning",
    "FileFormatError",
    "Flow",
    "Graph",
    "GraphModule",
    "HybridflowError",
    "InputError",
    "InputTypeError",
    "InvertibleModule",
    "LinearOperator",
    "Mode",
    "ModifiedError",
    "Operator",
    "Plan",
    "Reconstruction",
    "ReconstructionError",
    "Strategy",
    "distributions",
    "errors",
    "graph",
    "layers",
    "load",
    "load_state_dict",
    "networks",
    "operators",
    "save",
    "sbi",
    "set_validation",
    "summary",
    "testing",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import ``hybridflow.sbi`` on first use: it loads scipy.stats, which takes a while."""
    if name == "sbi":
        return importlib.import_module("hybridflow.sbi")
    raise AttributeError(f"module 'hybridflow' has no attribute {name!r}")
