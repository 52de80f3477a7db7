"""The defaults of a training recipe: the library's own, read from its signatures, and the few
values the recipe adds (named constants below). The one place a recipe default is written."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from hybridflow.cli.errors import UsageError
from hybridflow.distributions import CouplingKind, coupling_flow
from hybridflow.networks import Glow
from hybridflow.sbi import SLCP, DigitsInverseProblem, GaussianLinear, Task, TwoMoons
from hybridflow.summary import CNN, MLP

__all__ = [
    "AFFINE_FROM",
    "FLOW_MINIMUMS",
    "FLOW_OPTIONS",
    "MLP_SUMMARY_DROPOUT",
    "MLP_SUMMARY_HIDDEN",
    "RECIPE_SEED",
    "SIMULATIONS",
    "SIMULATION_MINIMUMS",
    "SIMULATION_OPTIONS",
    "SUMMARY_FEATURES",
    "SUMMARY_MINIMUMS",
    "SUMMARY_OPTIONS",
    "TASKS",
    "TASK_OPTIONS",
    "library_defaults",
    "size_defaults",
    "task_sizes",
]

TASKS: dict[str, type[Task]] = {
    "digits": DigitsInverseProblem,
    "gaussian_linear": GaussianLinear,
    "slcp": SLCP,
    "two_moons": TwoMoons,
}
"""The tasks a recipe may name, with the class that
:func:`hybridflow.cli.recipe.build_task` calls."""


def library_defaults(function: Callable[..., Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The defaults of ``function``'s parameters ``names``, read from its signature: a recipe
    never restates a library default, so the two cannot disagree.

    Raises:
        TypeError: a name is not a parameter with a default (the library changed: the
            recipe's table below must follow it).

    Example:
        >>> library_defaults(MLP, ("hidden", "depth"))
        {'hidden': 64, 'depth': 2}
    """
    parameters = inspect.signature(function).parameters
    missing = [
        name
        for name in names
        if name not in parameters or parameters[name].default is inspect.Parameter.empty
    ]
    if missing:
        raise TypeError(
            f"recipe defaults: {function.__qualname__} has no default for {', '.join(missing)}"
        )
    return {name: parameters[name].default for name in names}


# What the recipe adds to the library's defaults: the only default values written here.
RECIPE_SEED = 0
"""Seed of a recipe's weights (and of its simulations): a recipe trains the same flow twice."""
SIMULATIONS = 10_000
"""Simulated pairs of a recipe."""
SUMMARY_FEATURES = 8
"""Features of a CNN summary's output (the library's summaries require the number)."""
MLP_SUMMARY_FEATURES = 32
"""Features of an MLP summary's output: more than Gaussian linear's 10-D sufficient statistic
(benchmarks/npe_defaults.py)."""

MLP_SUMMARY_HIDDEN = library_defaults(MLP, ("hidden",))["hidden"]
"""The narrowest hidden layers of a recipe's MLP summary: the MLP's own default."""

AFFINE_FROM = 8
"""Parameters from which a recipe's couplings default to ``"affine"`` (``"spline"`` below).
At 10^4 simulations a spline flow for Gaussian linear's 10 parameters memorises its
training pairs by epoch 7 (training loss -1.40 against the true posterior's -0.79; C2ST
0.552, best validation loss -0.47) where affine couplings reach -0.61 and C2ST 0.524 (0.537
in a second draw of the same flow's samples); two moons (2) and SLCP (5), whose posteriors
are not Gaussian, keep the spline (benchmarks/npe_defaults.py, configs spline, affine and
library). Between 5 and 10 parameters the threshold is not measured."""


MLP_SUMMARY_DROPOUT = 0.1
"""Dropout of a recipe's MLP summary whose observation has more entries than
:data:`MLP_SUMMARY_HIDDEN` (``size_defaults``)."""


