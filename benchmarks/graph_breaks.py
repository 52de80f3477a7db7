"""torch.compile graph breaks of a chain, a Glow and a ConditionalFlow call, with their reasons.

Each model is compiled with the ``eager`` backend (Dynamo's capture only: graph breaks do not
depend on the backend) and called twice: a training loss (forward with gradients, then
backward) and a no-grad forward. In invert mode the first training call is the drift guard's
checked call (its forward pass runs eagerly), the next one an unchecked call, as are 15 in
16 later ones. The figures are Dynamo's own counters
(``torch._dynamo.utils.counters["graph_break"]``, one entry per distinct reason, each with
how often it was hit) and ``torch._dynamo.explain``'s ``graph_break_count`` (which also
counts frames Dynamo skipped and resumed, so it is larger).

    python benchmarks/graph_breaks.py
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable

import torch

import hybridflow as hf
from hybridflow import ConditionalFlow
from hybridflow.distributions import coupling_flow
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1, Squeeze
from hybridflow.networks import Glow
from hybridflow.summary import MLP


def _chain(mode: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    layers = [Squeeze()] + [
        m
        for _ in range(2)
        for m in (ActNorm(12), InvConv1x1(12), AffineCoupling(12, hidden=8, spatial_dims=2))
    ]
    chain = hf.Chain(*layers, mode=mode)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():  # ActNorm's initialisation, eagerly, not a call the guard counts
        chain(x)
    return lambda v: _nll(*chain(v)), x


def _glow(mode: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    glow = Glow(3, levels=2, depth=2, hidden=8, mode=mode, seed=0)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        glow(x)
    return lambda v: _nll(*glow(v)), x


def _conditional_flow(mode: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    transform = coupling_flow(5, cond_features=8, depth=3, hidden=16, mode=mode)
    flow = ConditionalFlow(transform, MLP(20, 8, hidden=16), event_shape=(5,), validate=False)
    x, theta = torch.randn(16, 20), torch.randn(16, 5)
    with torch.no_grad():
        flow(x).log_prob(theta)
    return lambda v: -flow(v).log_prob(theta).mean(), x


def _nll(z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    return (0.5 * z.pow(2).flatten(1).sum(1) - logdet).mean()


def count(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: bool) -> tuple:
    """Graph breaks of a first call (the drift guard's checked call in invert mode) and of the
    next one (an unchecked call), each compiled afresh: ``([(breaks, reasons)] * 2, explain's
    count for the first)``."""

    def call(v: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            out = loss(v)
        if grad:
            out.backward()
        return out.detach()

    calls = []
    for _ in range(2):  # each compiled afresh, so that every break of the call is counted
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        torch.compile(call, backend="eager")(x)
        reasons = dict(torch._dynamo.utils.counters["graph_break"])
        calls.append((sum(reasons.values()), reasons))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(call)(x).graph_break_count
    torch._dynamo.reset()
    return calls, explained


def _summary(reason: str) -> str:
    """The first line of Dynamo's reason, with the function it could not trace."""
    first = reason.splitlines()[0][:48]
    match = re.search(r"(?:target: |function `)<(?:function|built-in method) ([\w.]+)", reason)
    return f"{first} ({match.group(1)})" if match else first


def main() -> None:
    torch._logging.set_logs(dynamo=logging.ERROR)
    warnings.filterwarnings("ignore")
    print(
        f"{'model':<16} {'mode':<7} {'pass':<8} {'call':<5} {'breaks':>6} {'explain':>7}  reasons"
    )
    for name, build in (("Chain", _chain), ("Glow", _glow), ("ConditionalFlow", _conditional_flow)):
        for mode in ("store", "invert", "auto"):
            torch.manual_seed(0)
            loss, x = build(mode)  # auto: its probe runs in this eager call
            for label, grad in (("train", True), ("no_grad", False)):
                calls, explained = count(loss, x, grad)
                for which, (breaks, reasons) in zip(("first", "next"), calls, strict=True):
                    text = "; ".join(f"{n}x {_summary(r)}" for r, n in reasons.items())
                    shown = explained if which == "first" else ""
                    print(
                        f"{name:<16} {mode:<7} {label:<8} {which:<5} {breaks:>6} {shown:>7}  {text}"
                    )


if __name__ == "__main__":
    main()
