"""Gradient drift of bfloat16 autocast for conditional flows with a summary network.

Three ConditionalFlows, each with non-trivial parameters (ActNorm marked initialised, every
parameter moved by 0.1 * N(0, 1)): a vector coupling flow (theta 3-d) with an MLP summary of
a 5-d observation, the same flow with a CNN summary of an 8x8 image, and a conditional Glow
on 8x8 images conditioned on a CNN field. The gradient of the mean NLL with respect to every
parameter (summary included) is computed in float64 store mode (the reference), in float32
without autocast, and in float32 under ``torch.autocast("cpu", dtype=torch.bfloat16)``, in
store and in invert mode. The figures: the relative error of all gradients as one vector,
``||g - g_ref|| / ||g_ref||``, and the worst per-tensor relative error.

    python benchmarks/amp_conditions.py             # depth 3 (Glow: 2 steps per level)
    python benchmarks/amp_conditions.py --depth 8
"""

from __future__ import annotations

import argparse

import torch

from hybridflow import ConditionalFlow
from hybridflow.distributions import coupling_flow
from hybridflow.layers import ActNorm
from hybridflow.networks import Glow
from hybridflow.summary import CNN, MLP


def build(kind: str, mode: str, depth: int) -> tuple[ConditionalFlow, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "mlp":
        transform = coupling_flow(3, cond_features=4, depth=depth, hidden=32, mode=mode)
        flow = ConditionalFlow(transform, MLP(5, 4, hidden=32), event_shape=(3,))
        shapes = (64, 5), (64, 3)
    elif kind == "cnn":
        transform = coupling_flow(3, cond_features=4, depth=depth, hidden=32, mode=mode)
        flow = ConditionalFlow(transform, CNN(1, 4, hidden=16, depth=2), event_shape=(3,))
        shapes = (64, 1, 8, 8), (64, 3)
    else:
        glow = Glow(1, levels=2, depth=depth, hidden=16, cond_features=3, mode=mode, seed=0)
        flow = ConditionalFlow(glow, CNN(1, 3, output="field", hidden=8), event_shape=(1, 8, 8))
        shapes = (8, 1, 8, 8), (8, 1, 8, 8)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in flow.modules():
            if isinstance(module, ActNorm):
                module.mark_initialized(True)
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    data = torch.Generator().manual_seed(2)
    x, theta = (torch.randn(shape, generator=data) for shape in shapes)
    return flow, x, theta


def gradients(kind: str, mode: str, depth: int, dtype: torch.dtype, autocast: bool) -> list:
    flow, x, theta = build(kind, mode, depth)
    flow.to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = -flow(x.to(dtype)).log_prob(theta.to(dtype)).mean()
    return [g.double() for g in torch.autograd.grad(loss, list(flow.parameters()))]


def errors(grads: list, reference: list) -> tuple[float, float]:
    g = torch.cat([t.flatten() for t in grads])
    r = torch.cat([t.flatten() for t in reference])
    worst = max(float((a - b).norm() / b.norm()) for a, b in zip(grads, reference, strict=True))
    return float((g - r).norm() / r.norm()), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=3)
    args = parser.parse_args()
    print(f"{'flow':<5} {'precision':<16} {'mode':<7} {'all grads':>10} {'worst tensor':>13}")
    for kind in ("mlp", "cnn", "glow"):
        reference = gradients(kind, "store", args.depth, torch.float64, autocast=False)
        for label, autocast in (("float32", False), ("bf16 autocast", True)):
            for mode in ("store", "invert"):
                grads = gradients(kind, mode, args.depth, torch.float32, autocast)
                total, worst = errors(grads, reference)
                print(f"{kind:<5} {label:<16} {mode:<7} {total:>10.2e} {worst:>13.2e}")


if __name__ == "__main__":
    main()
