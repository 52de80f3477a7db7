"""Training recipes: a task, a conditional flow and NPE settings, as plain data from a file.

A recipe is a dict of sections, read from TOML (or YAML where PyYAML is installed)::

    [task]          name = "digits" | "two_moons" | "slcp" | "gaussian_linear", plus the
                    task's own options (digits: kind, noise_std, blur_std, keep, mask_seed;
                    gaussian_linear: dim)
    [simulations]   count, seed
    [flow]          kind = "glow" (image parameters) | "coupling" (vectors), mode, depth,
                    hidden, seed, ensemble (K members, seeds seed .. seed + K - 1, whose
                    mixture is the posterior; 3 for coupling, 1 for glow); glow: levels,
                    squeeze, clamp; coupling: coupling ("spline", "affine" from 8
                    parameters up: AFFINE_FROM), bins, bound, support ("prior": the flow's
                    mass stays inside a bounded prior; "real")
    [summary]       kind = "cnn" | "mlp" | "none", features, standardize (z-score the
                    observations with statistics of the training simulations: true for mlp
                    and none, false for cnn); cnn: hidden, depth, output, pool_size; mlp:
                    hidden, depth, dropout
    [training]      the fields of hybridflow.sbi.NPEConfig (false for "none" in patience and
                    clip_grad_norm)

Every section and key is optional but ``task.name``; :func:`check_recipe` fills the defaults
(which depend on the task: a Glow with a CNN summary for images, couplings with an MLP for
vectors) and refuses unknown sections and keys by name. The checked recipe is stored in the
saved model's metadata, so ``hybridflow sample`` can rebuild the task.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import fields
from typing import Any

import torch

from hybridflow.cli.errors import UsageError
from hybridflow.cli.recipe_defaults import (
    FLOW_MINIMUMS,
    FLOW_OPTIONS,
    SIMULATION_MINIMUMS,
    SIMULATION_OPTIONS,
    SUMMARY_MINIMUMS,
    SUMMARY_OPTIONS,
    TASK_OPTIONS,
    TASKS,
    size_defaults,
    task_sizes,
)
from hybridflow.cli.recipe_files import read_recipe_file
from hybridflow.distributions import ConditionalFlow, FlowEnsemble, coupling_flow
from hybridflow.networks import Glow
from hybridflow.sbi import NPEConfig, Task
from hybridflow.summary import CNN, MLP, Sequential, Standardize

__all__ = [
    "build_flow",
    "build_task",
    "check_recipe",
    "fit_standardize",
    "load_recipe",
    "npe_config",
    "recipe_summary",
]

_OPTIONAL = ("patience", "clip_grad_norm")  # NPEConfig fields where `false` means None


def _where(source: str, section: str) -> str:
    return f"{source}: [{section}]"


def _fill(
    given: Any, defaults: dict[str, Any], source: str, section: str, fixed: tuple[str, ...]
) -> dict[str, Any]:
    """``defaults`` updated with ``given``; unknown keys are refused by name."""
    if not isinstance(given, dict):
        raise UsageError(f"{_where(source, section)} must be a table, got {given!r}")
    unknown = sorted(set(given) - set(defaults) - set(fixed))
    if unknown:
        known = ", ".join(sorted({*defaults, *fixed}))
        raise UsageError(
            f"{_where(source, section)} has unknown key(s) {', '.join(unknown)}; known: {known}"
        )
    return {**defaults, **given}


def _check_sizes(
    values: dict[str, Any], minimums: dict[str, int], source: str, section: str
) -> None:
    """Refuse a size that is not an int of at least its minimum (naming section and key)."""
    for key, minimum in minimums.items():
        value = values.get(key)
        if key in values and (
            not isinstance(value, int) or isinstance(value, bool) or value < minimum
        ):
            raise UsageError(
                f"{_where(source, section)} {key} must be an int >= {minimum}, got {value!r}"
            )


def _choice(value: Any, choices: list[str], source: str, section: str, key: str) -> str:
    if value not in choices:
        raise UsageError(
            f"{_where(source, section)} {key} must be one of {', '.join(choices)}, got {value!r}"
        )
    return value


def _kind(given: dict[str, Any], default: str, table: dict, source: str, section: str) -> str:
    """The section's ``kind``: given or ``default``, one of ``table``'s."""
    return _choice(given.get("kind", default), sorted(table), source, section, "kind")


def _checked_flow(given: Any, task: str, images: bool, source: str) -> dict[str, Any]:
    """The ``[flow]`` section, checked and filled: a Glow for images, couplings for vectors."""
    if not isinstance(given, dict):
        raise UsageError(f"{_where(source, 'flow')} must be a table, got {given!r}")
    kind = _kind(given, "glow" if images else "coupling", FLOW_OPTIONS, source, "flow")
    if (kind == "glow") != images:
        shape, other = ("image", "vectors") if kind == "glow" else ("vector", "images")
        fit = "coupling" if kind == "glow" else "glow"
        raise UsageError(
            f"{_where(source, 'flow')} kind {kind!r} needs {shape} parameters; task {task!r} "
            f"has {other}: use kind = {fit!r}"
        )
    flow = {"kind": kind, **_fill(given, FLOW_OPTIONS[kind], source, "flow", ("kind",))}
    _check_sizes(flow, FLOW_MINIMUMS, source, "flow")
    if kind == "coupling":
        _choice(flow["support"], ["prior", "real"], source, "flow", "support")
    return flow


def _checked_summary(
    given: Any, flow_kind: str, task: str, images: bool, source: str
) -> dict[str, Any]:
    """The ``[summary]`` section, checked and filled: a CNN for images, an MLP for vectors."""
    if not isinstance(given, dict):
        raise UsageError(f"{_where(source, 'summary')} must be a table, got {given!r}")
    kind = _kind(given, "cnn" if images else "mlp", SUMMARY_OPTIONS, source, "summary")
    if kind == "cnn" and not images:
        raise UsageError(
            f"{_where(source, 'summary')} kind 'cnn' needs image observations; task {task!r} "
            "has vectors: use kind = 'mlp' or 'none'"
        )
    summary = {"kind": kind, **_fill(given, SUMMARY_OPTIONS[kind], source, "summary", ("kind",))}
    _check_sizes(summary, SUMMARY_MINIMUMS[kind], source, "summary")
    if not isinstance(summary["standardize"], bool):
        raise UsageError(
            f"{_where(source, 'summary')} standardize must be true or false, got "
            f"{summary['standardize']!r}"
        )
    if kind == "cnn" and summary["output"] is None:
        summary["output"] = "field" if flow_kind == "glow" else "vector"
    return summary


def check_recipe(
    data: Any, source: str = "recipe", sizes: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Check a recipe and fill in its defaults; returns a new dict.

    Args:
        data: the recipe as read from a file.
        source: where it came from (the file name), quoted in errors.
        sizes: entries of one parameter and of one observation, when the trained task
            differs from the named one (a benchmark variant); default the named task's.

    Raises:
        UsageError: an unknown section, key, task or kind, or a value of the wrong type,
            named with its section.

    Example:
        >>> recipe = check_recipe({"task": {"name": "two_moons"}, "training": {"patience": False}})
        >>> recipe["flow"]["kind"], recipe["summary"]["kind"], recipe["training"]["patience"]
        ('coupling', 'mlp', None)
    """
    if not isinstance(data, dict):
        raise UsageError(f"{source}: a recipe is a table of sections, got {type(data).__name__}")
    sections = ("task", "simulations", "flow", "summary", "training")
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise UsageError(
            f"{source}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sections)}"
        )
    data = copy.deepcopy(data)
    task_section = data.get("task")
    if not isinstance(task_section, dict) or "name" not in task_section:
        raise UsageError(f"{source}: [task] name is required (one of {', '.join(sorted(TASKS))})")
    name = _choice(task_section["name"], sorted(TASKS), source, "task", "name")
    task = _fill(task_section, TASK_OPTIONS[name], source, "task", ("name",))
    images = name == "digits"
    simulations = _fill(data.get("simulations", {}), SIMULATION_OPTIONS, source, "simulations", ())
    _check_sizes(simulations, SIMULATION_MINIMUMS, source, "simulations")
    flow = _checked_flow(data.get("flow", {}), name, images, source)
    summary = _checked_summary(data.get("summary", {}), flow["kind"], name, images, source)
    options = {k: v for k, v in task.items() if k != "name"}
    if not images:  # defaults that follow the task's sizes
        coupling, width, dropout = size_defaults(*(sizes or task_sizes(name, options)))
        if flow["kind"] == "coupling" and "coupling" not in data.get("flow", {}):
            flow["coupling"] = coupling
        if summary["kind"] == "mlp":
            for key, value in (("hidden", width), ("dropout", dropout)):
                if key not in data.get("summary", {}):
                    summary[key] = value
    defaults = {f.name: getattr(NPEConfig(), f.name) for f in fields(NPEConfig)}
    defaults.pop("progress")
    training = _fill(data.get("training", {}), defaults, source, "training", ())
    for key in _OPTIONAL:
        if training[key] is False:
            training[key] = None
    try:
        NPEConfig(**training)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{_where(source, 'training')} {error}") from error
    return {
        "task": {"name": name, **options},
        "simulations": simulations,
        "flow": flow,
        "summary": summary,
        "training": training,
    }


