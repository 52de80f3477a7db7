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
import datetime
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hybridflow.bench.step_memory import StepMemory, measure_step_memory
from hybridflow.cli.errors import UsageError
from hybridflow.cli.figures import image_posterior
from hybridflow.cli.help import HelpFormatter, plain
from hybridflow.cli.outputs import output_folder, write_text
from hybridflow.cli.recipe import build_flow, check_recipe
from hybridflow.cli.sample import draw_samples
from hybridflow.cli.threads import torch_threads
from hybridflow.cli.train import TrainResult, train_recipe
from hybridflow.config import get_config
from hybridflow.sbi import simulate
from hybridflow.serialization import atomic_torch_save

__all__ = ["DEMO_RECIPE", "QUICK_RECIPE", "DemoResult", "add_parser", "demo", "run"]

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


@dataclass
class DemoResult:
    """What :func:`demo` measured and wrote.

    Attributes:
        training: the training run (flow, history, files, time).
        rmse_mean: root-mean-square error of the posterior mean against the truth.
        rmse_observation: the same for the observation taken as the estimate.
        coverage_90: share of true pixels inside the central 90% posterior interval.
        memory: one training step's memory per flow depth (the trained one and four times
            that), per mode; empty with ``memory=False``.
        files: every file written, by role.
        seconds: wall time of the demo.
    """

    training: TrainResult
    rmse_mean: float
    rmse_observation: float
    coverage_90: float
    memory: dict[int, list[StepMemory]]
    files: dict[str, Path]
    seconds: float


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.2f} MiB"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _memory_section(memory: dict[int, list[StepMemory]], batch: int) -> list[str]:
    if not memory:
        return ["## Memory of one training step", "", "Not measured (`--no-memory`).", ""]
    lines = [
        f"## Memory of one training step (batch {batch})",
        "",
        "The trained architecture, and the same with four times as many flow steps per scale:",
        "",
        "| flow steps per scale | mode | peak step memory | kept for backward by the flow "
        "| by the summary network |",
        "|---|---|---|---|---|",
    ]
    for depth, results in memory.items():
        for m in results:
            lines.append(
                f"| {depth} | `{m.mode}` | {_mib(m.peak_bytes)} | {_mib(m.flow_saved_bytes)} | "
                f"{_mib(m.summary_saved_bytes)} |"
            )
    lines.append("")
    depths = sorted(memory)
    low = {m.mode: m for m in memory[depths[0]]}
    high = {m.mode: m for m in memory[depths[-1]]}
    if len(depths) > 1 and {"invert", "store"} <= set(low) & set(high):
        grow = high["store"].flow_saved_bytes / max(low["store"].flow_saved_bytes, 1)
        lines.append(
            f"From {depths[0]} to {depths[-1]} steps per scale, what the flow keeps for backward "
            f"grows {grow:.1f}x in `store` mode (plain autograd) and stays "
            f"{_mib(high['invert'].flow_saved_bytes)} in `invert` mode, where the flow keeps "
            "only its output and its condition (which the summary network holds anyway)."
        )
        if all(m.peak_bytes for m in (*low.values(), *high.values())):
            lines.append(
                f"The whole step's peak (summary network, optimizer and gradients included) "
                f"goes from {_mib(low['store'].peak_bytes)} to {_mib(high['store'].peak_bytes)} "
                f"in `store` mode, and from {_mib(low['invert'].peak_bytes)} to "
                f"{_mib(high['invert'].peak_bytes)} in `invert` mode, where only the parameters "
                "and their gradients grow with depth."
            )
    note = next((m.note for results in memory.values() for m in results if m.note), None)
    lines += [
        "",
        "Each row ran in a fresh process: glibc's `MALLOC_MMAP_THRESHOLD_=65536` and "
        "`MALLOC_TRIM_THRESHOLD_=0` return freed memory to the system, a warm-up step "
        "initialises ActNorm and the optimizer, then `/proc/self/clear_refs` resets the "
        "high-water mark and `VmHWM` is read after one step; *peak step memory* is its growth "
        "over the step. *Kept for backward* counts the tensors the forward pass saves for "
        "backward (saved-tensor hooks, each storage once); the summary network is ordinary "
        "autograd in both modes.",
    ]
    if note:
        lines += ["", f"**Note:** peak memory was not measured: {note}."]
    lines += [
        "",
        "`hybridflow bench memory` draws how each mode's memory grows with depth and image size.",
        "",
    ]
    return lines


