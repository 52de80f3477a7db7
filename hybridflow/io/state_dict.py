"""Checked ``state_dict`` loading: every mismatch named before anything is changed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hybridflow.errors import CheckpointMismatch

__all__ = ["check_state_dict", "load_state_dict"]

_SHOWN = 5  # names listed per kind of mismatch; the rest are counted


def _names(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_SHOWN])
    return f"[{shown}]" if len(keys) <= _SHOWN else f"[{shown}, ... {len(keys) - _SHOWN} more]"


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_floating_point or dtype.is_complex:
        return "complex" if dtype.is_complex else "floating"
    return "integer"


def check_state_dict(
    module: nn.Module, state_dict: Mapping[str, Any], source: object = None
) -> None:
    """Check that ``state_dict`` fits ``module`` exactly, changing nothing.

    Keys, shapes and kinds of dtype (floating, integer, bool) must all match; floating
    precision may differ (it is cast on loading, as :meth:`nn.Module.load_state_dict` does).

    Args:
        module: what would load it.
        state_dict: names to tensors.
        source: the file it came from, for the message.

    Raises:
        CheckpointMismatch: every problem at once (missing and unexpected keys, shape and
            dtype mismatches, values that are not tensors), the first few of each named.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointMismatch(
            f"{type(module).__name__} state_dict must be a dict of tensors, got "
            f"{type(state_dict).__name__}",
            path=source,
        )
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    common = sorted(set(own) & set(state_dict))
    not_tensors = [k for k in common if not isinstance(state_dict[k], Tensor)]
    tensors = [k for k in common if k not in not_tensors]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)}"
        for k in tensors
        if tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    dtypes = [
        f"{k}: checkpoint {state_dict[k].dtype}, model {own[k].dtype}"
        for k in tensors
        if _kind(state_dict[k].dtype) != _kind(own[k].dtype)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_names(unexpected)}")
    if not_tensors:
        problems.append(f"values that are not tensors {_names(not_tensors)}")
    for title, found in (("shape", shapes), ("dtype", dtypes)):
        if found:
            more = f" ... {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
            problems.append(f"{title} mismatches: " + "; ".join(found[:_SHOWN]) + more)
    if problems:
        where = "" if source is None else f"{source}: "
        raise CheckpointMismatch(
            f"{where}checkpoint does not fit {type(module).__name__}: " + ", ".join(problems),
            path=source,
        )


def load_state_dict(
    module: nn.Module, state_dict: Mapping[str, Tensor], source: object = None
) -> None:
    """``module.load_state_dict(state_dict)`` that checks everything before changing anything.

    ``nn.Module.load_state_dict`` copies every matching tensor before it reports mismatches;
    here :func:`check_state_dict` names missing keys, unexpected keys, shape and dtype
    mismatches in one :class:`~hybridflow.errors.CheckpointMismatch` (a ``ValueError``) and
    the module is left as it was.

    Args:
        module: the module to fill.
        state_dict: names to tensors.
        source: the file ``state_dict`` came from, named in the message.
    """
    check_state_dict(module, state_dict, source)
    module.load_state_dict(state_dict)
