"""C2ST of neural posterior estimation on two moons and SLCP, at several simulation budgets.

For each task and budget: simulate, train a conditional spline flow (``coupling_flow``,
``"invert"`` mode) with ``NPETrainer`` (validation split, early stopping, plateau schedule),
then, for each reference observation, compare posterior samples (restricted to the prior's
support) with reference samples by the classifier two-sample test (0.5 is perfect). Two moons'
reference posterior is exact; SLCP's is MCMC (see ``hybridflow.sbi.SLCP``).

The defaults are small (1,000 simulations, one observation). The published comparison uses
``--simulations 1000 10000 100000 --observations 10`` (sbibm's budgets), which takes hours on
one CPU core.

Run: ``python benchmarks/sbi_c2st.py --simulations 1000 10000``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_out_file_option, run_and_write

from hybridflow.distributions import ConditionalFlow, coupling_flow
from hybridflow.sbi import (
    SLCP,
    NPEConfig,
    NPETrainer,
    Task,
    TwoMoons,
    atomic_write,
    c2st,
    sample_posterior,
    simulate,
)
from hybridflow.summary import Standardize

__all__ = ["main", "run"]

TASKS: dict[str, type[Task]] = {"two_moons": TwoMoons, "slcp": SLCP}
FIELDS = ["task", "simulations", "observation", "c2st", "epochs", "train_seconds"]


def run(args: argparse.Namespace) -> list[dict]:
    """Train and score every (task, budget) pair; one row per reference observation."""
    rows = []
    for name in args.tasks:
        task = TASKS[name]()
        d, k = math.prod(task.theta_shape), math.prod(task.x_shape)
        for budget in args.simulations:
            torch.manual_seed(args.seed)
            data = simulate(task, budget, seed=args.seed)
            flow = ConditionalFlow(
                coupling_flow(d, k, depth=args.depth, hidden=args.hidden, coupling="spline"),
                Standardize.from_data(data.x),
                event_shape=task.theta_shape,
                observation_shape=task.x_shape,
            )
            config = NPEConfig(
                max_epochs=args.epochs,
                batch_size=min(256, max(32, budget // 20)),
                learning_rate=1e-3,
                patience=10,
                seed=args.seed,
                progress=args.progress,
            )
            start = time.perf_counter()
            history = NPETrainer(flow, config).fit(data.theta, data.x)
            seconds = time.perf_counter() - start
            flow.eval()
            for index in range(args.observations):
                _, x_o = task.observation(index)
                samples = sample_posterior(flow, x_o, args.samples, prior=task.prior)
                generator = torch.Generator().manual_seed(index)
                reference = task.reference_posterior(x_o, args.samples, generator)
                row = {
                    "task": name,
                    "simulations": budget,
                    "observation": index,
                    "c2st": round(c2st(reference, samples, seed=index), 4),
                    "epochs": history.epochs,
                    "train_seconds": round(seconds, 1),
                }
                rows.append(row)
                print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def _write_csv(rows: list[dict], path: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda file: file.write(text.getvalue().encode()))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--simulations", nargs="+", type=int, default=[1000])
    parser.add_argument("--observations", type=int, default=1, help="reference observations")
    parser.add_argument("--samples", type=int, default=2000, help="samples per side of C2ST")
    parser.add_argument("--epochs", type=int, default=100, help="at most (early stopping)")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    add_out_file_option(parser, "sbi_c2st.csv")
    return run_and_write(parser.parse_args(argv), run, _write_csv)


if __name__ == "__main__":
    main()
