"""``hybridflow sample --model FILE``: posterior samples for given observations.

Observations come from a tensor file (``--observations x.pt``: a tensor ``(B, *x_shape)`` or
one observation ``x_shape``, or a dict holding one under ``"x"``) or from the task's held-out
reference observations (``--held-out 0 1 2``, the default being the first four; needs a model
trained by ``hybridflow train`` or ``hybridflow demo``, whose recipe names the task). Writes a
``.pt`` file (``torch.load(..., weights_only=True)``) holding ``samples``
``(num, B, *theta_shape)``, ``observations``, ``mean``, ``std`` and, for held-out
observations, ``truth`` and (vector tasks) the share of samples inside the prior's support,
``inside_prior``; where the task has a reference posterior also ``reference`` samples and the
``c2st`` of each observation, which are printed. ``--png`` also draws them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from hybridflow.cli.errors import UsageError
from hybridflow.cli.figures import image_posterior, vector_posterior
from hybridflow.cli.help import add_command, add_threads_flag
from hybridflow.cli.outputs import output_folder
from hybridflow.cli.recipe import build_task, check_recipe
from hybridflow.cli.threads import torch_threads
from hybridflow.distributions import ConditionalFlow, FlowEnsemble, support_bounds
from hybridflow.io import atomic_torch_save, load, read_torch_file
from hybridflow.sbi import Task, c2st, rejection_sample

__all__ = ["SUMMARY", "add_parser", "draw_samples", "load_flow", "read_observations", "run"]

SUMMARY = "draw posterior samples from a saved model"
"""The line of ``hybridflow sample`` in ``hybridflow --help``."""


def load_flow(path: str | Path) -> tuple[ConditionalFlow | FlowEnsemble, dict[str, Any]]:
    """Load a conditional flow saved with :func:`hybridflow.save`; ``(flow, metadata)``.

    Raises:
        UsageError: no such file, or not a conditional flow.
        FileFormatError: not a sound hybridflow model file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist")
    flow, metadata = load(path)
    if not isinstance(flow, (ConditionalFlow, FlowEnsemble)):
        raise UsageError(
            f"{path} holds a {type(flow).__name__}, not a ConditionalFlow or FlowEnsemble; "
            "sampling a posterior needs a conditional flow"
        )
    return flow.eval(), metadata


def read_observations(path: str | Path) -> Tensor:
    """Observations from a tensor file: a tensor, or a dict with the tensor under ``"x"``.

    Raises:
        UsageError: no such file, or no tensor in it.
        FileFormatError: not a file :func:`torch.load` reads with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"observation file {path} does not exist")
    data = read_torch_file(path, map_location="cpu", what="tensor file of observations")
    if isinstance(data, dict) and isinstance(data.get("x"), Tensor):
        data = data["x"]
    if not isinstance(data, Tensor) or not data.is_floating_point():
        raise UsageError(
            f"{path} must hold a floating-point tensor of observations (or a dict with one "
            f"under 'x'), got {type(data).__name__}"
        )
    return data


def draw_samples(
    flow: ConditionalFlow | FlowEnsemble, observations: Tensor, num: int, seed: int
) -> Tensor:
    """``num`` posterior samples ``(num, B, *event_shape)`` for a batch of observations,
    reproducible from ``seed`` (the global random state is left as it was).

    Raises:
        UsageError: observations that do not fit the flow (the message gives both shapes).
    """
    with _seeded_draws(seed):
        return flow(observations).sample((num,))


@contextlib.contextmanager
def _seeded_draws(seed: int) -> Iterator[None]:
    """Draws without grad, reproducible from ``seed``, the global random state left as it was;
    a flow's ``ValueError`` (observations that do not fit it) becomes a :class:`UsageError`."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        try:
            yield
        except ValueError as error:
            raise UsageError(str(error)) from error


def bounded_prior(task: Task | None) -> Distribution | None:
    """The task's prior when it bounds vector parameters (a box, a half line), else ``None``."""
    prior = None if task is None else getattr(task, "prior", None)
    if prior is None or len(prior.event_shape) != 1:
        return None
    lower, upper = support_bounds(prior, prior.event_shape[0])
    return prior if any(math.isfinite(v) for v in lower + upper) else None


def draw_inside(
    flow: ConditionalFlow | FlowEnsemble,
    observations: Tensor,
    num: int,
    seed: int,
    prior: Distribution,
) -> tuple[Tensor, Tensor]:
    """``num`` samples ``(num, B, D)`` per observation, drawn by rejection inside the prior's
    support (:func:`~hybridflow.sbi.rejection_sample`: a flow on all of R^D leaks past a box),
    and per observation the share of the flow's draws that fell inside."""
    with _seeded_draws(seed):
        drawn = [
            rejection_sample(flow, observations[b : b + 1], num, prior=prior)
            for b in range(observations.shape[0])
        ]
    rates = torch.tensor([d.acceptance_rate for d in drawn], dtype=torch.float64)
    return torch.stack([d.samples for d in drawn], dim=1), rates


