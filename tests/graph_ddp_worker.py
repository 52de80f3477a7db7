"""Train a planned GraphModule under DistributedDataParallel (run by tests/test_graph_parallel.py).

The graph (:func:`hybridflow.testing.graphs.hybrid_graph` without its end nodes): a summary
network (autograd) conditions a Glow (invertible) whose latent is blurred by a linear
operator; the loss (autograd) is a per-sample mean, so ``N`` ranks on shards of each batch
compute what one process computes on the whole batch. Every rank draws
the same data and parameters from the seed. ``--strategy`` pins the Glow's node (``invert``
with tiles and micro-batches, say), so the distributed step runs that path.

    torchrun --standalone --nproc_per_node=2 tests/graph_ddp_worker.py --out DIR
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hybridflow.graph import GraphModule, Strategy
from hybridflow.io import atomic_torch_save
from hybridflow.testing.graphs import hybrid_graph

SIDE, CHANNELS = 8, 2


def build_graph(batch: int, strategy: Strategy | None, dtype: torch.dtype) -> GraphModule:
    """The graph with seeded, perturbed parameters (the same on every rank)."""
    graph, _ = hybrid_graph(dtype, side=SIDE, ends=False, per_sample_loss=True, seed=0)
    sample = data(batch, 0, dtype)
    return graph.build(sample, pin=None if strategy is None else {"glow": strategy})


def data(batch: int, step: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The global batch of a step, the same on every rank."""
    generator = torch.Generator().manual_seed(1000 + step)
    shapes = {"obs": (1, SIDE, SIDE), "x": (CHANNELS, SIDE, SIDE), "data": (CHANNELS, SIDE, SIDE)}
    return {
        k: torch.randn(batch, *s, generator=generator, dtype=torch.float64).to(dtype)
        for k, s in shapes.items()
    }


def main(argv: list[str] | None = None) -> dict[str, torch.Tensor]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="global batch (all ranks)")
    parser.add_argument("--micro-batches", type=int, default=1)
    parser.add_argument("--tile-size", type=int)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    shard = args.batch // world
    strategy = Strategy("invert", micro_batches=args.micro_batches, tile_size=args.tile_size)
    model = build_graph(shard, strategy, torch.float64)
    trained: nn.Module = DistributedDataParallel(model) if distributed else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    for step in range(args.steps):
        inputs = {
            k: v[rank * shard : (rank + 1) * shard]
            for k, v in data(args.batch, step, torch.float64).items()
        }
        optimizer.zero_grad(set_to_none=True)
        trained(**inputs)["loss"].backward()
        optimizer.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, args.out / f"rank{rank}.pt")
    if distributed:
        # every rank reaches the end before the group is torn down: gloo's teardown can hang
        # when one rank destroys it while the other is still writing (seen once under CI)
        dist.barrier()
        dist.destroy_process_group()
    return state


if __name__ == "__main__":
    main()
