"""Simulation-based inference: tasks, neural posterior estimation, reverse-KL training, metrics."""

from hybridflow.sbi.c2st import C2STRecipe, c2st
from hybridflow.sbi.calibration import (
    CoverageResult,
    SBCResult,
    expected_coverage,
    sbc,
    sbc_ranks,
)
from hybridflow.sbi.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from hybridflow.sbi.data import (
    NonFinitePolicy,
    NonFiniteSimulationWarning,
    Observations,
    Simulations,
    check_simulations,
    simulate,
)
from hybridflow.sbi.digits import DigitsInverseProblem, DigitsKind, load_digits
from hybridflow.sbi.linear_gaussian import GaussianLinear, LinearGaussian
from hybridflow.sbi.moments import MomentErrors, moment_errors
from hybridflow.sbi.npe import EpochRecord, NPEConfig, NPEHistory, NPETrainer
from hybridflow.sbi.plots import coverage_figure, sbc_rank_figure
from hybridflow.sbi.posterior import (
    LeakageWarning,
    PosteriorSamples,
    rejection_sample,
    sample_posterior,
)
from hybridflow.sbi.reverse_kl import (
    ReverseKLConfig,
    ReverseKLHistory,
    ReverseKLTrainer,
    reverse_kl_loss,
)
from hybridflow.sbi.sbi_package import as_sbi_estimator, sbi_density_estimator
from hybridflow.sbi.slcp import SLCP
from hybridflow.sbi.tarp import TARPResult, tarp, tarp_coverage
from hybridflow.sbi.task import Task
from hybridflow.sbi.training import ScheduleKind
from hybridflow.sbi.tsnpe import (
    TSNPERound,
    hpd_threshold,
    truncated_npe,
    truncated_prior_sample,
)
from hybridflow.sbi.two_moons import TwoMoons

__all__ = [
    "SLCP",
    "C2STRecipe",
    "CoverageResult",
    "DigitsInverseProblem",
    "DigitsKind",
    "EpochRecord",
    "GaussianLinear",
    "LeakageWarning",
    "LinearGaussian",
    "MomentErrors",
    "NPEConfig",
    "NPEHistory",
    "NPETrainer",
    "NonFinitePolicy",
    "NonFiniteSimulationWarning",
    "Observations",
    "PosteriorSamples",
    "ReverseKLConfig",
    "ReverseKLHistory",
    "ReverseKLTrainer",
    "SBCResult",
    "ScheduleKind",
    "Simulations",
    "TARPResult",
    "TSNPERound",
    "Task",
    "TwoMoons",
    "as_sbi_estimator",
    "atomic_write",
    "c2st",
    "check_simulations",
    "coverage_figure",
    "expected_coverage",
    "hpd_threshold",
    "load_checkpoint",
    "load_digits",
    "moment_errors",
    "rejection_sample",
    "reverse_kl_loss",
    "sample_posterior",
    "save_checkpoint",
    "sbc",
    "sbc_rank_figure",
    "sbc_ranks",
    "sbi_density_estimator",
    "simulate",
    "tarp",
    "tarp_coverage",
    "truncated_npe",
    "truncated_prior_sample",
]
