"""Per-layer time of a training step (forward + backward), invert vs store mode, per coupling.

For each coupling type (affine, additive, spline, HINT) and input kind (vectors, images,
volumes), a chain of ``--layers`` couplings (with a channel reversal between them) runs
forward + backward of a Gaussian negative log-likelihood, in ``store`` mode (plain autograd)
and ``invert`` mode (reconstruction by inversion, hand-written rules). Both modes are timed in
the same process, side by side: repetitions are interleaved (store, invert, store, ...) and
the median per mode is reported, divided by the number of couplings. Each configuration runs
in a fresh process with ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads do not spin).

    python benchmarks/layer_speed.py                      # small sizes, a minute or two
    python benchmarks/layer_speed.py --preset reference   # larger inputs and conditioners

Prints a table and writes ``layer_speed.csv`` to ``--out``. The target is an invert/store
ratio of at most 1.2 per coupling layer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

COUPLINGS = ("affine", "additive", "spline", "hint")
KINDS = ("vectors", "images", "volumes")
# Per preset: couplings per chain and timed steps per mode.
PRESETS = {"small": {"layers": 4, "repeats": 15}, "reference": {"layers": 8, "repeats": 21}}
# Per input kind and preset: batch, channels, spatial size, conditioner width.
SIZE_FIELDS = ("batch", "channels", "size", "hidden")
SIZES = {
    "vectors": {"small": (256, 16, 0, 128), "reference": (1024, 64, 0, 512)},
    "images": {"small": (8, 8, 16, 32), "reference": (16, 12, 64, 128)},
    "volumes": {"small": (2, 8, 8, 16), "reference": (4, 8, 32, 32)},
}
TARGET_RATIO = 1.2


def build_coupling(name: str, channels: int, hidden: int, spatial_dims: int):
    from hybridflow.layers import AdditiveCoupling, AffineCoupling, HINTCoupling, SplineCoupling

    if name == "affine":
        return AffineCoupling(channels, hidden, spatial_dims=spatial_dims)
    if name == "additive":
        return AdditiveCoupling(channels, hidden, spatial_dims=spatial_dims)
    if name == "spline":
        return SplineCoupling(channels, hidden, spatial_dims=spatial_dims, bins=8)
    if name == "hint":
        return HINTCoupling(channels, recursion=2, hidden=hidden, spatial_dims=spatial_dims)
    raise ValueError(f"unknown coupling {name!r}; choose from {COUPLINGS}")


def child(config: dict) -> None:
    """Time both modes side by side on one model (the same parameters) and print JSON."""
    import torch

    import hybridflow as hf
    from hybridflow.layers import Reverse

    torch.manual_seed(0)
    torch.set_num_threads(config["threads"])
    spatial_dims = {"vectors": 0, "images": 2, "volumes": 3}[config["kind"]]
    channels, size = config["channels"], config["size"]
    layers = []
    for _ in range(config["layers"]):
        coupling = build_coupling(config["coupling"], channels, config["hidden"], spatial_dims)
        with torch.no_grad():  # away from the identity initialisation
            for p in coupling.parameters():
                p.add_(0.02 * torch.randn_like(p))
        layers += [coupling, Reverse(channels)]
    chains = {mode: hf.Chain(*layers, mode=mode) for mode in ("store", "invert")}
    x = torch.randn(config["batch"], channels, *[size] * spatial_dims)

    def step(chain: hf.Chain) -> float:
        for p in chain.parameters():
            p.grad = None
        start = time.perf_counter()
        z, logdet = chain(x)
        loss = 0.5 * z.pow(2).flatten(1).sum(1).mean() - logdet.mean()
        loss.backward()
        return time.perf_counter() - start

    for chain in chains.values():  # warm-up (allocator, kernels selection)
        step(chain)
        step(chain)
    times: dict[str, list[float]] = {mode: [] for mode in chains}
    for _ in range(config["repeats"]):
        for mode, chain in chains.items():
            times[mode].append(step(chain))
    medians = {mode: statistics.median(t) for mode, t in times.items()}
    per_layer = {mode: medians[mode] / config["layers"] for mode in medians}
    print(
        json.dumps(
            {
                **config,
                "store_ms_per_layer": per_layer["store"] * 1e3,
                "invert_ms_per_layer": per_layer["invert"] * 1e3,
                "ratio": medians["invert"] / medians["store"],
            }
        )
    )


def row_line(r: dict) -> str:
    """One configuration's line of the table."""
    spatial = {"vectors": 0, "images": 2, "volumes": 3}[r["kind"]]
    shape = str((r["batch"], r["channels"], *[r["size"]] * spatial)).replace(" ", "")
    flag = "" if r["ratio"] <= TARGET_RATIO else "  (above target)"
    return (
        f"{r['coupling']:>9} {r['kind']:>8} {shape:>22} {r['hidden']:>6} "
        f"{r['store_ms_per_layer']:>14.3f} {r['invert_ms_per_layer']:>15.3f} "
        f"{r['ratio']:>12.2f}{flag}"
    )


def report(rows: list[dict]) -> str:
    header = (
        f"{'coupling':>9} {'input':>8} {'shape':>22} {'hidden':>6} "
        f"{'store ms/layer':>14} {'invert ms/layer':>15} {'invert/store':>12}"
    )
    return "\n".join([header, *map(row_line, rows)])


def main(argv: list[str] | None = None) -> list[dict]:
    import common

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--couplings", nargs="+", choices=COUPLINGS, default=list(COUPLINGS))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--layers", type=int, help="couplings per chain (override preset)")
    parser.add_argument("--repeats", type=int, help="timed steps per mode (override preset)")
    common.add_process_options(parser)
    args = common.parse_or_run_child(parser, argv, child)
    if args is None:
        return []
    preset = PRESETS[args.preset]
    layers = args.layers or preset["layers"]
    repeats = args.repeats or preset["repeats"]
    if layers < 1 or repeats < 1:
        parser.error(f"--layers and --repeats must be positive, got {layers} and {repeats}")
    common.create_out(parser, args.out)
    rows = []
    for kind in args.kinds:
        for coupling in args.couplings:
            config = {
                "coupling": coupling,
                "kind": kind,
                **dict(zip(SIZE_FIELDS, SIZES[kind][args.preset], strict=True)),
                "layers": layers,
                "repeats": repeats,
                "threads": args.threads,
            }
            rows.append(common.run_child(Path(__file__), config, common.TIME_ENV))
            print(row_line(rows[-1]), file=sys.stderr)
    common.write_csv(rows, args.out / "layer_speed.csv")
    print(report(rows))
    above = [r for r in rows if r["ratio"] > TARGET_RATIO]
    print(
        f"{len(rows) - len(above)}/{len(rows)} configurations within the target "
        f"invert/store <= {TARGET_RATIO}"
    )
    print(f"wrote {args.out / 'layer_speed.csv'}")
    return rows


if __name__ == "__main__":
    main()
