"""Moved to :mod:`hybridflow.io`; the names of ``hybridflow.serialization`` keep working for one
release and warn once."""

from typing import Any

from hybridflow import io
from hybridflow.deprecation import warn_deprecated

__all__: list[str] = []

_MOVED = (
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "atomic_torch_save",
    "atomic_write",
    "check_state_dict",
    "load",
    "load_state_dict",
    "save",
)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warn_deprecated(f"{__name__}.{name}", f"use hybridflow.io.{name}")
    return getattr(io, name)
