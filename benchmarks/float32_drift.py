"""Float32 gradient drift of reconstruction over depth, and what the drift guard and anchors do.

A Glow-like chain (``common.GlowLike``: squeeze, then ActNorm -> InvConv1x1 -> AffineCoupling
steps) with non-trivial parameters computes the gradients of a Gaussian NLL in float32 in
``store`` mode (plain autograd), in ``invert`` mode (hand-written rules), with the generic rule (invert, re-run, VJP) in every
layer, and in ``invert`` mode with an anchor
activation kept every ``m`` layers. Each is compared with a float64 ``store`` reference of
the same model: the figure is the worst per-tensor relative error
``max_t ||g_t - g_t^ref|| / ||g_t^ref||`` over the input and every parameter tensor, and the
median of the same ratios (the worst is often a tensor whose gradient nearly cancels, where
plain float32 autograd is already inaccurate).

``--deep`` runs the deep, trained-looking setting of the drift guard instead: 64/128/256 Glow
steps on 8x8 images and on 8-d vectors, couplings moved far from the identity, several seeds.
Per seed and depth it reports store, invert without the guard, the default invert chain (and
what its guard measured and whether it warned), invert with ``on_drift="repair"`` (its second
step, after the repair placed anchors) and invert with anchors every 8 layers; worst and
median errors, and NaN counts.

    python benchmarks/float32_drift.py                       # 32x32, depths 8 32 (quick)
    python benchmarks/float32_drift.py --size 64 --depths 8 32 128
    python benchmarks/float32_drift.py --deep --seeds 0 1 2 3 4   # the guard's table
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import types
import warnings
from pathlib import Path

import torch

import hybridflow as hf
from hybridflow.errors import DriftWarning
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, GlowLike, add_size_options, gaussian_nll, write_csv


def make_model(
    depth: int, hidden: int, mode: str, anchor_every: int | None, seed: int, std: float
) -> GlowLike:
    """A GlowLike whose couplings are moved away from the identity (as after training): the
    zero-initialised last layer of each conditioner gets weights of standard deviation ``std``."""
    torch.manual_seed(seed)
    model = GlowLike(3, depth, hidden, mode, anchor_every=anchor_every)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conditioner.4" in name:  # the zero-initialised last layer of each coupling
                p.normal_(0.0, std)
    return model


def use_generic_rule(model: torch.nn.Module) -> None:
    """Make every layer (not the chains) use the generic rule instead of its hand-written one:
    invert under no_grad, re-run forward with grad, VJP."""
    for module in model.modules():
        if isinstance(module, hf.InvertibleModule) and not isinstance(module, hf.Chain):
            module.reconstruct_vjp = types.MethodType(hf.InvertibleModule.reconstruct_vjp, module)


def gradients(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    z, logdet = model(x)
    loss = gaussian_nll(z, logdet)
    return list(torch.autograd.grad(loss, [x, *model.parameters()]))


def relative_errors(
    grads: list[torch.Tensor], reference: list[torch.Tensor]
) -> tuple[float, float]:
    """(worst per-tensor, median per-tensor) relative error."""
    errors = sorted(
        float((g.double() - r).norm() / r.norm().clamp_min(1e-300))
        for g, r in zip(grads, reference, strict=True)
    )
    return errors[-1], errors[len(errors) // 2]


def drift(
    size: int, depth: int, hidden: int, batch: int, anchors: list[int], seed: int, std: float
) -> dict:
    generator = torch.Generator().manual_seed(seed)
    warmup = torch.randn(batch, 3, size, size, generator=generator)
    x = torch.randn(batch, 3, size, size, generator=generator)
    reference_model = make_model(depth, hidden, "store", None, seed, std).double()
    with torch.no_grad():  # ActNorm data initialisation on another batch, in float64
        reference_model(warmup.double())
    state = reference_model.state_dict()
    reference = gradients(reference_model, x.double())
    row = {"size": size, "depth": depth, "hidden": hidden, "batch": batch, "std": std}
    variants = [
        ("store", None, "store"),
        ("invert", None, "invert"),
        ("invert", None, "invert_generic"),
        *(("invert", m, f"invert_anchor{m}") for m in anchors),
    ]
    for mode, anchor_every, key in variants:
        model = make_model(depth, hidden, mode, anchor_every, seed, std)
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        )
        if key == "invert_generic":
            use_generic_rule(model)
        row[key], row[f"{key}_median"] = relative_errors(gradients(model, x), reference)
    return row


class VectorGlow(torch.nn.Module):
    """``depth`` x (ActNorm, InvConv1x1, AffineCoupling) on vectors ``(B, features)``."""

    def __init__(self, features: int, depth: int, hidden: int, **chain_args: object) -> None:
        super().__init__()
        steps = [
            hf.Chain(
                ActNorm(features),
                InvConv1x1(features),
                AffineCoupling(features, hidden=hidden),
                mode="store",
            )
            for _ in range(depth)
        ]
        self.flow = hf.Chain(*steps, **chain_args)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow(x)


def deep_model(kind: str, depth: int, seed: int, std: float, **chain_args: object):
    """The deep benchmark model: images ``(B, 3, 8, 8)`` or vectors ``(B, 8)``, with every
    coupling's last conditioner layer drawn with standard deviation ``std``."""
    torch.manual_seed(seed)
    if kind == "images":
        mode = chain_args.pop("mode", "invert")
        model = GlowLike(3, depth, 32, mode, anchor_every=chain_args.pop("anchor_every", None))
        for name, value in chain_args.items():  # guard settings of the outer chain
            setattr(model.flow._drift_guard, _GUARD_FIELDS[name], value)
    else:
        model = VectorGlow(8, depth, 32, **chain_args)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AffineCoupling):
                last = [m for m in module.conditioner.modules() if hasattr(m, "weight")][-1]
                last.weight.normal_(0.0, std)
                last.bias.normal_(0.0, std)
    return model


