"""``hybridflow demo``: train, see and measure a posterior for an image inverse problem.

Trains a conditional Glow (``"invert"`` mode: the training step keeps no activation of the
flow) together with a convolutional summary network on the digits inverse problem
(:class:`hybridflow.sbi.DigitsInverseProblem`: recover an 8x8 handwritten digit from a noisy
image with half its pixels missing, or a blurred one with ``--kind deblur``), by neural
posterior estimation. Then it draws posterior samples for held-out digits and measures the
peak memory of one training step in ``invert`` and in ``store`` mode, at the trained depth and
at four times that depth, each in a fresh process. Everything goes to ``--out``: ``posterior.png`` (truth, observation, samples, mean,
standard deviation), ``training_curve.png``, ``report.md`` (and its figures as
``metrics.json``), ``samples.pt``, ``model.pt``
(for ``hybridflow sample``), ``checkpoint.pt`` and ``history.csv``. A few minutes on two CPU
cores; ``--quick`` takes seconds (and shows little).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hybridflow.bench.step_memory import StepMemory, measure_step_memory
from hybridflow.cli.demo_report import (
    DemoResult,
    DemoSettings,
    console_summary,
    metrics,
    report_markdown,
)
from hybridflow.cli.errors import UsageError
from hybridflow.cli.figures import image_posterior
from hybridflow.cli.help import add_command, add_threads_flag
from hybridflow.cli.outputs import output_folder
from hybridflow.cli.recipe import build_flow, check_recipe
from hybridflow.cli.sample import draw_samples
from hybridflow.cli.threads import torch_threads
from hybridflow.cli.train import TrainResult, train_recipe
from hybridflow.config import get_config
from hybridflow.io import atomic_torch_save, write_text
from hybridflow.sbi import simulate

__all__ = ["DEMO_RECIPE", "QUICK_RECIPE", "SUMMARY", "DemoResult", "add_parser", "demo", "run"]

SUMMARY = "train, see and measure a posterior for an image inverse problem (minutes)"
"""The line of ``hybridflow demo`` in ``hybridflow --help``."""

DEMO_RECIPE: dict[str, Any] = {
    "task": {"name": "digits", "kind": "inpaint"},
    "simulations": {"count": 10_000, "seed": 0},
    "flow": {"kind": "glow", "levels": 2, "depth": 4, "hidden": 64, "mode": "invert"},
    "summary": {"kind": "cnn", "features": 8, "hidden": 32, "depth": 3, "output": "field"},
    "training": {
        "max_epochs": 12,
        "batch_size": 64,
        "learning_rate": 1e-3,
        "schedule": "cosine",
        "patience": False,
    },
}
"""The demo's recipe (the same format as ``hybridflow train`` configs): about two minutes of
training on one CPU thread."""

QUICK_RECIPE: dict[str, Any] = {
    **DEMO_RECIPE,
    "simulations": {"count": 300, "seed": 0},
    "flow": {**DEMO_RECIPE["flow"], "depth": 1, "hidden": 16},
    "summary": {**DEMO_RECIPE["summary"], "hidden": 8, "depth": 1},
    "training": {**DEMO_RECIPE["training"], "max_epochs": 2},
}
"""``--quick``: the same pipeline at a toy size (seconds; for tests and a first look)."""


def demo(
    out: str | Path = "demo-output",
    *,
    quick: bool = False,
    kind: str | None = None,
    epochs: int | None = None,
    simulations: int | None = None,
    observations: int = 6,
    samples: int = 256,
    memory: bool = True,
    memory_batch: int | None = None,
    threads: int = 1,
    progress: bool = True,
    log: Any = sys.stderr,
) -> DemoResult:
    """Train, sample, measure and report (see the module docstring); returns the figures.

    Raises:
        UsageError: a bad argument, or an output folder that cannot be written (checked
            before any work).
    """
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    for name, value, minimum in (
        ("--observations", observations, 1),
        ("--samples", samples, 2),
    ):
        if value < minimum:
            raise UsageError(f"{name} must be at least {minimum}, got {value}")
    recipe = copy.deepcopy(QUICK_RECIPE if quick else DEMO_RECIPE)
    if kind is not None:
        recipe["task"]["kind"] = kind
    if epochs is not None:
        recipe["training"]["max_epochs"] = epochs
    if simulations is not None:
        recipe["simulations"]["count"] = simulations
    recipe = check_recipe(recipe, "demo")
    batch = recipe["training"]["batch_size"] if memory_batch is None else memory_batch
    if batch < 1:
        raise UsageError(f"--memory-batch must be at least 1, got {batch}")
    settings = DemoSettings(recipe, observations, samples, memory, batch, threads)
    with output_folder(out) as folder, torch_threads(threads):
        return _run(settings, folder, progress, log)


def _run(settings: DemoSettings, folder: Path, progress: bool, log: Any) -> DemoResult:
    """The demo's work, once its arguments are checked (see :func:`demo`)."""
    start = time.perf_counter()
    recipe = settings.recipe
    result = train_recipe(recipe, folder, overwrite=True, progress=progress, log=log)
    flow, task = result.flow, result.task
    pairs = [task.observation(i) for i in range(settings.observations)]
    truth = torch.stack([theta for theta, _ in pairs])
    observed = torch.stack([x for _, x in pairs])
    drawn = draw_samples(flow, observed, settings.samples, seed=0)
    mean = drawn.mean(0)
    low, high = torch.quantile(drawn.flatten(1), torch.tensor([0.05, 0.95]), dim=0)
    inside = (low <= truth.flatten()) & (truth.flatten() <= high)
    files = dict(result.files)
    files["samples"] = folder / "samples.pt"
    atomic_torch_save(
        {
            "samples": drawn,
            "observations": observed,
            "truth": truth,
            "mean": mean,
            "std": drawn.std(0),
        },
        files["samples"],
    )
    titles = [f"held-out {i}" for i in range(settings.observations)]
    missing = None if task.mask is None else ~task.mask
    files["posterior"] = image_posterior(
        observed, drawn, folder / "posterior.png", truth, titles=titles, missing=missing
    )
    measured = _measure_memory(settings, result, log) if settings.memory else {}
    outcome = DemoResult(
        result,
        _rmse(mean, truth),
        _rmse(observed, truth),
        float(inside.float().mean()),
        measured,
        files,
        time.perf_counter() - start,
    )
    text = json.dumps(metrics(outcome), indent=2) + "\n"
    files["metrics"] = write_text(folder / "metrics.json", text)
    files["report"] = write_text(folder / "report.md", report_markdown(settings, outcome, folder))
    return outcome


