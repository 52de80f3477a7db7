"""Micro-batched invert segments: the no-grad forward pass, too, runs on slices of the batch.

``Chain(mode="invert", micro_batches=k)`` runs each layer's *reconstruction* on ``k`` slices
of the batch, but its forward pass on the whole batch at once: the working set of that pass
(a coupling's conditioner activations, for the whole batch) then sets the peak memory of a
step. :class:`SlicedInvert` runs the forward pass slice by slice too, writing each slice's
output into one tensor, and saves only that output and the condition, like the chain's own
Function. Its backward is the chain's public reconstructing rule
(:meth:`~hybridflow.Chain.reconstruct_vjp`), which honours the chain's ``micro_batches``.

This belongs in the core (``Chain`` slicing its forward pass when ``micro_batches > 1``); it
lives here, on the chain's public methods only, until it moves there.

Random numbers: every slice and the reconstruction draw the chain's per-call seed from the
same state of the global generator, so each layer sees one random stream in both passes, and
the global generator advances as after one unsliced call.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor

from hybridflow.autograd.chain import Chain
from hybridflow.autograd.drift import recording, rows
from hybridflow.autograd.function import backward_from_saved, keep_for_backward
from hybridflow.autograd.module import InvertibleModule, Reconstruction
from hybridflow.autograd.replay import ReplayState

__all__ = ["SlicedInvert", "run_sliced"]


def _bounds(batch: int, slices: int) -> list[tuple[int, int]]:
    edges = [batch * k // slices for k in range(slices + 1)]
    return [(a, b) for a, b in itertools.pairwise(edges) if a < b]


class SlicedInvert(torch.autograd.Function):
    """An invert-mode chain whose forward pass runs on ``slices`` slices of the batch.

    Saves the chain's output and its condition (and, as the chain's own Function does, the
    drift guard's fingerprints and anchors, assembled slice by slice); backward checks the
    version counters, then calls ``chain.reconstruct_vjp`` on the whole batch (sliced per
    layer by the chain's ``micro_batches``) and lets the chain's drift guard conclude. Double
    backward is refused, as for the chain's own Function.
    """

    @staticmethod
    def forward(
        ctx: Any, chain: Chain, slices: int, x: Tensor, cond: Tensor | None, *params: Tensor
    ) -> tuple[Tensor, Tensor]:
        rng = torch.get_rng_state()
        y: Tensor | None = None
        logdet: Tensor | None = None
        record = chain._pass_record(x)
        with torch.no_grad(), recording(record, checking=False):
            for i, (start, stop) in enumerate(_bounds(x.shape[0], slices)):
                part = None if cond is None else cond[start:stop]
                if i == 0:
                    with rows(start, stop):
                        y_part, logdet_part = chain(x[start:stop], part)
                else:
                    with torch.random.fork_rng(devices=[]), rows(start, stop):
                        torch.set_rng_state(rng)
                        y_part, logdet_part = chain(x[start:stop], part)
                if y is None or logdet is None:
                    y = y_part.new_empty((x.shape[0], *y_part.shape[1:]))
                    logdet = logdet_part.new_empty((x.shape[0],))
                y[start:stop] = y_part
                logdet[start:stop] = logdet_part
                del y_part, logdet_part
        ctx.rng = rng.numpy().tobytes()  # the generator's state, kept as plain bytes
        ctx.replay = ReplayState.capture(x.device, False)  # autocast settings only
        keep_for_backward(ctx, chain, record, y, cond, params)
        return y, logdet

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor, grad_logdet: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "hybridflow: double backward (create_graph=True) through a micro-batched "
                "invert segment is not supported; pin the segment to 'store' to differentiate "
                "its gradients"
            )
        chain: Chain = ctx.chain

        def reconstruct(y: Tensor, cond: Tensor | None) -> Reconstruction:
            with torch.random.fork_rng(devices=[]):  # the forward's generator state
                torch.set_rng_state(torch.frombuffer(bytearray(ctx.rng), dtype=torch.uint8))
                return chain.reconstruct_vjp(y, grad_y, grad_logdet, cond)

        return backward_from_saved(ctx, grad_y, grad_logdet, reconstruct)


def run_sliced(chain: Chain, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
    """Run an invert-mode ``chain`` with its forward pass sliced ``chain.micro_batches`` ways.

    Falls back to the chain's own call (forward on the whole batch) while a layer still waits
    for its data-dependent initialisation (ActNorm: statistics of the whole first batch), or
    when nothing needs a gradient.
    """
    params = tuple(chain.parameters())
    differentiable = torch.is_grad_enabled() and (
        x.requires_grad
        or (cond is not None and cond.requires_grad)
        or any(p.requires_grad for p in params)
    )
    initialized = all(m.is_initialized for m in chain.modules() if isinstance(m, InvertibleModule))
    if not differentiable or not initialized or chain.micro_batches < 2:
        return chain(x, cond)
    return SlicedInvert.apply(chain, chain.micro_batches, x, cond, *params)
