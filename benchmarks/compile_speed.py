"""torch.compile (Inductor) versus eager: time per training step and graph breaks.

The Glow-like model of ``common.py`` in ``store`` and ``invert`` mode; eager and compiled
steps are interleaved in one process, after warm-up (compilation included in warm-up and
reported separately), and the median is reported.

    python benchmarks/compile_speed.py                  # 32x32, depth 4 (a few minutes)
    python benchmarks/compile_speed.py --size 64 --depth 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import GlowLike, add_size_options, interleaved_medians, training_step


def measure(mode: str, size: int, depth: int, hidden: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    eager = GlowLike(3, depth, hidden, mode)
    torch.manual_seed(0)
    compiled_model = GlowLike(3, depth, hidden, mode)
    x = torch.randn(batch, 3, size, size)
    optimizers = {
        "eager": torch.optim.Adam(eager.parameters(), lr=1e-4),
        "compiled": torch.optim.Adam(compiled_model.parameters(), lr=1e-4),
    }
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda v: training_step(eager, optimizers["eager"], v))(x)
    torch._dynamo.reset()
    compiled_step = torch.compile(training_step)
    start = time.perf_counter()
    for _ in range(3):  # compiles, then recompiles once ActNorm and Adam hold their state
        compiled_step(compiled_model, optimizers["compiled"], x)
    compile_seconds = time.perf_counter() - start
    for _ in range(3):
        training_step(eager, optimizers["eager"], x)
    runs = {
        "eager": lambda: training_step(eager, optimizers["eager"], x),
        "compiled": lambda: compiled_step(compiled_model, optimizers["compiled"], x),
    }
    medians = interleaved_medians(runs, repeats)
    eager_ms, compiled_ms = medians["eager"], medians["compiled"]
    return {
        "mode": mode,
        "graph_breaks": explanation.graph_break_count,
        "compile_s": compile_seconds,
        "eager_ms": eager_ms,
        "compiled_ms": compiled_ms,
        "ratio": compiled_ms / eager_ms,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_options(parser, size=32, depth=4, hidden=32, batch=4, repeats=10)
    parser.add_argument(
        "--modes", nargs="+", choices=["store", "invert"], default=["store", "invert"]
    )
    args = parser.parse_args(argv)
    rows = [
        measure(mode, args.size, args.depth, args.hidden, args.batch, args.repeats)
        for mode in args.modes
    ]
    print(f"Glow-like step, {args.size}x{args.size}, depth {args.depth}, hidden {args.hidden}")
    print(
        f"{'mode':>7} {'breaks':>6} {'compile s':>9} {'eager ms':>9} {'compiled ms':>11} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['mode']:>7} {r['graph_breaks']:>6} {r['compile_s']:>9.1f} {r['eager_ms']:>9.1f} "
            f"{r['compiled_ms']:>11.1f} {r['ratio']:>6.2f}"
        )
    return rows


if __name__ == "__main__":
    main()