_GUARD_FIELDS = {"on_drift": "on_drift", "drift_every": "every", "drift_tolerance": "tolerance"}


def _count_nan(grads: list[torch.Tensor]) -> int:
    return sum(int(not torch.isfinite(g).all()) for g in grads)


def deep_drift(kind: str, depth: int, seed: int, std: float, batch: int) -> dict:
    generator = torch.Generator().manual_seed(1000 + seed)
    shape = (batch, 3, 8, 8) if kind == "images" else (batch, 8)
    # ActNorm initialised on a large batch (as from a data set), gradients on a small one
    warmup = torch.randn((256, *shape[1:]), generator=generator)
    x = torch.randn(shape, generator=generator)
    reference_model = deep_model(kind, depth, seed, std, mode="store").double()
    with torch.no_grad():
        reference_model(warmup.double())
        latent_std = float(reference_model(x.double())[0].std())
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in reference_model.state_dict().items()
    }
    reference = gradients(reference_model, x.double())
    row: dict = {"kind": kind, "depth": depth, "seed": seed, "latent_std": latent_std}
    variants = {
        "store": {"mode": "store"},
        "invert": {"mode": "invert", "drift_every": 0},
        "guard": {},
        "repair": {"on_drift": "repair"},
        "anchor8": {"mode": "invert", "anchor_every": 8},
    }
    for key, chain_args in variants.items():
        model = deep_model(kind, depth, seed, std, **chain_args)
        model.load_state_dict(state)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DriftWarning)
            try:
                if key == "repair":  # the step after the repair placed its anchors
                    with contextlib.suppress(hf.errors.ReconstructionError):
                        gradients(model, x)  # refused when it rebuilt NaN/Inf: anchors placed
                grads = gradients(model, x)
                worst, median = relative_errors(grads, reference)
                nan = _count_nan(grads)
            except hf.errors.ReconstructionError:
                worst, median, nan = math.nan, math.nan, -1  # refused: no gradient returned
        row[key], row[f"{key}_median"], row[f"{key}_nan"] = worst, median, nan
        if key == "guard":
            report = model.flow.drift_report
            row["guard_drift"] = math.nan if report is None else report.max_error
            row["guard_warned"] = int(any(issubclass(w.category, DriftWarning) for w in caught))
    return row


def deep_main(args: argparse.Namespace) -> list[dict]:
    rows = [
        deep_drift(kind, depth, seed, args.coupling_std_deep, args.batch)
        for kind in args.kinds
        for depth in args.deep_depths
        for seed in args.seeds
    ]
    keys = ["store", "invert", "guard", "repair", "anchor8"]
    print(
        "worst per-tensor relative gradient error vs float64 (median in brackets); "
        "guard: measured drift, W = warned; nan: tensors with NaN/Inf (-1: refused)"
    )
    print(
        f"{'kind':>7} {'depth':>5} {'seed':>4} {'z std':>5} "
        + " ".join(f"{k:>21}" for k in keys)
        + f" {'guard drift':>12}"
    )
    for r in rows:
        cells = " ".join(f"{r[k]:>9.1e} ({r[k + '_median']:.0e}) n{r[k + '_nan']:<1}" for k in keys)
        flag = "W" if r["guard_warned"] else " "
        print(
            f"{r['kind']:>7} {r['depth']:>5} {r['seed']:>4} {r['latent_std']:>5.2f} {cells} "
            f"{r['guard_drift']:>11.1e}{flag}"
        )
    write_csv(rows, args.out / "float32_drift_deep.csv")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_options(parser, size=32, depths=[8, 32], hidden=64, batch=2)
    parser.add_argument("--anchors", type=int, nargs="*", default=[8], help="anchor_every values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--coupling-std", type=float, default=0.02, help="std of the conditioners' last layer"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--deep", action="store_true", help="the drift guard's deep setting")
    parser.add_argument("--kinds", nargs="+", default=["images", "vectors"])
    parser.add_argument("--deep-depths", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--coupling-std-deep", type=float, default=0.05, help="--deep: last-layer std"
    )
    args = parser.parse_args(argv)
    if args.deep:
        return deep_main(args)
    if args.size < 2 or args.size % 2:
        parser.error(f"--size must be even and at least 2, got {args.size}")
    rows = [
        drift(args.size, depth, args.hidden, args.batch, args.anchors, args.seed, args.coupling_std)
        for depth in args.depths
    ]
    columns = [c for c in rows[0] if c not in ("size", "depth", "hidden", "batch", "std")]
    for label, chosen in (
        ("worst", [c for c in columns if not c.endswith("_median")]),
        ("median", [c for c in columns if c.endswith("_median")]),
    ):
        print(
            f"{label} per-tensor relative gradient error vs float64, {args.size}x{args.size} images"
        )
        print(f"{'depth':>6} " + " ".join(f"{c.removesuffix('_median'):>16}" for c in chosen))
        for row in rows:
            print(f"{row['depth']:>6} " + " ".join(f"{row[c]:>16.2e}" for c in chosen))
    write_csv(rows, args.out / "float32_drift.csv")
    return rows


if __name__ == "__main__":
    main()