def load_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a recipe from a ``.toml`` (or ``.yaml``/``.yml``) file
    (:func:`~hybridflow.cli.recipe_files.read_recipe_file`) and check it.

    Raises:
        UsageError: no such file, a file that does not parse, or a bad recipe.
    """
    return check_recipe(read_recipe_file(path), str(path))


def build_task(recipe: dict[str, Any]) -> Task:
    """The task of a checked recipe.

    Raises:
        UsageError: the task refuses an option (the message quotes it).
    """
    options = {k: v for k, v in recipe["task"].items() if k != "name"}
    try:
        return TASKS[recipe["task"]["name"]](**options)
    except (TypeError, ValueError) as error:
        raise UsageError(f"[task] {error}") from error


def build_flow(recipe: dict[str, Any], task: Task) -> ConditionalFlow | FlowEnsemble:
    """The conditional flow of a checked recipe for ``task`` (weights from ``flow.seed``;
    the global random state is left as it was): a :class:`FlowEnsemble` of ``flow.ensemble``
    members seeded ``seed, seed + 1, ...`` when that is above 1.

    Raises:
        UsageError: a size the network refuses, e.g. images not divisible by
            ``2**levels``.
    """
    seed, count = recipe["flow"]["seed"], recipe["flow"].get("ensemble", 1)
    if count == 1:
        return _build_member(recipe, task, seed)
    return FlowEnsemble(*(_build_member(recipe, task, seed + k) for k in range(count)))


def _build_member(recipe: dict[str, Any], task: Task, seed: int) -> ConditionalFlow:
    flow, summary = recipe["flow"], recipe["summary"]
    features = summary.get("features", 0)
    x_shape, theta_shape = task.x_shape, task.theta_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            if summary["kind"] == "cnn":
                network: torch.nn.Module | None = CNN(
                    x_shape[0],
                    features,
                    spatial_dims=len(x_shape) - 1,
                    hidden=summary["hidden"],
                    depth=summary["depth"],
                    output=summary["output"],
                    pool_size=summary["pool_size"],
                )
            elif summary["kind"] == "mlp":
                network = MLP(
                    list(x_shape),
                    features,
                    summary["hidden"],
                    summary["depth"],
                    dropout=summary["dropout"],
                )
            else:
                network = None
                features = math.prod(x_shape)
                if len(x_shape) != 1:
                    raise UsageError(
                        "[summary] kind 'none' needs vector observations; use 'cnn' for images"
                    )
            if summary.get("standardize", False):  # fitted by fit_standardize
                scaler = Standardize(x_shape)
                network = scaler if network is None else Sequential(scaler, network)
            if flow["kind"] == "glow":
                sizes = theta_shape[1:]
                if any(s % 2 ** flow["levels"] for s in sizes):
                    raise UsageError(
                        f"[flow] levels = {flow['levels']}: the parameter's sizes {sizes} must "
                        f"be divisible by 2**levels = {2 ** flow['levels']}"
                    )
                transform = Glow(
                    theta_shape[0],
                    levels=flow["levels"],
                    depth=flow["depth"],
                    hidden=flow["hidden"],
                    cond_features=features,
                    spatial_dims=len(theta_shape) - 1,
                    mode=flow["mode"],
                    squeeze=flow["squeeze"],
                    clamp=flow["clamp"],
                    seed=seed,
                )
            else:
                transform = coupling_flow(
                    theta_shape[0],
                    features,
                    depth=flow["depth"],
                    hidden=flow["hidden"],
                    coupling=flow["coupling"],
                    bins=flow["bins"],
                    bound=flow["bound"],
                    mode=flow["mode"],
                    seed=seed,
                    support=task.prior if flow["support"] == "prior" else None,
                )
        except (TypeError, ValueError) as error:
            if isinstance(error, UsageError):
                raise
            raise UsageError(f"[flow]/[summary] {error}") from error
    return ConditionalFlow(transform, network, event_shape=theta_shape, observation_shape=x_shape)


def fit_standardize(flow: ConditionalFlow | FlowEnsemble, x: torch.Tensor) -> None:
    """Fit the :class:`~hybridflow.summary.Standardize` of a recipe's summaries (if they have
    one) on the training observations ``x`` ``(N, *x_shape)``."""
    for module in flow.modules():
        if isinstance(module, Standardize):
            module.fit(x)


def npe_config(recipe: dict[str, Any], *, progress: bool, **overrides: Any) -> NPEConfig:
    """The :class:`~hybridflow.sbi.NPEConfig` of a checked recipe (``overrides`` win).

    Raises:
        UsageError: an override out of range.
    """
    try:
        return NPEConfig(**{**recipe["training"], **overrides, "progress": progress})
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from error


def recipe_summary(recipe: dict[str, Any]) -> str:
    """One line that says what a recipe trains."""
    task, flow, summary = recipe["task"], recipe["flow"], recipe["summary"]
    options = ", ".join(f"{k}={v}" for k, v in task.items() if k != "name")
    shape = f"levels={flow['levels']}, " if flow["kind"] == "glow" else ""
    count = flow.get("ensemble", 1)
    flows = f"an ensemble of {count} {flow['kind']} flows" if count > 1 else f"{flow['kind']} flow"
    return (
        f"task {task['name']}({options}); {flows} ({shape}depth={flow['depth']}, "
        f"hidden={flow['hidden']}, mode={flow['mode']}) with a {summary['kind']} summary; "
        f"{recipe['simulations']['count']} simulations"
    )
