"""Float32 gradient drift of reconstruction over depth, and what anchors do about it.

A Glow-like chain (``common.GlowLike``: squeeze, then ActNorm -> InvConv1x1 -> AffineCoupling
steps) with non-trivial parameters computes the gradients of a Gaussian NLL in float32 in
``store`` mode (plain autograd), in ``invert`` mode (hand-written rules), with the generic rule (invert, re-run, VJP) in every
layer, and in ``invert`` mode with an anchor
activation kept every ``m`` layers. Each is compared with a float64 ``store`` reference of
the same model: the figure is the worst per-tensor relative error
``max_t ||g_t - g_t^ref|| / ||g_t^ref||`` over the input and every parameter tensor, and the
median of the same ratios (the worst is often a tensor whose gradient nearly cancels, where
plain float32 autograd is already inaccurate).

    python benchmarks/float32_drift.py                       # 32x32, depths 8 32 (quick)
    python benchmarks/float32_drift.py --size 64 --depths 8 32 128
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

import hybridflow as hf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import GlowLike, gaussian_nll, write_csv


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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--depths", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--anchors", type=int, nargs="*", default=[8], help="anchor_every values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--coupling-std", type=float, default=0.02, help="std of the conditioners' last layer"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
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