def _report(
    recipe: dict[str, Any],
    result: TrainResult,
    rmse_mean: float,
    rmse_observation: float,
    coverage: float,
    memory: dict[int, list[StepMemory]],
    memory_batch: int,
    threads: int,
    observations: int,
    samples: int,
    out: Path,
) -> str:
    flow, summary, training = recipe["flow"], recipe["summary"], recipe["training"]
    kind = recipe["task"]["kind"]
    problem = {
        "inpaint": "a noisy image with half of its pixels missing (they read 0)",
        "deblur": "a blurred, noisy image",
    }[kind]
    history = result.history
    best = history.best_epoch
    val = history.validation_loss[best - 1] if history.validation_loss else None
    today = datetime.date.today().isoformat()
    lines = [
        "# hybridflow demo",
        "",
        f"Run on {today} with {threads} CPU thread(s); training took {_duration(result.seconds)}.",
        "",
        "## What was trained",
        "",
        f"**Task** (`hybridflow.sbi.DigitsInverseProblem(kind={kind!r})`): recover an 8x8 "
        f"handwritten digit from {problem}. The prior is scikit-learn's digits; the shown "
        "digits are held out from it.",
        "",
        f"**Posterior** q(digit | image): a conditional Glow ({flow['levels']} scales x "
        f"{flow['depth']} steps, conditioner width {flow['hidden']}, `{flow['mode']}` mode) "
        f"conditioned on a CNN summary network ({summary['depth']} convolutions, a feature "
        f"map of {summary['features']} channels), trained jointly by neural posterior "
        f"estimation on {recipe['simulations']['count']} simulations for {history.epochs} "
        f"epochs (batch {training['batch_size']}).",
        "",
        f"Kept epoch {best}"
        + ("." if val is None else f", validation loss (-log q per digit) {val:.2f}."),
        "",
        "![training curve](training_curve.png)",
        "",
        f"## Posterior for {observations} held-out digits",
        "",
        f"Each row: the true digit, what was observed, three of {samples} posterior samples, "
        "their mean and their standard deviation (where the flow is unsure).",
        "",
        "![posterior](posterior.png)",
        "",
        "| estimate | RMSE against the truth |",
        "|---|---|",
        f"| posterior mean | {rmse_mean:.3f} |",
        f"| the observation itself | {rmse_observation:.3f} |",
        "",
        f"The central 90% posterior intervals hold {100 * coverage:.0f}% of the true pixels "
        "(90% when calibrated).",
        "",
        *_memory_section(memory, memory_batch),
        "## Files",
        "",
        "- `posterior.png`, `training_curve.png`: the figures above",
        "- `metrics.json`: the numbers of this report, for scripts",
        "- `samples.pt`: samples, observations, truth, mean and std "
        "(`torch.load(..., weights_only=True)`)",
        "- `model.pt`: the trained flow (`hybridflow.load`), with its recipe",
        "- `checkpoint.pt`, `history.csv`: the training state and losses per epoch",
        "",
        "## Next",
        "",
        "```bash",
        f"hybridflow sample --model {out / 'model.pt'} --held-out 10 11 12 --png more.png",
        "hybridflow bench memory --depths 4 8 16 --sizes 32 64",
        "hybridflow train --config examples/configs/digits_inpaint.toml",
        "```",
        "",
    ]
    return "\n".join(lines)


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
    with output_folder(out) as folder, torch_threads(threads):
        return _run(recipe, folder, observations, samples, memory, batch, threads, progress, log)


