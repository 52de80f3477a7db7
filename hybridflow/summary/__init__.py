"""Summary networks: observations to the condition of a conditional flow."""

from hybridflow.summary.attention import SetTransformer
from hybridflow.summary.cnn import CNN, SummaryOutput
from hybridflow.summary.deepset import DeepSet, Pooling
from hybridflow.summary.mlp import MLP
from hybridflow.summary.sequential import Sequential
from hybridflow.summary.sets import as_padded_set, pad_sets
from hybridflow.summary.standardize import Standardize

__all__ = [
    "CNN",
    "MLP",
    "DeepSet",
    "Pooling",
    "Sequential",
    "SetTransformer",
    "Standardize",
    "SummaryOutput",
    "as_padded_set",
    "pad_sets",
]
