"""How good a posterior is: C2ST, calibration (SBC, expected coverage, TARP), moments, plots."""

from hybridflow.sbi.metrics.c2st import C2STRecipe, c2st
from hybridflow.sbi.metrics.calibration import (
    CoverageResult,
    SBCResult,
    expected_coverage,
    sbc,
    sbc_ranks,
)
from hybridflow.sbi.metrics.moments import MomentErrors, moment_errors
from hybridflow.sbi.metrics.plots import coverage_figure, sbc_rank_figure
from hybridflow.sbi.metrics.tarp import TARPResult, tarp, tarp_coverage

__all__ = [
    "C2STRecipe",
    "CoverageResult",
    "MomentErrors",
    "SBCResult",
    "TARPResult",
    "c2st",
    "coverage_figure",
    "expected_coverage",
    "moment_errors",
    "sbc",
    "sbc_rank_figure",
    "sbc_ranks",
    "tarp",
    "tarp_coverage",
]
