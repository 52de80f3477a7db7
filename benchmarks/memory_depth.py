"""Peak step memory and time of a Glow-like training step versus depth and image size.

Each configuration (mode, depth, image size) runs in a fresh process (see ``common.py`` for
how peak memory is read). Modes: ``store`` (plain autograd), ``invert`` (hybridflow's
reconstruction) and ``checkpoint`` (``torch.utils.checkpoint`` per Glow step). Repeats are
interleaved across modes so that time ratios are measured side by side.

    python benchmarks/memory_depth.py --preset small        # a minute or two
    python benchmarks/memory_depth.py --preset reference    # 128x128, depths 4..64

Writes ``memory_depth.csv`` and ``memory_depth.png`` to ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PRESETS = {
    "small": {"sizes": [32], "depths": [4, 16], "batch": 4, "hidden": 32, "repeats": 1},
    "reference": {
        "sizes": [64, 128],
        "depths": [4, 8, 16, 32, 64],
        "batch": 4,
        "hidden": 64,
        "repeats": 3,
    },
}
MODES = ("store", "invert", "checkpoint")


def child(config: dict) -> None:
    import torch
    from common import GlowLike, measure_peak, measure_time, training_step

    torch.manual_seed(0)
    torch.set_num_threads(config.get("threads", 2))
    model = GlowLike(3, config["depth"], config["hidden"], config["mode"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(config["batch"], 3, config["size"], config["size"])

    def step():
        return training_step(model, optimizer, x)

    if config["measure"] == "memory":
        result = {"peak_bytes": measure_peak(step)}
    else:
        result = {"seconds": measure_time(step, config["timing_steps"])}
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({**config, **result, "param_bytes": param_bytes}))


def run(args: argparse.Namespace) -> list[dict]:
    from common import MEMORY_ENV, TIME_ENV, run_child

    configs = [
        {
            "mode": mode,
            "depth": depth,
            "size": size,
            "batch": args.batch,
            "hidden": args.hidden,
            "timing_steps": args.timing_steps,
        }
        for size in args.sizes
        for depth in args.depths
        for mode in args.modes
    ]
    samples: dict[tuple, list[dict]] = {}
    for repeat in range(args.repeats):
        for config in configs:
            key = (config["mode"], config["depth"], config["size"])
            result = {"peak_bytes": float("nan"), "seconds": float("nan")}
            if args.measure in ("memory", "both"):
                memory = run_child(Path(__file__), {**config, "measure": "memory"}, MEMORY_ENV)
                result |= memory
            if args.measure in ("time", "both"):
                timing = run_child(Path(__file__), {**config, "measure": "time"}, TIME_ENV)
                result |= timing
            samples.setdefault(key, []).append(result)
            print(
                f"[{repeat + 1}/{args.repeats}] {key}: {result['peak_bytes'] / 2**20:.1f} MiB, "
                f"{result['seconds'] * 1e3:.0f} ms",
                file=sys.stderr,
            )
    rows = []
    for (mode, depth, size), results in samples.items():
        peak = statistics.median(r["peak_bytes"] for r in results)
        grads = results[0]["param_bytes"]
        rows.append(
            {
                "mode": mode,
                "depth": depth,
                "size": size,
                "batch": args.batch,
                "hidden": args.hidden,
                "peak_mib": peak / 2**20,
                "peak_minus_grads_mib": (peak - grads) / 2**20,
                "param_grad_mib": grads / 2**20,
                "step_ms": statistics.median(r["seconds"] for r in results) * 1e3,
            }
        )
    return rows


def report(rows: list[dict]) -> str:
    by_key = {(r["mode"], r["depth"], r["size"]): r for r in rows}
    lines = [
        f"{'size':>5} {'depth':>5} {'mode':>10} {'peak MiB':>9} {'-grads MiB':>10} "
        f"{'ms/step':>8} {'time/store':>10} {'mem/store':>9}"
    ]
    for r in sorted(rows, key=lambda r: (r["size"], r["depth"], MODES.index(r["mode"]))):
        store = by_key.get(("store", r["depth"], r["size"]))
        time_ratio = r["step_ms"] / store["step_ms"] if store else float("nan")
        mem_ratio = r["peak_mib"] / store["peak_mib"] if store else float("nan")
        lines.append(
            f"{r['size']:>5} {r['depth']:>5} {r['mode']:>10} {r['peak_mib']:>9.1f} "
            f"{r['peak_minus_grads_mib']:>10.1f} {r['step_ms']:>8.0f} {time_ratio:>10.2f} "
            f"{mem_ratio:>9.2f}"
        )
    for size in sorted({r["size"] for r in rows}):
        depths = sorted(d for (m, d, s) in by_key if m == "invert" and s == size)
        if len(depths) >= 2:
            lo, hi = by_key["invert", depths[0], size], by_key["invert", depths[-1], size]
            lines.append(
                f"invert, {size}x{size}: peak less parameter gradients at depth {depths[-1]} is "
                f"{hi['peak_minus_grads_mib'] / lo['peak_minus_grads_mib']:.2f}x depth {depths[0]}"
            )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.8), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for mode in MODES:
            points = sorted(
                (r["depth"], r["peak_mib"]) for r in rows if r["mode"] == mode and r["size"] == size
            )
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=mode)
        ax.set_title(f"{size}x{size} images, Glow-like training step")
        ax.set_xlabel("depth (Glow steps)")
        ax.set_ylabel("peak step memory (MiB)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_csv(rows: list[dict], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--sizes", type=int, nargs="+", help="image sides (override preset)")
    parser.add_argument("--depths", type=int, nargs="+", help="Glow steps (override preset)")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--repeats", type=int, help="fresh processes per configuration")
    parser.add_argument("--timing-steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--measure",
        choices=["memory", "time", "both"],
        default="both",
        help="peak memory and/or time (each in its own fresh process)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return []
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.sizes) < 2 or any(s % 2 for s in args.sizes):
        parser.error(f"--sizes must be even and at least 2, got {args.sizes}")
    if min(args.depths) < 1:
        parser.error(f"--depths must be positive, got {args.depths}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"cannot create output folder {args.out}: {error}")
    rows = run(args)
    write_csv(rows, args.out / "memory_depth.csv")
    plot(rows, args.out / "memory_depth.png")
    print(report(rows))
    print(f"wrote {args.out / 'memory_depth.csv'} and {args.out / 'memory_depth.png'}")
    return rows


if __name__ == "__main__":
    main()