def size_defaults(parameters: int, observation: int) -> tuple[CouplingKind, int, float]:
    """The defaults that follow a vector task's sizes (entries of a parameter and of an
    observation): the coupling, ``"affine"`` from :data:`AFFINE_FROM` parameters and
    ``"spline"`` below; the width of an MLP summary's hidden layers, the observation's
    size rounded up to a power of two, at least the MLP's own 64: a narrower layer compresses
    before it can pick the informative entries (SLCP with 92 distractors, 100 numbers: best
    validation loss 6.62 at width 64, 5.97 at 128, 6.08 at 256); and the MLP summary's
    dropout, :data:`MLP_SUMMARY_DROPOUT` for an observation of more entries than
    :data:`MLP_SUMMARY_HIDDEN`, none for smaller ones: at 10^4 simulations a summary of many
    entries fits the noise of those it should ignore (SLCP with distractors: training loss
    3.6 against validation 5.97 without dropout, 4.41 against 5.36 with 0.1, 5.39 with 0.2;
    benchmarks/npe_defaults.py, configs library, dropout1 and dropout2).

    Example:
        >>> size_defaults(2, 2), size_defaults(10, 10), size_defaults(5, 100)
        (('spline', 64, 0.0), ('affine', 64, 0.0), ('spline', 128, 0.1))
    """
    width = max(MLP_SUMMARY_HIDDEN, 2 ** math.ceil(math.log2(observation)))
    dropout = MLP_SUMMARY_DROPOUT if observation > MLP_SUMMARY_HIDDEN else 0.0
    return ("affine" if parameters >= AFFINE_FROM else "spline"), width, dropout


def task_sizes(task: str, options: dict[str, Any]) -> tuple[int, int]:
    """The entries of one parameter and of one observation of recipe task ``task``.

    Raises:
        UsageError: the task refuses an option (the message quotes it).
    """
    try:
        built = TASKS[task](**options)
    except (TypeError, ValueError) as error:
        raise UsageError(f"[task] {error}") from error
    return math.prod(built.theta_shape), math.prod(built.x_shape)


TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "digits": library_defaults(
        DigitsInverseProblem, ("kind", "noise_std", "blur_std", "keep", "mask_seed")
    ),
    "gaussian_linear": library_defaults(GaussianLinear, ("dim",)),
    "slcp": {},
    "two_moons": {},
}
SIMULATION_OPTIONS = {"count": SIMULATIONS, "seed": RECIPE_SEED}
# keys of the recipe's [flow] that the network takes under the same name
FLOW_OPTIONS = {
    "glow": {
        **library_defaults(Glow, ("mode", "depth", "hidden", "levels", "squeeze", "clamp")),
        "seed": RECIPE_SEED,
        "ensemble": 1,
    },
    "coupling": {
        **library_defaults(coupling_flow, ("mode", "depth", "hidden", "coupling", "bins", "bound")),
        "seed": RECIPE_SEED,
        # three members trained jointly, their mixture the posterior: SLCP C2ST 0.765-0.792
        # (four runs, two seeds) against one flow's 0.810-0.812, about as good as one flow on
        # the other tasks, for three times the training time (benchmarks/npe_defaults.py)
        "ensemble": 3,
        # "real": a flow on all of R^D, rejection inside the prior when sampling. "prior" (a
        # Bounded first layer) keeps the mass inside a box, but a posterior that reaches the
        # box's edge becomes a long tail in logit space: two moons C2ST 0.631 with it, 0.536
        # without (benchmarks/npe_defaults.py, configs library and real)
        "support": "real",
    },
}
SUMMARY_OPTIONS = {
    "cnn": {
        "features": SUMMARY_FEATURES,
        **library_defaults(CNN, ("hidden", "depth", "pool_size")),
        "output": None,  # chosen by the flow: "field" for a Glow, else "vector"
        "standardize": False,
    },
    "mlp": {
        "features": MLP_SUMMARY_FEATURES,
        **library_defaults(MLP, ("hidden", "depth", "dropout")),
        "standardize": True,
    },
    "none": {"standardize": True},
}
"""Per task, its options and their defaults."""

# the smallest value of each size a recipe's sections accept
SIMULATION_MINIMUMS = {"count": 2, "seed": 0}
FLOW_MINIMUMS = {"depth": 1, "hidden": 1, "levels": 1, "bins": 1, "seed": 0, "ensemble": 1}
SUMMARY_MINIMUMS = {
    "cnn": {"features": 1, "hidden": 1, "depth": 1, "pool_size": 1},
    "mlp": {"features": 1, "hidden": 1, "depth": 0},
    "none": {},
}
