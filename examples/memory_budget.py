"""Fit a training step into a memory budget with the chain's two knobs, and measure it.

A Glow-like chain (``Squeeze(2)``, then ``depth`` x ActNorm, InvConv1x1, AffineCoupling) on
images, one training step in each of four settings:

* ``store``: plain autograd, every activation kept (memory grows with depth);
* ``invert``: nothing kept per layer, activations rebuilt by inversion in backward;
* ``invert, anchor_every=m``: also keep every m-th activation (bounds float32 drift over
  depth, at the memory of ``depth / m`` activations);
* ``invert, micro_batches=k``: rebuild each layer on ``k`` slices of the batch in turn, so the
  working set of one layer's backward (its conditioner's activations, which dominates once
  nothing is stored) shrinks ``k``-fold, with the same gradients.

For each it prints the bytes kept for backward (saved-tensor hooks) and the peak memory of the
step, measured in a fresh process with :mod:`hybridflow.bench.probes` (Linux ``/proc``).
``hybridflow.graph`` (see ``docs/graph.md``) chooses such settings per segment for a budget.

Run: ``python examples/memory_budget.py --depth 16 --size 64`` (seconds).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import hybridflow as hf
from hybridflow.bench import (
    MEMORY_ENV,
    gaussian_nll,
    measure_peak,
    peak_memory_unavailable,
    run_child,
    saved_bytes,
)
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1, Squeeze

__all__ = ["SETTINGS", "build", "main"]

SETTINGS = {
    "store": {"mode": "store"},
    "invert": {"mode": "invert"},
    "invert, anchor_every=4": {"mode": "invert", "anchor_every": 4},
    "invert, micro_batches=4": {"mode": "invert", "micro_batches": 4},
}


def build(depth: int, hidden: int, **chain_options: object) -> hf.Chain:
    """The chain for 3-channel images, with ``Chain`` options such as ``mode``."""
    torch.manual_seed(0)
    steps = [
        layer
        for _ in range(depth)
        for layer in (ActNorm(12), InvConv1x1(12), AffineCoupling(12, hidden, spatial_dims=2))
    ]
    return hf.Chain(Squeeze(2), *steps, **chain_options)


def _measure(config: dict) -> dict:
    """One setting: saved bytes of the forward pass and the step's peak (in this process)."""
    torch.set_num_threads(1)
    chain = build(config["depth"], config["hidden"], **SETTINGS[config["setting"]])
    optimizer = torch.optim.Adam(chain.parameters(), lr=1e-4)
    x = torch.randn(config["batch"], 3, config["size"], config["size"])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        gaussian_nll(*chain(x)).backward()
        optimizer.step()

    reason = peak_memory_unavailable()
    peak = None if reason else measure_peak(step)
    kept = saved_bytes(lambda: gaussian_nll(*chain(x)))
    return {**config, "saved_bytes": kept, "peak_bytes": peak, "note": reason}


def main(
    depth: int = 16, size: int = 64, batch: int = 8, hidden: int = 64, verbose: bool = True
) -> list[dict]:
    """Measure every setting, each in a fresh process; returns one row per setting."""
    rows = []
    for setting in SETTINGS:
        config = {"setting": setting, "depth": depth, "size": size, "batch": batch}
        rows.append(run_child([__file__], {**config, "hidden": hidden}, MEMORY_ENV))
    if verbose:
        print(f"depth {depth}, {batch} images of {size}x{size}, one training step:")
        print(f"{'setting':<26} {'kept for backward':>18} {'peak step memory':>17}")
        for row in rows:
            peak = "n/a" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:.1f} MiB"
            print(f"{row['setting']:<26} {row['saved_bytes'] / 2**20:>14.2f} MiB {peak:>17}")
        if rows[0]["note"]:
            print(f"(peak memory not measured: {rows[0]['note']})")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(json.loads(args.child))))
        sys.exit(0)
    main(args.depth, args.size, args.batch, args.hidden)
