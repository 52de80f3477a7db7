"""The optional progress bar of a training run."""

from __future__ import annotations

from typing import Any

__all__ = ["Progress", "progress_bar"]


class Progress:
    """A progress bar (tqdm) or nothing; ``update(n, **postfix)`` and ``close()``."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def update(self, count: int = 1, **postfix: float) -> None:
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def progress_bar(enabled: bool, total: int, initial: int, description: str) -> Progress:
    """A tqdm bar over ``total`` units starting at ``initial`` when ``enabled`` (tqdm is then
    imported; it is an optional dependency), else a silent stand-in."""
    if not enabled:
        return Progress(None)
    try:
        from tqdm.auto import tqdm
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "progress=True needs tqdm: pip install 'hybridflow[sbi]' (or pass progress=False)"
        ) from error
    return Progress(tqdm(total=total, initial=initial, desc=description, dynamic_ncols=True))
