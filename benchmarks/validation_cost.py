"""What the input checks cost: a training step of a conditional flow with ``validate`` on and
off, and the graph breaks they leave under ``torch.compile``.

The model is ``ConditionalFlow(coupling_flow(D, K), MLP summary)``; one step is
``-log q(theta | x)``, backward and an Adam step. Steps with ``validate=True`` and
``validate=False`` are interleaved after warm-up and the median time is reported. The graph
breaks are counted by ``torch._dynamo.explain`` on ``log_prob`` of a ``"store"`` chain for
``validate`` in ``None``, ``True`` and ``False``: metadata checks never break the graph, and
the data checks (NaN/Inf) are skipped while compiling.

    python benchmarks/validation_cost.py                 # a minute on one core
    python benchmarks/validation_cost.py --batch 4096 --csv /tmp/validation_cost.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_size_options, interleaved_medians, write_csv

from hybridflow.distributions import ConditionalFlow, coupling_flow
from hybridflow.summary import MLP


def _flow(validate: bool | None, mode: str, features: int, hidden: int) -> ConditionalFlow:
    torch.manual_seed(0)
    return ConditionalFlow(
        coupling_flow(features, cond_features=8, depth=4, hidden=hidden, mode=mode),
        summary=MLP(16, 8, hidden=hidden),
        event_shape=(features,),
        validate=validate,
    )


def step_times(batch: int, features: int, hidden: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of one training step per ``validate`` setting."""
    x, theta = torch.randn(batch, 16), torch.randn(batch, features)
    runs = {}
    for validate in (True, False):
        flow = _flow(validate, "invert", features, hidden)
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)

        def step(flow: ConditionalFlow = flow, optimizer: torch.optim.Optimizer = optimizer):
            optimizer.zero_grad(set_to_none=True)
            (-flow(x).log_prob(theta).mean()).backward()
            optimizer.step()

        for _ in range(3):
            step()
        runs[f"validate={validate}"] = step
    return interleaved_medians(runs, repeats)


def graph_breaks(features: int, hidden: int) -> dict[str, int]:
    """Graph breaks of a compiled ``log_prob`` (store chain) per ``validate`` setting."""
    x, theta = torch.randn(8, 16), torch.randn(8, features)
    breaks = {}
    for validate in (None, True, False):
        flow = _flow(validate, "store", features, hidden)
        flow(x).log_prob(theta)  # ActNorm initialises in eager
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(lambda a, b, f=flow: f(a).log_prob(b))(x, theta)
        breaks[f"validate={validate}"] = explanation.graph_break_count
    return breaks


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_options(parser, batch=256, features=4, hidden=64, repeats=30)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    times = step_times(args.batch, args.features, args.hidden, args.repeats)
    breaks = graph_breaks(args.features, args.hidden)
    rows = [{"measure": f"step_ms[{k}]", "value": round(v, 3)} for k, v in times.items()]
    rows += [{"measure": f"graph_breaks[{k}]", "value": v} for k, v in breaks.items()]
    print(f"ConditionalFlow step, batch {args.batch}, D={args.features}, hidden {args.hidden}")
    for row in rows:
        print(f"{row['measure']:>28} {row['value']}")
    on, off = times["validate=True"], times["validate=False"]
    print(f"{'checks cost':>28} {100 * (on - off) / off:+.1f}% of a step")
    if args.csv is not None:
        write_csv(rows, args.csv)
    return rows


if __name__ == "__main__":
    main()
