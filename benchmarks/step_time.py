"""Time per training step, store vs invert vs checkpoint vs tiled vs auto, side by side.

The Glow-like models of ``common.py`` (same parameters in every mode) take turns, one step
each, for ``--repeats`` rounds after a warm-up; the median per mode is reported with its
ratio to store mode. Interleaving puts every mode under the same machine load, which fresh
processes timed one after another do not. Peak memory is measured by ``memory_depth.py``.
Mode ``tiled`` is invert mode with the couplings run tile by tile (``--tile-size``); its
ratio to ``invert`` is the cost of the halos and of the per-tile calls. Mode ``auto`` is the
chain's own choice (store while plain autograd keeps at most 64 MiB): it should match
``store`` at small depths and ``invert`` at large ones.

    python benchmarks/step_time.py --size 128 --depths 4 32
    python benchmarks/step_time.py --size 512 --depths 16 --modes invert tiled --tile-size 128
    OMP_WAIT_POLICY=PASSIVE python benchmarks/step_time.py --size 128 --depths 4 32

Mode ``floor`` is the least any reconstruction can cost: a store step followed by one no-grad
forward pass of the same model (a reconstructing backward runs every layer's inverse once,
which costs about its forward; a coupling's inverse is its conditioner's forward). Column
``vs floor`` is each mode's time over it (compiled modes: over the compiled floor): how much of
invert mode's extra time is not that inherent pass.

``--compiled`` adds ``torch.compile`` (Inductor) steps of store and invert mode and the
compiled floor (compiled store step, compiled no-grad forward), compared with the eager store
step (the first calls compile: a minute or more per model on CPU):

    python benchmarks/step_time.py --size 64 --depths 16 64 --modes store invert floor --compiled

``--vector`` times the vector posterior of issue 14 instead: a ConditionalFlow
(``coupling_flow(5, 32)``, 5 steps of spline couplings, an MLP summary of 100 numbers) at
batch 256, in store, invert and auto mode (``coupling_flow``'s default), eager and, with
``--compiled``, under ``torch.compile`` (Inductor; the first calls compile, minutes on CPU):

    python benchmarks/step_time.py --vector --repeats 21
    python benchmarks/step_time.py --vector --compiled
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import GlowLike, add_size_options, interleaved_medians, training_step

from hybridflow.distributions import ConditionalFlow, coupling_flow
from hybridflow.summary import MLP

MODES = ("store", "invert", "checkpoint", "tiled", "auto", "floor")
VECTOR_MODES = ("store", "invert", "auto")
COMPILED_MODES = ("store", "invert", "floor")


def floor_of(mode: str) -> str:
    """The floor a mode is compared with: the compiled one for compiled modes."""
    return "compiled floor" if mode.startswith("compiled") else "floor"


def _no_grad_forward(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def floor_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    forward: Callable[[torch.nn.Module, torch.Tensor], None] | None = None,
) -> None:
    """A store-mode step and then one no-grad forward pass of the same model: the least a
    reconstructing step can cost, since it runs every layer's inverse (about its forward)
    once more in backward. ``forward``: that pass (compiled with ``--compiled``)."""
    training_step(model, optimizer, x)
    (forward or _no_grad_forward)(model, x)


class _VectorStep:
    """One Adam step of a fresh vector ConditionalFlow (seed 0) in ``mode``; its negative
    log-likelihood optionally compiled."""

    def __init__(self, mode: str, compiled: bool, theta: torch.Tensor, x: torch.Tensor) -> None:
        torch.manual_seed(0)
        self.flow = ConditionalFlow(
            coupling_flow(5, 32, mode=mode), MLP(100, 32), event_shape=(5,), validate=False
        )
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=1e-4)
        self.theta, self.x = theta, x
        self.loss = torch.compile(self._loss) if compiled else self._loss

    def _loss(self) -> torch.Tensor:
        return -self.flow(self.x).log_prob(self.theta).mean()

    def __call__(self) -> None:
        self.optimizer.zero_grad()
        self.loss().backward()
        self.optimizer.step()


def vector_rows(repeats: int, compiled: bool) -> list[dict]:
    """Median step times of the vector ConditionalFlow in each mode, interleaved."""
    torch.manual_seed(0)
    theta, x = torch.randn(256, 5), torch.randn(256, 100)
    steps = {mode: _VectorStep(mode, False, theta, x) for mode in VECTOR_MODES}
    if compiled:
        steps |= {f"compiled {m}": _VectorStep(m, True, theta, x) for m in VECTOR_MODES}
    for step in steps.values():  # warm-up: ActNorm init, auto's probe, compilation
        for _ in range(3):
            step()
    medians = interleaved_medians(steps, repeats)
    return [
        {"mode": name, "ms": ms, "ratio": ms / medians["store"]} for name, ms in medians.items()
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_options(parser, size=64, depths=[4, 16], batch=4, hidden=64, repeats=7)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES[:3]))
    parser.add_argument("--tile-size", type=int, default=128, help="tile edge of mode tiled")
    parser.add_argument("--vector", action="store_true", help="the vector ConditionalFlow")
    parser.add_argument(
        "--compiled", action="store_true", help="also time compiled store and invert steps"
    )
    args = parser.parse_args(argv)
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    if args.vector:
        rows = vector_rows(args.repeats, args.compiled)
        print(
            "vector ConditionalFlow step (theta 5-d, x 100-d, MLP summary, batch 256), "
            f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={policy}, median of "
            f"{args.repeats}"
        )
        for r in rows:
            print(f"{r['mode']:>16} {r['ms']:>8.2f} ms  {r['ratio']:.3f}x store")
        return rows
    x = torch.randn(args.batch, 3, args.size, args.size)
    rows = []
    for depth in args.depths:
        models, optimizers = {}, {}
        for mode in args.modes:
            torch.manual_seed(0)
            models[mode] = (
                GlowLike(3, depth, args.hidden, "invert", tile_size=args.tile_size)
                if mode == "tiled"
                else GlowLike(3, depth, args.hidden, "store" if mode == "floor" else mode)
            )
            optimizers[mode] = torch.optim.Adam(models[mode].parameters(), lr=1e-4)
        steps = {mode: floor_step if mode == "floor" else training_step for mode in args.modes}
        if args.compiled:
            compiled_step = torch.compile(training_step)
            compiled_forward = torch.compile(_no_grad_forward)
            for mode in COMPILED_MODES:
                torch.manual_seed(0)
                name = f"compiled {mode}"
                models[name] = GlowLike(3, depth, args.hidden, "store" if mode == "floor" else mode)
                optimizers[name] = torch.optim.Adam(models[name].parameters(), lr=1e-4)
                steps[name] = (
                    partial(floor_step, forward=compiled_forward)
                    if mode == "floor"
                    else compiled_step
                )
        for name, step in steps.items():  # warm-up: ActNorm init, optimizer state, compilation
            for _ in range(3 if name.startswith("compiled") else 2):
                step(models[name], optimizers[name], x)
        runs = {
            name: partial(step, models[name], optimizers[name], x) for name, step in steps.items()
        }
        medians = interleaved_medians(runs, args.repeats)
        for mode in steps:
            rows.append(
                {
                    "depth": depth,
                    "mode": mode,
                    "ms": medians[mode],
                    "ratio": medians[mode] / medians.get("store", medians[mode]),
                    "vs_invert": medians[mode] / medians.get("invert", medians[mode]),
                    "vs_floor": medians[mode] / medians.get(floor_of(mode), medians[mode]),
                }
            )
    print(
        f"Glow-like step, {args.size}x{args.size}, batch {args.batch}, hidden {args.hidden}, "
        f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={policy}, median of {args.repeats}"
    )
    print(
        f"{'depth':>5} {'mode':>16} {'ms/step':>9} {'vs store':>8} {'vs invert':>9} {'vs floor':>8}"
    )
    for r in rows:
        print(
            f"{r['depth']:>5} {r['mode']:>16} {r['ms']:>9.0f} {r['ratio']:>8.2f} "
            f"{r['vs_invert']:>9.2f} {r['vs_floor']:>8.2f}"
        )
    return rows


if __name__ == "__main__":
    main()
