"""Inference problems: the :class:`Task` contract and the benchmark and inverse-problem tasks."""

from hybridflow.sbi.tasks.base import Task
from hybridflow.sbi.tasks.digits import DigitsInverseProblem, DigitsKind, load_digits
from hybridflow.sbi.tasks.linear import GaussianLinear, LinearInverseProblem
from hybridflow.sbi.tasks.slcp import SLCP
from hybridflow.sbi.tasks.two_moons import TwoMoons

__all__ = [
    "SLCP",
    "DigitsInverseProblem",
    "DigitsKind",
    "GaussianLinear",
    "LinearInverseProblem",
    "Task",
    "TwoMoons",
    "load_digits",
]
