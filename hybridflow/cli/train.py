"""``hybridflow train --config FILE``: neural posterior estimation from a recipe, resumable.

Writes to the output folder (default ``runs/<config name>``): ``checkpoint.pt`` after every
epoch (what ``--resume`` continues from), then ``model.pt`` (:func:`hybridflow.save`: config,
weights and the recipe as metadata), ``history.csv`` and ``training_curve.png``. Every file is
written atomically, so an interrupted run leaves the previous checkpoint whole.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from hybridflow.cli.errors import UsageError
from hybridflow.cli.figures import training_curve
from hybridflow.cli.help import add_command, add_threads_flag
from hybridflow.cli.outputs import output_folder
from hybridflow.cli.recipe import (
    build_flow,
    build_task,
    fit_standardize,
    load_recipe,
    npe_config,
    recipe_summary,
)
from hybridflow.cli.threads import torch_threads
from hybridflow.distributions import ConditionalFlow, FlowEnsemble
from hybridflow.errors import FileFormatError
from hybridflow.io import load_checkpoint, pyplot, save, write_text
from hybridflow.sbi import EpochRecord, NPEHistory, NPETrainer, Task, simulate

__all__ = ["SUMMARY", "TrainResult", "add_parser", "run", "train_recipe"]

SUMMARY = "train a posterior flow from a TOML config, with checkpoints and resume"
"""The line of ``hybridflow train`` in ``hybridflow --help``."""

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"


@dataclass
class TrainResult:
    """What :func:`train_recipe` produced.

    Attributes:
        flow: the trained flow (weights of the best epoch), in eval mode.
        task: the recipe's task.
        history: the training history (including epochs run before a resume).
        files: the files written, by role (``model``, ``checkpoint``, ``history``,
            ``curve``).
        seconds: wall time of this call.
    """

    flow: ConditionalFlow | FlowEnsemble
    task: Task
    history: NPEHistory
    files: dict[str, Path]
    seconds: float


def _check_members(state: object, flow: ConditionalFlow | FlowEnsemble, path: Path) -> None:
    """Refuse to resume a checkpoint of another number of ensemble members than the recipe
    builds, naming the key to set (the state would not load, and its key lists say less)."""
    if not isinstance(state, dict):
        return  # a damaged file: the trainer's own checks name it
    held = len({key.split(".")[1] for key in state if key.startswith("members.")}) or 1
    built = len(flow) if isinstance(flow, FlowEnsemble) else 1
    if held != built:
        raise UsageError(
            f"cannot resume: {path} holds {held} flow(s) and the recipe builds {built} "
            f"([flow] ensemble; vector recipes default to 3): set ensemble = {held} in the "
            "recipe's [flow] to resume that run, or pass --overwrite to start afresh"
        )


def _history_csv(history: NPEHistory) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", "train_loss", "validation_loss", "learning_rate", "drift"])
    for i, (loss, lr) in enumerate(zip(history.train_loss, history.learning_rate, strict=True)):
        val = history.validation_loss[i] if i < len(history.validation_loss) else ""
        drift = history.drift[i] if i < len(history.drift) else math.nan
        writer.writerow([i + 1, loss, val, lr, "" if math.isnan(drift) else drift])
    return buffer.getvalue()


def train_recipe(
    recipe: dict[str, Any],
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: TextIO | None = sys.stderr,
    **overrides: Any,
) -> TrainResult:
    """Simulate, train and save the flow of a checked recipe into ``out``.

    Args:
        recipe: a recipe checked by :func:`hybridflow.cli.recipe.check_recipe`.
        out: the output folder (created; checked to be writable before any work).
        resume: continue from ``out/checkpoint.pt`` (from scratch when there is none).
        overwrite: start afresh even though ``out/checkpoint.pt`` exists.
        progress: show a progress bar over epochs.
        log: where to print what happens (``None``: nowhere).
        **overrides: fields of :class:`~hybridflow.sbi.NPEConfig` that replace the recipe's
            (``max_epochs`` may change on resume; others must match the checkpoint).

    Raises:
        UsageError: a bad recipe or override, an output folder that cannot be written, an
            existing checkpoint without ``resume`` or ``overwrite``, or (with ``resume``) a
            checkpoint that is damaged or does not match the recipe.
        HybridflowError: what the trainer refuses, e.g. too few simulations for the
            validation fraction (:class:`~hybridflow.errors.InputError`). A failed run leaves
            no empty output folder.
    """
    start = time.perf_counter()

    def say(message: str) -> None:
        if log is not None:
            print(message, file=log, flush=True)

    folder = Path(out)
    checkpoint = folder / CHECKPOINT
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if checkpoint.exists() and not (resume or overwrite):
        raise UsageError(
            f"{checkpoint} exists: pass --resume to continue that run or --overwrite to start "
            "afresh"
        )
    config = npe_config(recipe, progress=progress, **overrides)
    pyplot()  # matplotlib is needed at the end: fail now, not after training, if it is missing
    task = build_task(recipe)
    flow = build_flow(recipe, task)
    trainer = NPETrainer(flow, config, checkpoint=checkpoint)

    def report(record: EpochRecord) -> None:
        if not progress:
            val = "" if record.validation_loss is None else f", val {record.validation_loss:.3f}"
            drift = "" if math.isnan(record.drift) else f", drift {record.drift:.1e}"
            say(f"epoch {record.epoch}: train {record.train_loss:.3f}{val}{drift}")

    with output_folder(folder):  # the work starts: a refused run created nothing
        say(f"training: {recipe_summary(recipe)}")
        count, seed = recipe["simulations"]["count"], recipe["simulations"]["seed"]
        data = simulate(task, count, seed=seed)
        fit_standardize(flow, data.x)  # a resumed run loads the same statistics back
        try:
            if resume and checkpoint.exists():
                saved = load_checkpoint(checkpoint)
                _check_members(saved.get("model"), flow, checkpoint)
                finished = bool(saved.get("finished"))
                epochs = len(saved.get("history", {}).get("train_loss", []))
                if finished and epochs < config.max_epochs:
                    state = (
                        f"a finished run of {epochs} epoch(s): training on to {config.max_epochs}"
                    )
                elif finished:
                    state = "a finished run: nothing more to train (raise --epochs to train on)"
                else:
                    state = "resuming"
                say(f"{checkpoint}: {state}")
            elif resume:
                say(f"no checkpoint at {checkpoint} yet: starting afresh")
            history = trainer.fit(data.theta, data.x, resume=resume, on_epoch_end=report)
        except FileFormatError as error:  # only resuming reads a file: damaged or mismatched
            raise UsageError(f"cannot resume: {error} (--overwrite starts afresh)") from error
        flow.eval()
        final = history.validation_loss[-1] if history.validation_loss else None
        metadata = {
            "recipe": recipe,
            "epochs": history.epochs,
            "best_epoch": history.best_epoch,
            "final_validation_loss": final,
        }
        files = {"checkpoint": checkpoint, "model": folder / MODEL}
        save(flow, files["model"], metadata)
        files["history"] = write_text(folder / "history.csv", _history_csv(history))
        files["curve"] = training_curve(history, folder / "training_curve.png")
    return TrainResult(flow, task, history, files, time.perf_counter() - start)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train`` and its flags."""
    parser = add_command(subparsers, "train", SUMMARY, __doc__)
    parser.add_argument("--config", required=True, type=Path, help="recipe file (.toml, .yaml)")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<config name>)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    group.add_argument(
        "--overwrite", action="store_true", help="start afresh over an existing checkpoint"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="override [training] max_epochs; with --resume, a finished run trains on to N",
    )
    add_threads_flag(parser, "as the demo: these small models run no faster on more")
    parser.add_argument("--quiet", action="store_true", help="print nothing (errors only)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``hybridflow train``; returns the exit status."""
    recipe = load_recipe(args.config)
    out = args.out if args.out is not None else Path("runs") / args.config.stem
    overrides = {} if args.epochs is None else {"max_epochs": args.epochs}
    with torch_threads(args.threads):
        result = train_recipe(
            recipe,
            out,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.quiet,
            log=None if args.quiet else sys.stderr,
            **overrides,
        )
    if args.quiet:
        return 0
    history = result.history
    val = history.validation_loss[history.best_epoch - 1] if history.validation_loss else None
    print(
        f"trained {history.epochs} epoch(s) in {result.seconds:.0f} s; kept epoch "
        f"{history.best_epoch}" + ("" if val is None else f" (validation loss {val:.3f})")
    )
    for role, path in result.files.items():
        print(f"  {role:<10} {path}")
    print(f"next: hybridflow sample --model {result.files['model']} --png samples.png")
    return 0
