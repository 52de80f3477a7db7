"""Search for vector-NPE defaults: C2ST at 10^4 simulations on the project's four tasks.

Tasks: two moons, Gaussian linear (10-D), SLCP, and SLCP with 92 uninformative distractor
numbers appended and permuted (a Gaussian mixture independent of theta), trained with a
standardising MLP summary network (``Sequential(Standardize, MLP)``). For each task and each
configuration of the grid, the flow (``coupling_flow``, spline, bounded to the prior's
support) trains with ``NPETrainer`` for at most ``--minutes`` of wall time (the epoch count
is set from a timed first epoch), then C2ST (sbibm's recipe) compares ``--samples`` posterior
samples with the reference posterior's for ``--observations`` reference observations.

The grid is small on purpose (CPU is shared); each row of the CSV is one (task, config,
observation). Run on one thread::

    OMP_NUM_THREADS=1 python benchmarks/npe_defaults.py --tasks two_moons --minutes 3
    OMP_NUM_THREADS=1 python benchmarks/npe_defaults.py --configs library --minutes 5

Targets of issue 15 (mean over 3 observations, <= 5 CPU-min each): two moons <= 0.54,
Gaussian linear <= 0.54, SLCP <= 0.80, SLCP + distractors <= 0.85.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from hybridflow.bench.memory_depth import write_csv
from hybridflow.distributions import ConditionalFlow, coupling_flow
from hybridflow.sbi import (
    SLCP,
    GaussianLinear,
    NPEConfig,
    NPETrainer,
    Task,
    TwoMoons,
    c2st,
    sample_posterior,
    simulate,
)
from hybridflow.summary import MLP, Sequential, Standardize

__all__ = ["CONFIGS", "SLCPDistractors", "main", "run"]


class SLCPDistractors(SLCP):
    """SLCP's 8 numbers with 92 distractors from a fixed 2-D-Gaussian mixture appended, the
    100 entries permuted by a fixed permutation (sbibm's ``slcp_distractors`` in spirit)."""

    name = "slcp_distractors"

    def __init__(self, distractors: int = 92, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.distractors = distractors
        self.centres = 3 * torch.randn(20, distractors, generator=generator)
        self.permutation = torch.randperm(8 + distractors, generator=generator)
        self._slcp = SLCP()  # the reference posterior of the 8 informative numbers

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (8 + self.distractors,)

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        informative = super()._simulate(theta, generator)
        pick = torch.randint(0, len(self.centres), (theta.shape[0],), generator=generator)
        noise = torch.randn(theta.shape[0], self.distractors, generator=generator)
        extra = (self.centres[pick] + noise).to(informative.dtype)
        return torch.cat([informative, extra], dim=1)[:, self.permutation]

    def reference_posterior(self, x_o: Tensor, num: int, generator=None, **kwargs) -> Tensor:
        inverse = torch.argsort(self.permutation)
        return self._slcp.reference_posterior(x_o[inverse][:8], num, generator, **kwargs)


TASKS: dict[str, type[Task]] = {
    "two_moons": TwoMoons,
    "gaussian_linear": GaussianLinear,
    "slcp": SLCP,
    "slcp_distractors": SLCPDistractors,
}
# flow size, summary width, optimiser and schedule; "library" is NPEConfig()'s and
# coupling_flow's defaults (depth 4, hidden 64, summary width 64)
CONFIGS: dict[str, dict] = {
    "library": {},
    "wide": {"hidden": 128},
    "deep": {"depth": 6},
    "cosine": {"schedule": "cosine", "learning_rate": 1e-3},
    "batch256": {"batch_size": 256, "learning_rate": 1e-3},
}


def _flow(task: Task, data, depth: int, hidden: int) -> ConditionalFlow:
    d = math.prod(task.theta_shape)
    features = min(32, 2 * math.prod(task.x_shape))
    summary = Sequential(
        Standardize.from_data(data.x), MLP(list(task.x_shape), features, hidden=64, depth=2)
    )
    return ConditionalFlow(
        coupling_flow(d, features, depth=depth, hidden=hidden, support=task.prior),
        summary,
        event_shape=task.theta_shape,
        observation_shape=task.x_shape,
    )


def run(args: argparse.Namespace) -> list[dict]:
    """Train and score every (task, config) pair; one row per reference observation."""
    rows = []
    for name in args.tasks:
        task = TASKS[name]()
        data = simulate(task, args.simulations, seed=args.seed)
        for config_name in args.configs:
            options = dict(CONFIGS[config_name])
            depth, hidden = options.pop("depth", 4), options.pop("hidden", 64)
            torch.manual_seed(args.seed)
            flow = _flow(task, data, depth, hidden)
            config = replace(NPEConfig(seed=args.seed), **options)
            start = time.perf_counter()
            first = NPETrainer(flow, replace(config, max_epochs=1)).fit(data.theta, data.x)
            per_epoch = time.perf_counter() - start
            epochs = max(2, int(args.minutes * 60 / per_epoch))
            torch.manual_seed(args.seed)
            flow = _flow(task, data, depth, hidden)
            config = replace(config, max_epochs=min(config.max_epochs, epochs))
            start = time.perf_counter()
            history = NPETrainer(flow, config).fit(data.theta, data.x)
            seconds = time.perf_counter() - start + per_epoch * first.epochs
            for index in range(args.observations):
                _, x_o = task.observation(index)
                samples = sample_posterior(flow, x_o, args.samples, prior=task.prior)
                reference = task.reference_posterior(
                    x_o, args.samples, torch.Generator().manual_seed(index)
                )
                row = {
                    "task": name,
                    "config": config_name,
                    "observation": index,
                    "c2st": round(c2st(reference, samples), 4),
                    "epochs": history.epochs,
                    "best_epoch": history.best_epoch,
                    "train_seconds": round(seconds, 1),
                }
                rows.append(row)
                print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["library"])
    parser.add_argument("--simulations", type=int, default=10_000)
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000, help="samples per side of C2ST")
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall time, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "npe_defaults.csv"
    )
    args = parser.parse_args(argv)
    rows = run(args)
    write_csv(rows, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
