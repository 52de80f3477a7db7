"""Micro-batching: a pass or a layer's backward run on slices of the batch, one at a time."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from torch import Tensor, nn

from hybridflow.autograd.module import Reconstruction
from hybridflow.autograd.record import rows

__all__ = ["check_acts_per_sample", "reconstruct_in_slices", "run_in_slices", "slice_bounds"]

# Modules whose output for one sample depends on other samples (batch statistics) or whose
# random draws depend on the batch shape: slicing the batch would change what they compute.
_BATCH_COUPLED = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def check_acts_per_sample(module: nn.Module, where: str) -> None:
    """Raise ``ValueError`` if a submodule in training mode couples samples or draws random
    numbers per batch (BatchNorm, Dropout): its backward cannot run on slices of the batch."""
    for name, sub in module.named_modules():
        if isinstance(sub, _BATCH_COUPLED) and sub.training:
            raise ValueError(
                f"{where}: micro-batched reconstruction needs layers that act on each sample "
                f"alone, but {name or 'the module'} is a {type(sub).__name__} in training "
                "mode; use micro_batches=1, or eval() mode, or a per-sample normalisation "
                "(ActNorm, LayerNorm, GroupNorm)"
            )


def slice_bounds(batch: int, slices: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of ``slices`` near-equal slices of a batch of ``batch`` (empty ones
    left out)."""
    edges = [batch * k // slices for k in range(slices + 1)]
    return [(a, b) for a, b in itertools.pairwise(edges) if a < b]


def run_in_slices(
    run: Callable[[Tensor, Tensor | None, int], tuple[Tensor, Tensor]],
    x: Tensor,
    cond: Tensor | None,
    *,
    slices: int,
) -> tuple[Tensor, Tensor]:
    """``run(x, cond, row) -> (y, logdet)`` (a chain's layers, without autograd) on ``slices``
    slices of the batch, ``row`` the first row of each, the slices' results written into one
    output: only one slice's working set (a conditioner's activations) is alive at a time."""
    if slices == 1:
        return run(x, cond, 0)
    y: Tensor | None = None
    logdet: Tensor | None = None
    for start, stop in slice_bounds(x.shape[0], slices):
        with rows(start, stop):  # the active record keeps these rows
            part_cond = None if cond is None else cond[start:stop]
            part, part_logdet = run(x[start:stop], part_cond, start)
        if y is None or logdet is None:
            y = part.new_empty((x.shape[0], *part.shape[1:]))
            logdet = part_logdet.new_empty((x.shape[0],))
        y[start:stop] = part
        logdet[start:stop] = part_logdet
        del part, part_logdet
    return y, logdet  # type: ignore[return-value]


def reconstruct_in_slices(
    rule: Callable[[Tensor, Tensor, Tensor, Tensor | None], Reconstruction],
    output: Tensor,
    grad_output: Tensor,
    grad_logdet: Tensor,
    cond: Tensor | None,
    *,
    slices: int,
    each: Callable[[int], AbstractContextManager[object]] = lambda row: nullcontext(),
) -> Reconstruction:
    """``rule(output, grad_output, grad_logdet, cond)`` (a layer's ``reconstruct_vjp``, say)
    on ``slices`` slices of the batch, assembled; each slice runs inside ``each(row)``, ``row``
    its first row.

    Invertible layers act on each sample alone, so the rebuilt input and its gradient are
    the slices' results side by side, the condition gradient likewise, and parameter
    gradients are the sum over slices. Only one slice's working set (the conditioner's
    activations, say) is alive at a time.
    """
    batch = output.shape[0]
    rebuilt = grad_input = grad_cond = None
    grad_params: list[Tensor | None] | None = None
    for start, stop in slice_bounds(batch, slices):
        # each slice of the condition is a leaf of its own (slicing under no_grad would drop
        # requires_grad), so the layer's rule returns its gradient
        cond_part = None if cond is None else cond[start:stop].detach()
        if cond_part is not None:
            cond_part.requires_grad_(cond.requires_grad)
        with rows(start, stop), each(start):  # nested chains check these rows only
            part = rule(
                output[start:stop], grad_output[start:stop], grad_logdet[start:stop], cond_part
            )
        if rebuilt is None:
            rebuilt = part.input.new_empty((batch, *part.input.shape[1:]))
            grad_input = part.grad_input.new_empty((batch, *part.grad_input.shape[1:]))
            if part.grad_cond is not None:
                grad_cond = part.grad_cond.new_zeros((batch, *part.grad_cond.shape[1:]))
            grad_params = list(part.grad_params)
        else:
            grad_params = [
                b if a is None else a if b is None else a + b
                for a, b in zip(grad_params, part.grad_params, strict=True)
            ]
        rebuilt[start:stop] = part.input
        grad_input[start:stop] = part.grad_input
        if grad_cond is not None and part.grad_cond is not None:
            grad_cond[start:stop] = part.grad_cond
    return Reconstruction(rebuilt, grad_input, grad_cond, tuple(grad_params))