def _reference(task: Task, observations: Tensor, num: int, seed: int) -> Tensor | None:
    """``num`` reference posterior samples ``(num, B, D)`` per observation, or ``None`` when
    the task has no reference posterior."""
    generator = torch.Generator().manual_seed(seed)
    try:
        draws = [task.reference_posterior(x, num, generator) for x in observations]
    except NotImplementedError:
        return None
    return torch.stack(draws, dim=1)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``sample`` and its flags."""
    parser = add_command(subparsers, "sample", SUMMARY, __doc__)
    parser.add_argument("--model", required=True, type=Path, help="model file (model.pt)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--observations", type=Path, help="tensor file of observations")
    source.add_argument(
        "--held-out", type=int, nargs="+", metavar="INDEX", help="the task's held-out observations"
    )
    parser.add_argument("--num", type=int, default=256, help="samples per observation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples")
    parser.add_argument("--out", type=Path, default=Path("samples.pt"), help="output .pt file")
    parser.add_argument("--png", type=Path, help="also draw the samples to this PNG")
    add_threads_flag(parser, "as train and the demo")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first (repeatable), so that a model with your own "
        "configurable summary network loads; it runs that module's code",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing (errors only)")
    parser.add_argument(
        "--c2st",
        choices=["sbibm", "fast", "none"],
        default="sbibm",
        help="for held-out observations of a task with a reference posterior: draw as many "
        "reference samples, print the C2ST of each observation with this recipe (sbibm's "
        "reference classifier, or its early-stopping variant)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``hybridflow sample``; returns the exit status."""
    if args.num < 2:
        raise UsageError(f"--num must be at least 2 (mean and std need two), got {args.num}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.out.suffix != ".pt":
        raise UsageError(f"--out must name a .pt file, got {args.out}")
    if args.png is not None and args.png.suffix.lower() != ".png":
        raise UsageError(f"--png must name a .png file, got {args.png}")
    with torch_threads(args.threads):
        return _run(args)


def _import_modules(names: list[str]) -> None:
    """Import the user's modules (``--import``), which register their configurable classes."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise UsageError(f"--import {name}: cannot import it ({error})") from error


def _run(args: argparse.Namespace) -> int:
    """Read the model and the observations, check the outputs, sample, write."""
    _import_modules(args.imports)
    if args.quiet:
        with contextlib.redirect_stdout(io.StringIO()):
            return _sample(args)
    return _sample(args)


def _sample(args: argparse.Namespace) -> int:
    flow, metadata = load_flow(args.model)
    truth, missing, task = None, None, None
    if args.observations is not None:
        observations = read_observations(args.observations)
        shape = flow.observation_shape
        if shape is not None and observations.dim() == len(shape):
            observations = observations.unsqueeze(0)  # one unbatched observation
        titles = [f"observation {i}" for i in range(observations.shape[0])]
    else:
        if "recipe" not in metadata:
            raise UsageError(
                f"{args.model} has no recipe in its metadata (it was not saved by hybridflow "
                "train or demo), so its task is unknown: pass --observations FILE"
            )
        task = build_task(check_recipe(metadata["recipe"], f"{args.model} metadata"))
        indices = args.held_out if args.held_out is not None else [0, 1, 2, 3]
        if min(indices) < 0:
            raise UsageError(f"--held-out indices must be >= 0, got {indices}")
        pairs = [task.observation(i) for i in indices]
        truth = torch.stack([theta for theta, _ in pairs])
        observations = torch.stack([x for _, x in pairs])
        titles = [f"held-out {i}" for i in indices]
        mask = getattr(task, "mask", None)  # the inpainting task's observed pixels
        missing = None if mask is None else ~mask
    with ExitStack() as folders:  # after every input is read: a refusal creates nothing
        for target in (args.out, args.png):
            if target is not None:
                folders.enter_context(output_folder(target.parent))
        return _write(args, flow, task, observations, truth, titles, missing)


def _write(
    args: argparse.Namespace,
    flow: ConditionalFlow | FlowEnsemble,
    task: Task | None,
    observations: Tensor,
    truth: Tensor | None,
    titles: list[str],
    missing: Tensor | None,
) -> int:
    """Sample and write ``args.out`` (and ``args.png``)."""
    prior = bounded_prior(task)
    if prior is None:
        samples, inside = draw_samples(flow, observations, args.num, args.seed), None
    else:
        samples, inside = draw_inside(flow, observations, args.num, args.seed, prior)
    result = {
        "samples": samples,
        "observations": observations,
        "mean": samples.mean(0),
        "std": samples.std(0),
    }
    if truth is not None:
        result["truth"] = truth
    reference = None
    if task is not None and samples.dim() == 3 and args.c2st != "none":
        reference = _reference(task, observations, args.num, args.seed)
    if reference is not None:
        scores = [
            c2st(reference[:, b], samples[:, b], recipe=args.c2st) for b in range(samples.shape[1])
        ]
        result["reference"] = reference
        result["c2st"] = torch.tensor(scores, dtype=torch.float64)
        print(
            f"C2ST against the reference posterior ({args.c2st} recipe; 0.5 = perfect): "
            + ", ".join(f"{v:.3f}" for v in scores)
            + f"; mean {sum(scores) / len(scores):.3f}"
        )
    if task is not None and samples.dim() == 3:
        if inside is None:  # an unbounded prior: every sample lies inside
            check = task.prior.support.check(samples).reshape(*samples.shape[:2], -1).all(-1)
            inside = check.double().mean(0)
        result["inside_prior"] = inside
        rates = ", ".join(f"{float(r):.1%}" for r in inside)
        rejected = "" if bool((inside == 1).all()) else " (the others rejected)"
        print(f"samples inside the prior's support: {rates}{rejected}")
    atomic_torch_save(result, args.out)
    print(
        f"wrote {args.out}: samples {tuple(samples.shape)} for {observations.shape[0]} "
        "observation(s)"
    )
    if args.png is not None:
        if samples.dim() == 5:
            path = image_posterior(
                observations, samples, args.png, truth, titles=titles, missing=missing
            )
        elif samples.dim() == 3:
            path = vector_posterior(samples, args.png, truth, titles=titles, reference=reference)
        else:
            print(f"no figure: parameters of shape {tuple(samples.shape[2:])}", file=sys.stderr)
            return 0
        print(f"wrote {path}")
    return 0
