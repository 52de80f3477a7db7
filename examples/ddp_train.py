"""Train a conditional flow and its summary network under DistributedDataParallel.

The flow is an invert-mode chain (memory flat in depth); the summary network is ordinary
autograd; DDP sees ordinary parameter gradients from both. Run it on several processes with
``torchrun`` (CPU: gloo backend), or as one process for the same result::

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py --steps 20
    python examples/ddp_train.py --steps 20

Every rank builds the same data from the seed and takes its shard of each global batch, so
``N`` processes compute exactly what one process computes on the whole batch: DDP averages
the ranks' gradients of their mean losses. ``--accumulate k`` splits each rank's shard into
``k`` micro-batches and skips the gradient all-reduce (``no_sync``) on all but the last.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import hybridflow as hf
from hybridflow.io import atomic_torch_save
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1

PARAMETERS, OBSERVATIONS, SUMMARY = 4, 8, 6


class PosteriorModel(nn.Module):
    """Negative log density of ``theta`` given observations, ``q(theta | s(x))``."""

    def __init__(self, depth: int, hidden: int) -> None:
        super().__init__()
        self.summary = nn.Sequential(
            nn.Linear(OBSERVATIONS, hidden), nn.Tanh(), nn.Linear(hidden, SUMMARY)
        )
        layers = [
            module
            for _ in range(depth)
            for module in (
                ActNorm(PARAMETERS),
                InvConv1x1(PARAMETERS),
                AffineCoupling(PARAMETERS, hidden=hidden, cond_features=SUMMARY),
            )
        ]
        self.flow = hf.Chain(*layers, mode="invert")

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        z, logdet = self.flow(theta, self.summary(x))
        return (0.5 * (z**2).sum(dim=1) - logdet).mean()


def simulate(n: int, seed: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """A linear-Gaussian simulator: ``x = A theta + noise``."""
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(OBSERVATIONS, PARAMETERS, generator=generator)
    theta = torch.randn(n, PARAMETERS, generator=generator)
    x = theta @ matrix.T + 0.1 * torch.randn(n, OBSERVATIONS, generator=generator)
    return theta.to(dtype), x.to(dtype)


def main(argv: list[str] | None = None) -> dict[str, Tensor]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32, help="global batch (all ranks)")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--find-unused-parameters", action="store_true")
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="save each rank's final state_dict here")
    args = parser.parse_args(argv)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    try:
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        if args.batch % (world * args.accumulate):
            parser.error(f"--batch {args.batch} must divide into {world} ranks x {args.accumulate}")
        state = train(args, rank, world, distributed)
        if distributed:  # every rank done before the teardown (gloo's can hang otherwise)
            dist.barrier()
        return state
    finally:
        if distributed:
            dist.destroy_process_group()


def train(args: argparse.Namespace, rank: int, world: int, distributed: bool) -> dict[str, Tensor]:
    """Train on this rank's shard of every global batch; return (and with ``--out`` save) the
    final state_dict."""
    dtype = torch.float64 if args.float64 else torch.float32

    torch.manual_seed(args.seed)  # the same initial parameters on every rank
    model = PosteriorModel(args.depth, args.hidden).to(dtype)
    theta, x = simulate(args.batch * (args.steps + 1), args.seed + 1, dtype)
    shard = args.batch // world

    def local(step: int) -> tuple[Tensor, Tensor]:
        start = step * args.batch + rank * shard
        return theta[start : start + shard], x[start : start + shard]

    with torch.no_grad():  # ActNorm's data initialisation on the first global batch
        first_theta, first_x = local(args.steps)
        model.flow(first_theta, model.summary(first_x))
    trained: nn.Module = model
    if distributed:
        trained = DistributedDataParallel(model, find_unused_parameters=args.find_unused_parameters)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    started = time.perf_counter()
    for step in range(args.steps):
        optimizer.zero_grad(set_to_none=True)
        batch_theta, batch_x = local(step)
        micro = shard // args.accumulate
        step_loss = torch.zeros(())  # this rank's mean loss over its shard
        for k in range(args.accumulate):
            last = k == args.accumulate - 1
            sync = contextlib.nullcontext() if last or not distributed else trained.no_sync()
            with sync:
                part = slice(k * micro, (k + 1) * micro)
                loss = trained(batch_theta[part], batch_x[part]) / args.accumulate
                loss.backward()
                step_loss += loss.detach()
        optimizer.step()
        if step % 10 == 0 or step == args.steps - 1:
            if distributed:  # every rank takes part: the global batch's mean loss
                dist.all_reduce(step_loss)
                step_loss /= world
            if rank == 0:
                print(f"step {step:4d}  loss {float(step_loss):.4f} (global batch)", flush=True)
    if rank == 0:
        print(f"{args.steps} steps on {world} process(es) in {time.perf_counter() - started:.1f} s")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(state, args.out / f"rank{rank}.pt")
    return state


if __name__ == "__main__":
    main()
