"""Figures as files: matplotlib without a display, PNGs written atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from hybridflow.io.atomic import atomic_write

__all__ = ["pyplot", "save_figure"]


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display).

    Raises:
        ImportError: matplotlib is missing, with the command that installs it.
    """
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("figures need matplotlib: pip install 'hybridflow[sbi]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Render a matplotlib ``figure`` to PNG, close it and write the file atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(figure)
    return atomic_write(path, lambda file: file.write(buffer.getvalue()))
