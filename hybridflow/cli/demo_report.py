"""The demo's report: ``report.md``, ``metrics.json`` and the lines printed at the end, from
what :func:`hybridflow.cli.demo.demo` measured (no training or sampling here)."""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hybridflow.bench.step_memory import StepMemory
from hybridflow.cli.train import TrainResult

__all__ = [
    "DemoResult",
    "DemoSettings",
    "console_summary",
    "duration",
    "memory_section",
    "metrics",
    "mib",
    "report_markdown",
]


@dataclass(frozen=True)
class DemoSettings:
    """What the demo was asked for, once checked.

    Attributes:
        recipe: the checked training recipe.
        observations: held-out digits shown.
        samples: posterior samples per digit.
        memory: whether to measure one training step's memory.
        memory_batch: the batch of the measured step.
        threads: torch CPU threads.
    """

    recipe: dict[str, Any]
    observations: int
    samples: int
    memory: bool
    memory_batch: int
    threads: int


@dataclass
class DemoResult:
    """What :func:`hybridflow.cli.demo.demo` measured and wrote.

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


def mib(value: int | None) -> str:
    """Bytes as MiB with two decimals; ``"n/a"`` for ``None`` (not measured)."""
    return "n/a" if value is None else f"{value / 2**20:.2f} MiB"


def duration(seconds: float) -> str:
    """Seconds as ``"2 min 5 s"`` (or ``"45 s"``)."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def memory_section(memory: dict[int, list[StepMemory]], batch: int) -> list[str]:
    """The report's lines on one training step's memory (empty ``memory``: not measured)."""
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
                f"| {depth} | `{m.mode}` | {mib(m.peak_bytes)} | {mib(m.flow_saved_bytes)} | "
                f"{mib(m.summary_saved_bytes)} |"
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
            f"{mib(high['invert'].flow_saved_bytes)} in `invert` mode, where the flow keeps "
            "only its output and its condition (which the summary network holds anyway)."
        )
        if all(m.peak_bytes for m in (*low.values(), *high.values())):
            lines.append(
                f"The whole step's peak (summary network, optimizer and gradients included) "
                f"goes from {mib(low['store'].peak_bytes)} to {mib(high['store'].peak_bytes)} "
                f"in `store` mode, and from {mib(low['invert'].peak_bytes)} to "
                f"{mib(high['invert'].peak_bytes)} in `invert` mode, where only the parameters "
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


def report_markdown(settings: DemoSettings, outcome: DemoResult, folder: Path) -> str:
    """``report.md``: what was trained, the posterior's figures, memory, files, next steps."""
    recipe, result = settings.recipe, outcome.training
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
        f"Run on {today} with {settings.threads} CPU thread(s); training took "
        f"{duration(result.seconds)}.",
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
        f"## Posterior for {settings.observations} held-out digits",
        "",
        f"Each row: the true digit, what was observed, three of {settings.samples} posterior samples, "
        "their mean and their standard deviation (where the flow is unsure).",
        "",
        "![posterior](posterior.png)",
        "",
        "| estimate | RMSE against the truth |",
        "|---|---|",
        f"| posterior mean | {outcome.rmse_mean:.3f} |",
        f"| the observation itself | {outcome.rmse_observation:.3f} |",
        "",
        f"The central 90% posterior intervals hold {100 * outcome.coverage_90:.0f}% of the true pixels "
        "(90% when calibrated).",
        "",
        *memory_section(outcome.memory, settings.memory_batch),
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
        f"hybridflow sample --model {folder / 'model.pt'} --held-out 10 11 12 --png more.png",
        "hybridflow bench memory --depths 4 8 16 --sizes 32 64",
        "hybridflow train --config examples/configs/digits_inpaint.toml",
        "```",
        "",
    ]
    return "\n".join(lines)


def metrics(outcome: DemoResult) -> dict[str, Any]:
    """The numbers of the report, for ``metrics.json``."""
    return {
        "rmse_posterior_mean": outcome.rmse_mean,
        "rmse_observation": outcome.rmse_observation,
        "coverage_90": outcome.coverage_90,
        "epochs": outcome.training.history.epochs,
        "training_seconds": outcome.training.seconds,
        "memory": [
            {"flow_depth": depth, **asdict(m), "flow_saved_bytes": m.flow_saved_bytes}
            for depth, results in outcome.memory.items()
            for m in results
        ],
    }


def console_summary(result: DemoResult) -> list[str]:
    """The lines ``hybridflow demo`` prints when it is done."""
    history = result.training.history
    lines = [f"hybridflow demo finished in {duration(result.seconds)}"]
    lines.append(
        f"  trained {history.epochs} epochs in {duration(result.training.seconds)}; posterior "
        f"mean RMSE {result.rmse_mean:.3f} (observation: {result.rmse_observation:.3f}); 90% "
        f"intervals cover {100 * result.coverage_90:.0f}% of true pixels"
    )
    for depth, results in result.memory.items():
        for m in results:
            lines.append(
                f"  {depth:>2} steps per scale, {m.mode:>6} mode: one training step peaks at "
                f"{mib(m.peak_bytes)}; the flow keeps {mib(m.flow_saved_bytes)} for backward"
            )
    note = next((m.note for rs in result.memory.values() for m in rs if m.note), None)
    if note:
        lines.append(f"  (peak memory not measured: {note})")
    for role in ("report", "posterior", "curve", "samples", "model"):
        lines.append(f"  {role:<10} {result.files[role]}")
    return lines
