"""Training conditional flows: one loop (:mod:`~hybridflow.sbi.training.loop`) and its two
objectives, neural posterior estimation on simulations and physics-based reverse KL."""

from hybridflow.sbi.training.npe import EpochRecord, NPEConfig, NPEHistory, NPETrainer
from hybridflow.sbi.training.reverse_kl import (
    ReverseKLConfig,
    ReverseKLHistory,
    ReverseKLTrainer,
    reverse_kl_loss,
)
from hybridflow.sbi.training.schedule import ScheduleKind

__all__ = [
    "EpochRecord",
    "NPEConfig",
    "NPEHistory",
    "NPETrainer",
    "ReverseKLConfig",
    "ReverseKLHistory",
    "ReverseKLTrainer",
    "ScheduleKind",
    "reverse_kl_loss",
]
