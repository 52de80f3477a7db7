"""Moved to :mod:`hybridflow.io`; the names of ``hybridflow.integrity`` keep working for one
release and warn once."""

from typing import Any

from hybridflow import io
from hybridflow.deprecation import warn_deprecated

__all__: list[str] = []

_MOVED = (
    "digest",
    "first_line",
    "read_torch_file",
    "verify_digest",
)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warn_deprecated(f"{__name__}.{name}", f"use hybridflow.io.{name}")
    return getattr(io, name)