def _measure_memory(
    settings: DemoSettings, result: TrainResult, log: Any
) -> dict[int, list[StepMemory]]:
    """One training step's memory at the trained depth and at four times it, per mode, each
    in a fresh process."""
    recipe, batch = settings.recipe, settings.memory_batch
    depth = recipe["flow"]["depth"]
    if log is not None:
        print(
            f"measuring one training step (batch {batch}) with {depth} and {4 * depth} flow "
            "steps per scale, in invert and store mode, each in a fresh process",
            file=log,
            flush=True,
        )
    data = simulate(result.task, batch, seed=recipe["simulations"]["seed"] + 1)
    measured: dict[int, list[StepMemory]] = {}
    for steps in (depth, 4 * depth):
        deeper = copy.deepcopy(recipe)
        deeper["flow"]["depth"] = steps
        model = result.flow if steps == depth else build_flow(deeper, result.task)
        measured[steps] = measure_step_memory(
            get_config(model), data.theta, data.x, threads=settings.threads
        )
    return measured


def _rmse(estimate: Tensor, truth: Tensor) -> float:
    return float((estimate - truth).square().mean().sqrt())


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo`` and its flags."""
    parser = add_command(subparsers, "demo", SUMMARY, __doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="toy sizes: seconds, for a test")
    parser.add_argument("--kind", choices=["inpaint", "deblur"], help="the inverse problem")
    parser.add_argument("--epochs", type=int, help="training epochs")
    parser.add_argument("--simulations", type=int, help="training pairs")
    parser.add_argument("--observations", type=int, default=6, help="held-out digits shown")
    parser.add_argument("--samples", type=int, default=256, help="posterior samples per digit")
    parser.add_argument(
        "--memory-batch", type=int, help="batch of the measured step (default: training batch)"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the memory measurement (four processes)"
    )
    add_threads_flag(parser, "this model's small operations run no faster on more")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no messages")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``hybridflow demo``; returns the exit status."""
    result = demo(
        args.out,
        quick=args.quick,
        kind=args.kind,
        epochs=args.epochs,
        simulations=args.simulations,
        observations=args.observations,
        samples=args.samples,
        memory=not args.no_memory,
        memory_batch=args.memory_batch,
        threads=args.threads,
        progress=not args.quiet,
        log=None if args.quiet else sys.stderr,
    )
    for line in console_summary(result):
        print(line)
    return 0
