"""Simulation-based inference: tasks, neural posterior estimation, reverse-KL training, metrics.

:mod:`~hybridflow.sbi.tasks` (problems), :mod:`~hybridflow.sbi.data` (simulations),
:mod:`~hybridflow.sbi.training` (one loop, two objectives), :mod:`~hybridflow.sbi.posterior`
and :mod:`~hybridflow.sbi.tsnpe` (sampling, truncated rounds), :mod:`~hybridflow.sbi.metrics`,
:mod:`~hybridflow.sbi.sbi_package` (the adapter to the ``sbi`` package). Checkpoints are
:mod:`hybridflow.io`'s.
"""

from hybridflow.deprecation import module_aliases
from hybridflow.io import atomic_write, load_checkpoint, save_checkpoint
from hybridflow.sbi.data import (
    NonFinitePolicy,
    NonFiniteSimulationWarning,
    Observations,
    Simulations,
    check_simulations,
    simulate,
)
from hybridflow.sbi.metrics import (
    C2STRecipe,
    CoverageResult,
    MomentErrors,
    SBCResult,
    TARPResult,
    c2st,
    coverage_figure,
    expected_coverage,
    moment_errors,
    sbc,
    sbc_rank_figure,
    sbc_ranks,
    tarp,
    tarp_coverage,
)
from hybridflow.sbi.posterior import (
    LeakageWarning,
    PosteriorSamples,
    rejection_sample,
    sample_posterior,
)
from hybridflow.sbi.sbi_package import as_sbi_estimator, sbi_density_estimator
from hybridflow.sbi.tasks import (
    SLCP,
    DigitsInverseProblem,
    DigitsKind,
    GaussianLinear,
    LinearInverseProblem,
    Task,
    TwoMoons,
    load_digits,
)
from hybridflow.sbi.training import (
    EpochRecord,
    NPEConfig,
    NPEHistory,
    NPETrainer,
    ReverseKLConfig,
    ReverseKLHistory,
    ReverseKLTrainer,
    ScheduleKind,
    reverse_kl_loss,
)
from hybridflow.sbi.tsnpe import (
    TSNPERound,
    hpd_threshold,
    truncated_npe,
    truncated_prior_sample,
)

__all__ = [
    "SLCP",
    "C2STRecipe",
    "CoverageResult",
    "DigitsInverseProblem",
    "DigitsKind",
    "EpochRecord",
    "GaussianLinear",
    "LeakageWarning",
    "LinearInverseProblem",
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

__getattr__ = module_aliases(
    __name__, {"LinearGaussian": ("LinearInverseProblem", lambda: LinearInverseProblem)}
)
