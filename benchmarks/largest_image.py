"""The largest image side that trains under a step-memory budget: autograd, checkpoint, invert,
micro-batches, tiles, planner.

The CPU analogue of the comparison in InvertibleNetworks.jl (arXiv 2312.13480), where a
normalizing flow trains on 1024x1024 images while plain PyTorch fails at 480x480. The model
is the single-scale Glow of ``common.GlowLike`` (``Squeeze(2)``, then ``--depth`` steps of
ActNorm, 1x1 convolution and affine coupling with ``--hidden`` channels), trained with Adam on
a batch of ``--batch`` RGB images of side ``s``, under these methods:

* ``autograd``: plain autograd (every activation stored);
* ``checkpoint``: ``torch.utils.checkpoint`` around every Glow step;
* ``invert``: one invert-mode chain (activations rebuilt by inversion);
* ``micro``: the graph below with every node pinned to ``invert`` with ``--batch``
  micro-batches (forward pass and reconstruction run one image at a time);
* ``tiles``: the invert-mode chain with ``tile_size=--tile-size``: each coupling's
  conditioner runs tile by tile (cores plus a halo of its receptive field) in the forward
  pass and while reconstructing, so its working set is one tile's, not the image's;
* ``planner``: the same layers as a :class:`hybridflow.graph.Graph` (the squeeze and one
  invertible node per step, then the loss as an autograd node), planned with
  ``memory_budget=--budget``; at large sides it picks ``invert`` with micro-batches and
  tiles. The graph is measured on a batch of one image and planned for ``--batch``.

With ``--volume`` the model is instead a 3D :class:`hybridflow.networks.Glow` (one channel,
``--levels`` scales of ``--depth`` steps) on a batch of ``--batch`` cubes of side ``s``;
methods ``autograd``, ``invert`` and ``tiles`` apply.

``--warmup-side`` runs the warm-up step (ActNorm's initialisation, the optimizer's state) on
smaller images, so that a try at a large side costs one large step rather than two.

A side *trains* if a training step's peak memory, measured in a fresh process (``VmHWM`` after
resetting it, glibc returning freed memory to the OS; see ``common.py``), is under the budget;
for the planner also if a plan fits at all. Sides are searched by doubling from ``--start``
and then by bisection, in multiples of 32. A watchdog kills a try whose resident memory runs
far past the budget (it then does not train), so failing tries end quickly.

    python benchmarks/largest_image.py                    # budget 256 MiB, a few minutes
    python benchmarks/largest_image.py --budget 2GiB      # the reference comparison (long)
    python benchmarks/largest_image.py --budget 2GiB --methods planner --sides 1536  # one try
    python benchmarks/largest_image.py --budget 2GiB --methods tiles --sides 2048 \
        --tile-size 128 --warmup-side 64                           # one try, about 10 minutes
    python benchmarks/largest_image.py --volume --batch 1 --budget 2GiB --methods invert tiles \
        --sides 128 192

Prints one line per try and a summary table, and writes ``largest_image.csv`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = ("autograd", "checkpoint", "invert", "micro", "tiles", "planner")
VOLUME_METHODS = ("autograd", "invert", "tiles")
STEP = 32  # sides are multiples of this (divisible by the squeeze, and a coarse grid)


def child(config: dict) -> None:
    """Build the model, run a warm-up step and one measured step; print JSON."""
    import torch
    from common import GlowLike, current_rss, gaussian_nll, peak_since_reset, reset_peak

    from hybridflow.graph import BudgetError, Graph, Strategy

    torch.manual_seed(0)
    torch.set_num_threads(config["threads"])
    side, batch = config["side"], config["batch"]
    method = config["method"]
    tile_size = config["tile_size"] if method == "tiles" else None
    plan_text = ""
    estimate = None
    if config["volume"]:
        from hybridflow.networks import Glow

        dims = (side,) * 3
        flow = Glow(
            1,
            config["levels"],
            config["depth"],
            config["hidden"],
            spatial_dims=3,
            mode="store" if method == "autograd" else "invert",
            tile_size=tile_size,
        )
        channels = 1

        def loss_of(x: torch.Tensor) -> torch.Tensor:
            return gaussian_nll(*flow(x))

        params = list(flow.parameters())
    elif method in ("micro", "planner"):
        dims, channels = (side, side), 3
        # the graph reuses the checkpoint model's squeeze and steps (store-mode chains) as nodes
        glow = GlowLike(3, config["depth"], config["hidden"], "checkpoint")
        graph = Graph().input("x").invertible("squeeze", glow.squeeze, "x")
        previous = "squeeze"
        for i, step_module in enumerate(glow.steps):
            graph.invertible(f"step{i}", step_module, previous)
            previous = f"step{i}"
        graph.autograd("nll", gaussian_nll, [previous, f"{previous}.logdet"]).output("nll")
        pinned = Strategy("invert", micro_batches=batch)
        pin = {n: pinned for n in ["squeeze", *(f"step{i}" for i in range(len(glow.steps)))]}
        try:
            model = graph.build(
                {"x": torch.randn(1, 3, side, side)},
                memory_budget=config["budget"],
                batch_size=batch,
                pin=pin if method == "micro" else None,
            )
        except BudgetError as error:
            print(json.dumps({**config, "planned": False, "minimum": error.minimum}))
            return
        plan_text = "; ".join(
            f"{s.nodes[0]}..{s.nodes[-1]}: {s.strategy}" for s in model.current_plan.segments
        )
        estimate = model.current_plan.peak_bytes

        def loss_of(x: torch.Tensor) -> torch.Tensor:
            return model(x=x)["nll"]

        params = list(model.parameters())
    else:
        dims, channels = (side, side), 3
        mode = {"autograd": "store", "checkpoint": "checkpoint"}.get(method, "invert")
        glow = GlowLike(3, config["depth"], config["hidden"], mode, tile_size=tile_size)

        def loss_of(x: torch.Tensor) -> torch.Tensor:
            return gaussian_nll(*glow(x))

        params = list(glow.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4)
    warmup = config.get("warmup_side") or side
    x = torch.randn(batch, channels, *[warmup] * len(dims))

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(x)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step()  # warm-up: ActNorm initialisation, optimizer state
    if warmup != side:
        x = torch.randn(batch, channels, *dims)
    before = current_rss()
    reset_peak()
    start = time.perf_counter()
    loss = step()
    seconds = time.perf_counter() - start
    peak = peak_since_reset() - before
    print(
        json.dumps(
            {
                **config,
                "planned": True,
                "peak_bytes": peak,
                "estimate_bytes": estimate,
                "seconds": seconds,
                "loss": loss,
                "plan": plan_text,
            }
        )
    )


def try_side(config: dict, kill_above: float, timeout: float) -> dict:
    """Run one try in a fresh process under a watchdog; return the child's JSON (or why not)."""
    from common import MEMORY_ENV, process_rss

    process = subprocess.Popen(
        [sys.executable, str(Path(__file__)), "--child", json.dumps(config)],
        env={**os.environ, **MEMORY_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = threading.Event()

    def watch() -> None:
        while process.poll() is None:
            if process_rss(process.pid) > kill_above:
                killed.set()
                process.kill()
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return {**config, "planned": True, "failure": f"timed out after {timeout:.0f} s"}
    watcher.join()
    if killed.is_set():
        return {
            **config,
            "planned": True,
            "failure": f"resident memory passed {kill_above / 2**20:.0f} MiB",
        }
    if process.returncode != 0:
        return {
            **config,
            "planned": True,
            "failure": f"exit {process.returncode}: {err.strip()[-300:]}",
        }
    return json.loads(out.strip().splitlines()[-1])


def trains(result: dict, budget: float) -> bool:
    return (
        bool(result.get("planned")) and "failure" not in result and result["peak_bytes"] <= budget
    )


def largest_side(method: str, args: argparse.Namespace, budget: float, rows: list[dict]) -> int:
    """Doubling from ``--start``, then bisection on multiples of 32; 0 if the start fails."""
    tried: dict[int, bool] = {}

    def attempt(side: int) -> bool:
        if side not in tried:
            config = _config(method, side, budget, args)
            result = try_side(config, budget * 1.25 + 2**30, args.timeout)
            tried[side] = trains(result, budget)
            rows.append({**result, "trains": tried[side]})
            print(describe(rows[-1]), file=sys.stderr, flush=True)
        return tried[side]

    low, high = 0, None
    side = args.start
    while high is None:
        if attempt(side):
            low = side
            side *= 2
            if side > args.max_side:
                return low
        else:
            high = side
    while high - low > STEP:
        middle = (low + high) // 2 // STEP * STEP
        if middle <= low:
            break
        if attempt(middle):
            low = middle
        else:
            high = middle
    return low


def describe(row: dict) -> str:
    head = f"{row['method']:>10} side {row['side']:>5}: "
    if not row.get("planned"):
        return head + f"no plan fits (smallest peak {row['minimum'] / 2**20:.0f} MiB)"
    if "failure" in row:
        return head + row["failure"]
    estimate = row.get("estimate_bytes")
    planned = f", planner's estimate {estimate / 2**20:.0f} MiB" if estimate else ""
    plan = f" [{row['plan']}]" if row.get("plan") else ""
    verdict = "trains" if row["trains"] else "over budget"
    return (
        head + f"peak {row['peak_bytes'] / 2**20:.0f} MiB{planned}, step {row['seconds']:.1f} s, "
        f"{verdict}{plan}"
    )


def main(argv: list[str] | None = None) -> dict[str, int]:
    import common

    from hybridflow.graph import parse_bytes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="256MiB", help="step-memory budget, e.g. 2GiB")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--tile-size", type=int, default=128, help="tile edge of method tiles")
    parser.add_argument("--warmup-side", type=int, help="side of the warm-up step (default: s)")
    parser.add_argument("--volume", action="store_true", help="a 3D Glow on cubes of side s")
    parser.add_argument("--levels", type=int, default=2, help="scales of the 3D Glow")
    parser.add_argument("--depth", type=int, default=16, help="Glow steps")
    parser.add_argument("--hidden", type=int, default=64, help="conditioner channels")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--start", type=int, default=64, help="first side tried (multiple of 32)")
    parser.add_argument("--max-side", type=int, default=8192, help="stop doubling past this")
    parser.add_argument(
        "--sides", type=int, nargs="+", help="try exactly these sides (no search), e.g. 1536"
    )
    common.add_process_options(parser, timeout=3600, timeout_help="seconds per try")
    args = common.parse_or_run_child(parser, argv, child)
    if args is None:
        return {}
    budget = parse_bytes(args.budget, "--budget")
    if args.volume and not set(args.methods) <= set(VOLUME_METHODS):
        parser.error(f"--volume takes methods {VOLUME_METHODS}, got {args.methods}")
    if args.start % STEP or args.start < STEP:
        parser.error(f"--start must be a positive multiple of {STEP}, got {args.start}")
    common.require_peak_probe(parser)
    common.create_out(parser, args.out)
    rows: list[dict] = []
    if args.sides:
        for method in args.methods:
            for side in args.sides:
                result = try_side(
                    _config(method, side, budget, args), budget * 1.25 + 2**30, args.timeout
                )
                rows.append({**result, "trains": trains(result, budget)})
                print(describe(rows[-1]), flush=True)
        _write(rows, args.out)
        return {}
    best = {method: largest_side(method, args, budget, rows) for method in args.methods}
    print(
        f"largest side that trains under {args.budget} (depth {args.depth}, hidden "
        f"{args.hidden}, batch {args.batch}):"
    )
    for method, side in best.items():
        ratio = f" ({side / best['autograd']:.1f}x autograd)" if best.get("autograd") else ""
        print(f"  {method:>10}: {side}{ratio}")
    _write(rows, args.out)
    return best


def _config(method: str, side: int, budget: float, args: argparse.Namespace) -> dict:
    return {
        "method": method,
        "side": side,
        "budget": budget,
        "depth": args.depth,
        "hidden": args.hidden,
        "batch": args.batch,
        "threads": args.threads,
        "tile_size": args.tile_size,
        "warmup_side": args.warmup_side,
        "volume": args.volume,
        "levels": args.levels,
    }


def _write(rows: list[dict], out: Path) -> None:
    volume = any(row.get("volume") for row in rows)
    path = out / ("largest_volume.csv" if volume else "largest_image.csv")
    fields = sorted({key for row in rows for key in row})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