def _run(
    recipe: dict[str, Any],
    folder: Path,
    observations: int,
    samples: int,
    memory: bool,
    batch: int,
    threads: int,
    progress: bool,
    log: Any,
) -> DemoResult:
    """The demo's work, once its arguments are checked (see :func:`demo`)."""
    start = time.perf_counter()
    result = train_recipe(recipe, folder, overwrite=True, progress=progress, log=log)
    flow, task = result.flow, result.task
    pairs = [task.observation(i) for i in range(observations)]
    truth = torch.stack([theta for theta, _ in pairs])
    observed = torch.stack([x for _, x in pairs])
    drawn = draw_samples(flow, observed, samples, seed=0)
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
    titles = [f"held-out {i}" for i in range(observations)]
    missing = None if task.mask is None else ~task.mask
    files["posterior"] = image_posterior(
        observed, drawn, folder / "posterior.png", truth, titles=titles, missing=missing
    )

    measured: dict[int, list[StepMemory]] = {}
    if memory:
        depth = recipe["flow"]["depth"]
        if log is not None:
            print(
                f"measuring one training step (batch {batch}) with {depth} and {4 * depth} flow "
                "steps per scale, in invert and store mode, each in a fresh process",
                file=log,
                flush=True,
            )
        data = simulate(task, batch, seed=recipe["simulations"]["seed"] + 1)
        for steps in (depth, 4 * depth):
            deeper = copy.deepcopy(recipe)
            deeper["flow"]["depth"] = steps
            model = flow if steps == depth else build_flow(deeper, task)
            measured[steps] = measure_step_memory(
                get_config(model), data.theta, data.x, threads=threads
            )

    rmse = _rmse(mean, truth)
    rmse_observed = _rmse(observed, truth)
    coverage = float(inside.float().mean())
    report = _report(
        recipe,
        result,
        rmse,
        rmse_observed,
        coverage,
        measured,
        batch,
        threads,
        observations,
        samples,
        folder,
    )
    metrics = {
        "rmse_posterior_mean": rmse,
        "rmse_observation": rmse_observed,
        "coverage_90": coverage,
        "epochs": result.history.epochs,
        "training_seconds": result.seconds,
        "memory": [
            {"flow_depth": depth, **asdict(m), "flow_saved_bytes": m.flow_saved_bytes}
            for depth, results in measured.items()
            for m in results
        ],
    }
    files["metrics"] = write_text(folder / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    files["report"] = write_text(folder / "report.md", report)
    return DemoResult(
        result, rmse, rmse_observed, coverage, measured, files, time.perf_counter() - start
    )


def _rmse(estimate: Tensor, truth: Tensor) -> float:
    return float((estimate - truth).square().mean().sqrt())


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo`` and its flags."""
    parser = subparsers.add_parser(
        "demo",
        help="train, see and measure a posterior for an image inverse problem (minutes)",
        description=plain(__doc__),
        formatter_class=HelpFormatter,
    )
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
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: this model's small operations run no faster on more)",
    )
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
    history = result.training.history
    print(f"hybridflow demo finished in {_duration(result.seconds)}")
    print(
        f"  trained {history.epochs} epochs in {_duration(result.training.seconds)}; posterior "
        f"mean RMSE {result.rmse_mean:.3f} (observation: {result.rmse_observation:.3f}); 90% "
        f"intervals cover {100 * result.coverage_90:.0f}% of true pixels"
    )
    for depth, results in result.memory.items():
        for m in results:
            print(
                f"  {depth:>2} steps per scale, {m.mode:>6} mode: one training step peaks at "
                f"{_mib(m.peak_bytes)}; the flow keeps {_mib(m.flow_saved_bytes)} for backward"
            )
    note = next((m.note for rs in result.memory.values() for m in rs if m.note), None)
    if note:
        print(f"  (peak memory not measured: {note})")
    for role in ("report", "posterior", "curve", "samples", "model"):
        print(f"  {role:<10} {result.files[role]}")
    return 0
