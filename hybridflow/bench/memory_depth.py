"""Peak step memory (and time) of a Glow-like training step versus depth and image size.

Each configuration (mode, depth, image size) runs in a fresh process (see
:mod:`hybridflow.bench.probes` for how peak memory is read). Modes: ``store`` (plain
autograd), ``invert`` (hybridflow's reconstruction) and ``checkpoint``
(``torch.utils.checkpoint`` per Glow step). Repeats are interleaved across modes so that time
ratios are measured side by side. The command line
(``hybridflow bench memory``, :mod:`hybridflow.cli.bench`, and ``benchmarks/memory_depth.py``)
writes the rows to ``memory_depth.csv`` and :func:`plot` to ``memory_depth.png`` (memory
versus depth, and versus image size) and prints :func:`report`.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from hybridflow.bench import probes
from hybridflow.bench.glow_like import BenchMode
from hybridflow.bench.probes import (
    MEMORY_ENV,
    TIME_ENV,
    measure_peak,
    measure_time,
    run_child,
)
from hybridflow.io import pyplot, save_figure, write_text

__all__ = [
    "MODES",
    "PRESETS",
    "child_main",
    "measure",
    "measure_one",
    "plot",
    "report",
    "write_csv",
]

PRESETS: dict[str, dict[str, Any]] = {
    "small": {"sizes": [32], "depths": [4, 16], "batch": 4, "hidden": 32, "repeats": 1},
    "reference": {
        "sizes": [64, 128],
        "depths": [4, 8, 16, 32, 64],
        "batch": 4,
        "hidden": 64,
        "repeats": 3,
    },
}
"""Named sizes: ``small`` takes a minute or two on two cores; ``reference`` is the set of
the committed results (128x128 images, depths 4 to 64)."""

MODES: tuple[BenchMode, ...] = ("store", "invert", "checkpoint")
_CHILD = ["-m", "hybridflow.bench.memory_depth"]


def measure_one(config: dict[str, Any]) -> dict[str, Any]:
    """Build the model of ``config``, measure one step; the result row as a dict."""
    import torch

    from hybridflow.bench.glow_like import GlowLike, training_step

    torch.manual_seed(0)
    torch.set_num_threads(config["threads"])
    model = GlowLike(3, config["depth"], config["hidden"], config["mode"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(config["batch"], 3, config["size"], config["size"])

    def step() -> float:
        return training_step(model, optimizer, x)

    if config["measure"] == "memory":
        result: dict[str, Any] = {"peak_bytes": measure_peak(step)}
    else:
        result = {"seconds": measure_time(step, config["timing_steps"])}
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {**config, **result, "param_bytes": param_bytes}


def measure(settings: dict[str, Any], log: Any = sys.stderr) -> list[dict[str, Any]]:
    """Run every configuration of ``settings`` (``sizes``, ``depths``, ``modes``, ``batch``,
    ``hidden``, ``repeats``, ``timing_steps``, ``measure``, ``threads``) in fresh processes;
    one row per (mode, depth, size) with the median over repeats."""
    configs = [
        {
            "mode": mode,
            "depth": depth,
            "size": size,
            "batch": settings["batch"],
            "hidden": settings["hidden"],
            "timing_steps": settings["timing_steps"],
            "threads": settings["threads"],
        }
        for size in settings["sizes"]
        for depth in settings["depths"]
        for mode in settings["modes"]
    ]
    samples: dict[tuple, list[dict]] = {}
    for repeat in range(settings["repeats"]):
        for config in configs:
            key = (config["mode"], config["depth"], config["size"])
            result: dict[str, Any] = {"peak_bytes": math.nan, "seconds": math.nan}
            if settings["measure"] in ("memory", "both"):
                result |= run_child(_CHILD, {**config, "measure": "memory"}, MEMORY_ENV)
            if settings["measure"] in ("time", "both"):
                result |= run_child(_CHILD, {**config, "measure": "time"}, TIME_ENV)
            samples.setdefault(key, []).append(result)
            if log is not None:
                print(
                    f"[{repeat + 1}/{settings['repeats']}] mode={key[0]} depth={key[1]} "
                    f"size={key[2]}: {result['peak_bytes'] / 2**20:.1f} MiB, "
                    f"{result['seconds'] * 1e3:.0f} ms",
                    file=log,
                    flush=True,
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
                "batch": settings["batch"],
                "hidden": settings["hidden"],
                "peak_mib": peak / 2**20,
                "peak_minus_grads_mib": (peak - grads) / 2**20,
                "param_grad_mib": grads / 2**20,
                "step_ms": statistics.median(r["seconds"] for r in results) * 1e3,
            }
        )
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    """The rows as a table, with time and memory relative to store mode, and the growth of
    invert mode's peak from the smallest to the largest depth.

    Example:
        >>> rows = [
        ...     {"mode": m, "depth": d, "size": 8, "peak_mib": p, "peak_minus_grads_mib": p,
        ...      "step_ms": 10.0}
        ...     for m, d, p in [("store", 2, 4.0), ("store", 8, 16.0),
        ...                     ("invert", 2, 1.0), ("invert", 8, 1.0)]
        ... ]
        >>> print(report(rows).splitlines()[-1])
        invert, 8x8: peak less parameter gradients at depth 8 is 1.00x depth 2
    """
    by_key = {(r["mode"], r["depth"], r["size"]): r for r in rows}
    lines = [
        f"{'size':>5} {'depth':>5} {'mode':>10} {'peak MiB':>9} {'-grads MiB':>10} "
        f"{'ms/step':>8} {'time/store':>10} {'mem/store':>9}"
    ]
    for r in sorted(rows, key=lambda r: (r["size"], r["depth"], MODES.index(r["mode"]))):
        store = by_key.get(("store", r["depth"], r["size"]))
        time_ratio = r["step_ms"] / store["step_ms"] if store else math.nan
        mem_ratio = r["peak_mib"] / store["peak_mib"] if store else math.nan
        lines.append(
            f"{r['size']:>5} {r['depth']:>5} {r['mode']:>10} {r['peak_mib']:>9.1f} "
            f"{r['peak_minus_grads_mib']:>10.1f} {r['step_ms']:>8.0f} {time_ratio:>10.2f} "
            f"{mem_ratio:>9.2f}"
        )
    for size in sorted({r["size"] for r in rows}):
        depths = sorted(d for (m, d, s) in by_key if m == "invert" and s == size)
        if len(depths) >= 2:
            lo, hi = by_key["invert", depths[0], size], by_key["invert", depths[-1], size]
            head = f"invert, {size}x{size}: peak less parameter gradients at depth {depths[-1]} is"
            if lo["peak_minus_grads_mib"] > 0 and hi["peak_minus_grads_mib"] > 0:
                ratio = hi["peak_minus_grads_mib"] / lo["peak_minus_grads_mib"]
                lines.append(f"{head} {ratio:.2f}x depth {depths[0]}")
            else:
                lines.append(f"{head} not measurable (the step is below the noise)")
    return "\n".join(lines)


def _panel(
    ax: Any, rows: list[dict[str, Any]], x: str, fixed: str, value: int, xlabel: str
) -> None:
    """One panel: peak step memory versus ``x`` per mode, at ``fixed == value``."""
    for mode in MODES:
        points = sorted(
            (r[x], r["peak_mib"]) for r in rows if r["mode"] == mode and r[fixed] == value
        )
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=mode)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("peak step memory (MiB)")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend()


def plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write a PNG of peak step memory versus depth (at the largest image size) and, with
    several sizes, versus image size (at the largest depth); atomically."""
    plt = pyplot()
    sizes = sorted({r["size"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    batch = rows[0]["batch"]
    panels = 2 if len(sizes) > 1 else 1
    figure, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.4), squeeze=False)
    _panel(axes[0][0], rows, "depth", "size", sizes[-1], "depth (Glow steps)")
    axes[0][0].set_title(f"{sizes[-1]}x{sizes[-1]} images, batch {batch}", fontsize=10)
    if panels == 2:
        _panel(axes[0][1], rows, "size", "depth", depths[-1], "image side (pixels)")
        axes[0][1].set_title(f"depth {depths[-1]}, batch {batch}", fontsize=10)
    figure.suptitle(
        "Peak memory of a Glow-like training step (a fresh process per point)", fontsize=11
    )
    figure.tight_layout()
    return save_figure(figure, Path(path))


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the rows as CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


def child_main(argv: list[str] | None = None) -> None:
    """The child's entry point: ``python -m hybridflow.bench.memory_depth --child JSON``
    measures one configuration (:func:`measure_one`) and prints its row as JSON."""
    probes.child_main(measure_one, argv)


if __name__ == "__main__":
    child_main()
