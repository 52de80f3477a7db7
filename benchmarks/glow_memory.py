"""Peak training-step memory of the multiscale Glow versus depth, invert vs store mode.

Each configuration (input kind, depth, mode) runs in a fresh process with glibc's mmap and trim
thresholds pinned (``MALLOC_MMAP_THRESHOLD_=65536``, ``MALLOC_TRIM_THRESHOLD_=0``: freed
tensors go back to the OS). The child runs a warm-up training step (ActNorm initialisation,
optimizer state), writes ``5`` to ``/proc/self/clear_refs`` to reset the high-water mark, runs
one step and reports ``VmHWM`` minus the resident size just before that step. It then trains a
few more steps and reports the losses, which must decrease. Parameters and their gradients
grow with depth in both modes (an ``"invert"`` chain hands all its parameter gradients to
autograd at the end of its backward); what ``"invert"`` keeps flat is the activation memory,
so the summary compares the growth of the peak with that of the parameters.

    python benchmarks/glow_memory.py                     # small sizes, depths 4, 16, 64 (~1 min)
    python benchmarks/glow_memory.py --depths 4 8 16 32 64            # every depth (~2 min)
    python benchmarks/glow_memory.py --preset reference  # conditional 64x64 images and 32^3
                                                         # volumes, depths 4..64 (long)

Prints a table and writes ``glow_memory.csv`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("store", "invert")
# Per input kind: the network and the batch. "images" is conditional on a field of the
# input's resolution (resized to every scale); "volumes" on a vector.
PRESETS = {
    "small": {
        "images": {"size": 32, "channels": 3, "levels": 3, "hidden": 16, "batch": 4, "cond": 2},
        "volumes": {"size": 16, "channels": 1, "levels": 2, "hidden": 8, "batch": 2, "cond": 2},
        "depths": [4, 16, 64],
        "train_steps": 2,
    },
    "reference": {
        "images": {"size": 64, "channels": 3, "levels": 4, "hidden": 64, "batch": 4, "cond": 2},
        "volumes": {"size": 32, "channels": 1, "levels": 3, "hidden": 16, "batch": 2, "cond": 2},
        "depths": [4, 8, 16, 32, 64],
        "train_steps": 5,
    },
}
SPATIAL_DIMS = {"images": 2, "volumes": 3}


def child(config: dict) -> None:
    """Build the Glow, measure one step's peak, train a few steps; print JSON."""
    import torch
    import torch.nn.functional as F
    from common import current_rss, peak_since_reset, reset_peak

    from hybridflow.networks import Glow

    torch.manual_seed(0)
    torch.set_num_threads(config["threads"])
    dims = SPATIAL_DIMS[config["kind"]]
    flow = Glow(
        config["channels"],
        levels=config["levels"],
        depth=config["depth"],
        hidden=config["hidden"],
        cond_features=config["cond"],
        spatial_dims=dims,
        mode=config["mode"],
        seed=0,
    )
    shape = (config["batch"], config["channels"], *[config["size"]] * dims)
    pool = {2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
    x = 2 * pool(torch.randn(shape), 3, stride=1, padding=1, count_include_pad=False)
    if config["kind"] == "images":  # a field condition correlated with the image
        cond = x.mean(1, keepdim=True).expand(-1, config["cond"], *x.shape[2:]).contiguous()
    else:  # a vector condition
        cond = x.flatten(2).mean(2).mean(1, keepdim=True).expand(-1, config["cond"]).contiguous()
    optimizer = torch.optim.Adam(flow.parameters(), lr=config["lr"])
    dims_per_sample = x[0].numel()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        z, logdet = flow(x, cond)
        log_pz = -0.5 * z.pow(2).flatten(1).sum(1) - 0.5 * dims_per_sample * math.log(2 * math.pi)
        loss = -(log_pz + logdet).mean() / dims_per_sample
        loss.backward()
        optimizer.step()
        return loss.item()

    losses = [step()]  # warm-up: ActNorm initialisation, optimizer state, allocator
    before = current_rss()
    reset_peak()
    losses.append(step())
    peak = peak_since_reset() - before
    losses += [step() for _ in range(config["train_steps"])]
    param_bytes = sum(p.numel() * p.element_size() for p in flow.parameters())
    print(json.dumps({**config, "peak_bytes": peak, "param_bytes": param_bytes, "losses": losses}))


def run(args: argparse.Namespace) -> list[dict]:
    from common import MEMORY_ENV, run_child

    preset = PRESETS[args.preset]
    rows = []
    for kind in args.kinds:
        for depth in args.depths or preset["depths"]:
            for mode in args.modes:
                config = {
                    "kind": kind,
                    **preset[kind],
                    "depth": depth,
                    "mode": mode,
                    "train_steps": preset["train_steps"],
                    "lr": args.lr,
                    "threads": args.threads,
                }
                result = run_child(Path(__file__), config, MEMORY_ENV, timeout=args.timeout)
                losses = result.pop("losses")
                rows.append(
                    {
                        **result,
                        "peak_mib": result["peak_bytes"] / 2**20,
                        "param_mib": result["param_bytes"] / 2**20,
                        "loss_first": losses[0],
                        "loss_last": losses[-1],
                        "loss_decreased": losses[-1] < losses[0],
                    }
                )
                print(report(rows[-1:]).splitlines()[-1], file=sys.stderr)
    return rows


def report(rows: list[dict]) -> str:
    lines = [
        f"{'input':>8} {'shape':>18} {'levels':>6} {'depth':>5} {'mode':>7} {'peak MiB':>9} "
        f"{'params MiB':>10} {'loss first -> last':>20}"
    ]
    for r in rows:
        dims = SPATIAL_DIMS[r["kind"]]
        shape = str((r["batch"], r["channels"], *[r["size"]] * dims)).replace(" ", "")
        trend = f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}"
        lines.append(
            f"{r['kind']:>8} {shape:>18} {r['levels']:>6} {r['depth']:>5} {r['mode']:>7} "
            f"{r['peak_mib']:>9.1f} {r['param_mib']:>10.2f} {trend:>20}"
        )
    for kind in sorted({r["kind"] for r in rows}):
        for mode in MODES:
            own = sorted(
                (r for r in rows if r["kind"] == kind and r["mode"] == mode),
                key=lambda r: r["depth"],
            )
            if len(own) >= 2:
                lo, hi = own[0], own[-1]
                lines.append(
                    f"{kind}, {mode}: from depth {lo['depth']} to {hi['depth']} the peak grows "
                    f"by {hi['peak_mib'] - lo['peak_mib']:.1f} MiB "
                    f"(parameters: {hi['param_mib'] - lo['param_mib']:.1f} MiB)"
                )
    if rows and not all(r["loss_decreased"] for r in rows):
        lines.append("WARNING: the loss did not decrease in some configurations")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    import common

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument(
        "--kinds", nargs="+", choices=sorted(SPATIAL_DIMS), default=["images", "volumes"]
    )
    parser.add_argument("--depths", type=int, nargs="+", help="steps per scale (override preset)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    common.add_process_options(parser, timeout=3600, timeout_help="seconds per configuration")
    args = common.parse_or_run_child(parser, argv, child)
    if args is None:
        return []
    if args.depths is not None and min(args.depths) < 1:
        parser.error(f"--depths must be positive, got {args.depths}")
    common.require_peak_probe(parser)
    common.create_out(parser, args.out)
    rows = run(args)
    common.write_csv(rows, args.out / "glow_memory.csv")
    print(report(rows))
    print(f"wrote {args.out / 'glow_memory.csv'}")
    return rows


if __name__ == "__main__":
    main()
