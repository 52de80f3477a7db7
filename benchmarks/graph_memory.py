"""Peak step memory and time of one hybrid graph under store, checkpoint and planned strategies.

The graph (:func:`hybridflow.testing.graphs.hybrid_graph`): a convolutional summary network
(autograd) turns an observation into a condition field for a conditional multiscale Glow
(invertible: an ActNorm, the Glow, an affine coupling), whose latent is blurred by a linear
operator (operator) and enters a loss (autograd) with the flow's log determinant. It runs under

* ``store``: every segment stored (plain autograd);
* ``checkpoint``: ``torch.utils.checkpoint`` on every segment;
* ``planner-tight``, ``planner-medium``, ``planner-unlimited``: the planner with the smallest
  feasible budget, the midpoint between that and the store plan's peak, and no bound.

Each configuration runs in a fresh process for memory (glibc returning freed memory, the peak
read from ``VmHWM`` after resetting it; see ``common.py``) and in another for time (default
allocator, median of ``--timing-steps`` steps). The memory child also counts the bytes kept
for backward with saved-tensor hooks, to set against the planner's estimate.

    python benchmarks/graph_memory.py                       # about two minutes
    python benchmarks/graph_memory.py --side 128 --depth 16 # bigger

Prints a table and writes ``graph_memory.csv`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = ("store", "checkpoint", "planner-tight", "planner-medium", "planner-unlimited")


def build(config: dict):  # type: ignore[no-untyped-def]
    """The graph module and a batch, planned as ``config["name"]`` says."""
    import torch
    from torch import nn

    from hybridflow.graph import BudgetError
    from hybridflow.testing.graphs import hybrid_graph

    torch.manual_seed(0)
    side, channels, cond = config["side"], config["channels"], config["cond"]
    hidden = config["hidden"]
    summary = nn.Sequential(
        nn.Conv2d(1, hidden, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(hidden, cond, 3, padding=1),
    )
    graph, _ = hybrid_graph(
        torch.float32,
        config["batch"],
        side,
        hidden,
        config["depth"],
        summary=summary,
        channels=channels,
        levels=config["levels"],
        cond=cond,
        per_sample_loss=True,
        perturb=False,
    )
    truth = torch.nn.functional.avg_pool2d(
        torch.randn(config["batch"], channels, side, side), 3, 1, 1
    )
    batch = {
        "obs": truth.mean(1, keepdim=True) + 0.1 * torch.randn(config["batch"], 1, side, side),
        "x": 3 * truth,
        "data": truth,
    }
    model = graph.build(batch)
    nodes = ["summary", "pre", "glow", "post", "blur", "loss"]
    name = config["name"]
    if name in ("store", "checkpoint"):
        model.plan(pin=dict.fromkeys(nodes, name))
    else:
        try:
            model.plan(1)
        except BudgetError as error:
            tight = error.minimum
        store_peak = model.plan(math.inf).peak_bytes
        budget = {
            "planner-tight": tight,
            "planner-medium": (tight + store_peak) / 2,
            "planner-unlimited": math.inf,
        }[name]
        model.plan(budget)
    return model, batch


def child(config: dict) -> None:
    import torch
    from common import measure_peak, measure_time

    from hybridflow.testing.graphs import kept_bytes

    torch.set_num_threads(config["threads"])
    model, batch = build(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch)["loss"]
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    plan = model.current_plan
    result = {
        "plan": "; ".join(f"{','.join(s.nodes)}: {s.strategy}" for s in plan.segments),
        "estimated_peak": plan.peak_bytes,
        "estimated_kept": plan.kept_bytes,
        "budget": plan.memory_budget,
    }
    if config["measure"] == "memory":
        result["peak_bytes"] = measure_peak(step)
        result["kept_bytes"] = kept_bytes(model, batch, warm_up=False)
    else:
        result["seconds"] = measure_time(step, config["timing_steps"])
    print(json.dumps({**config, **result}))


def report(rows: list[dict]) -> str:
    mib = 2**20
    lines = [
        f"{'configuration':>18} {'peak MiB':>9} {'est. peak':>9} {'kept MiB':>9} "
        f"{'est. kept':>9} {'budget MiB':>10} {'step s':>7}  plan"
    ]
    for r in rows:
        budget = r["budget"]
        budget_text = (
            "-" if budget is None else ("inf" if math.isinf(budget) else f"{budget / mib:.1f}")
        )
        lines.append(
            f"{r['name']:>18} {r['peak_bytes'] / mib:>9.1f} {r['estimated_peak'] / mib:>9.1f} "
            f"{r['kept_bytes'] / mib:>9.1f} {r['estimated_kept'] / mib:>9.1f} {budget_text:>10} "
            f"{r['seconds']:>7.2f}  {r['plan']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    import common

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--side", type=int, default=64, help="image side (divisible by 2**levels)")
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--cond", type=int, default=4, help="channels of the condition field")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--depth", type=int, default=8, help="Glow steps per scale")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--timing-steps", type=int, default=3)
    common.add_process_options(parser, timeout=1800)
    args = common.parse_or_run_child(parser, argv, child)
    if args is None:
        return []
    if args.side % 2**args.levels:
        parser.error(f"--side {args.side} must be divisible by 2**levels = {2**args.levels}")
    common.require_peak_probe(parser)
    common.create_out(parser, args.out)
    base = {
        key: getattr(args, key)
        for key in ("side", "channels", "cond", "levels", "depth", "hidden", "batch", "threads")
    }
    base["timing_steps"] = args.timing_steps
    rows = []
    for name in args.configs:
        config = {**base, "name": name}
        memory = common.run_child(
            Path(__file__), {**config, "measure": "memory"}, common.MEMORY_ENV, args.timeout
        )
        timing = common.run_child(
            Path(__file__), {**config, "measure": "time"}, common.TIME_ENV, args.timeout
        )
        rows.append({**memory, "seconds": timing["seconds"]})
        print(report(rows).splitlines()[-1], file=sys.stderr, flush=True)
    path = common.write_csv(rows, args.out / "graph_memory.csv")
    print(report(rows))
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
