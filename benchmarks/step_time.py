"""Time per training step, store vs invert vs checkpoint vs tiled, side by side in one process.

The Glow-like models of ``common.py`` (same parameters in every mode) take turns, one step
each, for ``--repeats`` rounds after a warm-up; the median per mode is reported with its
ratio to store mode. Interleaving puts every mode under the same machine load, which fresh
processes timed one after another do not. Peak memory is measured by ``memory_depth.py``.
Mode ``tiled`` is invert mode with the couplings run tile by tile (``--tile-size``); its
ratio to ``invert`` is the cost of the halos and of the per-tile calls.

    python benchmarks/step_time.py --size 128 --depths 4 32
    python benchmarks/step_time.py --size 512 --depths 16 --modes invert tiled --tile-size 128
    OMP_WAIT_POLICY=PASSIVE python benchmarks/step_time.py --size 128 --depths 4 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import GlowLike, add_size_options, training_step

MODES = ("store", "invert", "checkpoint", "tiled")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_options(parser, size=64, depths=[4, 16], batch=4, hidden=64, repeats=7)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES[:3]))
    parser.add_argument("--tile-size", type=int, default=128, help="tile edge of mode tiled")
    args = parser.parse_args(argv)
    x = torch.randn(args.batch, 3, args.size, args.size)
    rows = []
    for depth in args.depths:
        models, optimizers = {}, {}
        for mode in args.modes:
            torch.manual_seed(0)
            models[mode] = (
                GlowLike(3, depth, args.hidden, "invert", tile_size=args.tile_size)
                if mode == "tiled"
                else GlowLike(3, depth, args.hidden, mode)
            )
            optimizers[mode] = torch.optim.Adam(models[mode].parameters(), lr=1e-4)
        for mode in args.modes:  # warm-up: ActNorm init, optimizer state, allocator pools
            for _ in range(2):
                training_step(models[mode], optimizers[mode], x)
        times: dict[str, list[float]] = {mode: [] for mode in args.modes}
        for _ in range(args.repeats):
            for mode in args.modes:
                start = time.perf_counter()
                training_step(models[mode], optimizers[mode], x)
                times[mode].append(time.perf_counter() - start)
        medians = {mode: statistics.median(t) * 1e3 for mode, t in times.items()}
        for mode in args.modes:
            rows.append(
                {
                    "depth": depth,
                    "mode": mode,
                    "ms": medians[mode],
                    "ratio": medians[mode] / medians.get("store", medians[mode]),
                    "vs_invert": medians[mode] / medians.get("invert", medians[mode]),
                }
            )
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    print(
        f"Glow-like step, {args.size}x{args.size}, batch {args.batch}, hidden {args.hidden}, "
        f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={policy}, median of {args.repeats}"
    )
    print(f"{'depth':>5} {'mode':>10} {'ms/step':>9} {'vs store':>8} {'vs invert':>9}")
    for r in rows:
        print(
            f"{r['depth']:>5} {r['mode']:>10} {r['ms']:>9.0f} {r['ratio']:>8.2f} "
            f"{r['vs_invert']:>9.2f}"
        )
    return rows


if __name__ == "__main__":
    main()
