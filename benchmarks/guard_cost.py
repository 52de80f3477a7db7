"""What the drift guard costs: step time (interleaved in one process) and memory (fresh process).

A Glow-like training step (``common.GlowLike``: squeeze, then ActNorm -> InvConv1x1 ->
AffineCoupling steps, Gaussian NLL, Adam) in invert mode with the guard off
(``drift_every=0``), at its default (the first call and one in 16 checked) and checking every
call (``drift_every=1``). Time: median per configuration over interleaved rounds in one
process (CPU time of the one thread, steadier than wall time on a shared machine), as ratios
to the guard-off step. Memory: one fresh process per configuration (glibc
thresholds pinned, ``VmHWM`` over one checked step), and the exact bytes the guard keeps for
backward (saved-tensor hooks), against one activation.

    python benchmarks/guard_cost.py                      # 64x64, depth 16 (a few minutes)
    python benchmarks/guard_cost.py --size 32 --depth 32 --rounds 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    MEMORY_ENV,
    GlowLike,
    add_process_options,
    add_size_options,
    gaussian_nll,
    measure_peak,
    parse_or_run_child,
    run_child,
    write_csv,
)

from hybridflow.bench import saved_bytes

CONFIGS = {"off": 0, "default": None, "every call": 1}


def make(config: str, size: int, depth: int, hidden: int) -> GlowLike:
    torch.manual_seed(0)
    model = GlowLike(3, depth, hidden, "invert")
    every = CONFIGS[config]
    if every is not None:
        model.flow._drift_guard.every = every
    return model


def step(model: GlowLike, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    z, logdet = model(x)
    gaussian_nll(z, logdet).backward()
    optimizer.step()


def times(size: int, depth: int, hidden: int, batch: int, rounds: int) -> dict[str, float]:
    """Median CPU seconds (``time.process_time``: with one thread, what other processes on a
    shared machine do barely shows) per step and configuration, over interleaved rounds."""
    x = torch.randn(batch, 3, size, size)
    models = {c: make(c, size, depth, hidden) for c in CONFIGS}
    optimizers = {c: torch.optim.Adam(m.parameters(), lr=1e-5) for c, m in models.items()}
    samples: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for c in CONFIGS:  # warm-up: ActNorm initialisation, optimizer state
        step(models[c], optimizers[c], x)
    for _ in range(rounds):
        for c in CONFIGS:
            start = time.process_time()
            step(models[c], optimizers[c], x)
            samples[c].append(time.process_time() - start)
    return {c: statistics.median(v) for c, v in samples.items()}


def child(config: dict) -> None:
    """Peak and kept bytes of one checked step of ``config`` in this fresh process; print JSON."""
    torch.set_num_threads(1)
    model = make(config["config"], config["size"], config["depth"], config["hidden"])
    model.flow._drift_guard.every = 1 if config["config"] != "off" else 0  # measure a checked step
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    x = torch.randn(config["batch"], 3, config["size"], config["size"])
    peak = measure_peak(lambda: step(model, optimizer, x))
    kept = saved_bytes(lambda: model(x))
    print(json.dumps({"peak": peak, "kept": kept}))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_options(parser, size=64, depth=16, hidden=64, batch=4, rounds=7)
    add_process_options(parser)
    args = parse_or_run_child(parser, argv, child)
    if args is None:
        return []
    torch.set_num_threads(args.threads)
    seconds = times(args.size, args.depth, args.hidden, args.batch, args.rounds)
    base = {"size": args.size, "depth": args.depth, "hidden": args.hidden, "batch": args.batch}
    memory = {
        c: run_child(Path(__file__), {**base, "config": c}, MEMORY_ENV) for c in ("off", "default")
    }
    activation = args.batch * 3 * args.size**2 * 4
    layers = 1 + 3 * args.depth
    guard_bytes = memory["default"]["kept"] - memory["off"]["kept"]
    memory_fields = {
        "guard_bytes": guard_bytes,
        "peak_guard": memory["default"]["peak"],
        "peak_off": memory["off"]["peak"],
    }
    rows = [
        {**base, "config": c, "seconds": s, "ratio": s / seconds["off"], **memory_fields}
        for c, s in seconds.items()
    ]
    print(f"{args.size}x{args.size}, depth {args.depth} ({layers} layers), batch {args.batch}")
    for row in rows:
        print(
            f"  {row['config']:>10}: {row['seconds'] * 1e3:8.1f} ms CPU ({row['ratio']:.3f}x off)"
        )
    print(
        f"  guard keeps {guard_bytes} bytes for backward = {guard_bytes / layers:.0f} per layer "
        f"= {guard_bytes / layers / activation:.3%} of one activation ({activation} bytes)"
    )
    print(
        f"  peak of a checked step (fresh process): {memory['default']['peak'] / 2**20:.2f} MiB "
        f"vs {memory['off']['peak'] / 2**20:.2f} MiB without the guard"
    )
    write_csv(rows, args.out / "guard_cost.csv")
    return rows


if __name__ == "__main__":
    main()
