"""Data-dependent initialisation (ActNorm's) undone when the pass that did it fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from hybridflow.autograd.module import InvertibleModule

__all__ = ["all_initialized", "rollback_data_init_on_error"]


def all_initialized(module: nn.Module) -> bool:
    """Whether no invertible module in ``module`` still waits for its first batch."""
    return all(m.is_initialized for m in module.modules() if isinstance(m, InvertibleModule))


@contextmanager
def rollback_data_init_on_error(module: nn.Module) -> Iterator[None]:
    """Undo data-dependent initialisation done by a forward pass of ``module`` that then
    failed, so that bad input leaves every parameter as it was."""
    pending = [
        m for m in module.modules() if isinstance(m, InvertibleModule) and not m.is_initialized
    ]
    if not pending:
        yield
        return
    snapshots = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in pending]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for layer, snapshot in zip(pending, snapshots, strict=True):
                layer.load_state_dict(snapshot)
        raise
