"""``Sequential``: summary networks in a row that save as plain data."""

from __future__ import annotations

from torch import nn

from hybridflow.config import Configurable

__all__ = ["Sequential"]


class Sequential(nn.Sequential, Configurable):
    """``nn.Sequential`` of configurable modules, itself configurable: the usual
    ``Sequential(Standardize.from_data(x), MLP(...))`` summary saves with
    :func:`hybridflow.save` (a plain ``nn.Sequential`` cannot: its config would hold code).

    Args:
        *modules: configurable modules (hybridflow's summary networks, ``Standardize``, or
            your own deriving from :class:`~hybridflow.config.Configurable`), applied in order.

    Example:
        >>> import torch
        >>> from hybridflow.summary import MLP, Sequential, Standardize
        >>> x = 5 + 3 * torch.randn(100, 4)
        >>> summary = Sequential(Standardize.from_data(x), MLP(4, 2, hidden=8))
        >>> tuple(summary(x).shape)
        (100, 2)
    """

    def __init__(self, *modules: nn.Module) -> None:
        bad = [type(m).__name__ for m in modules if not isinstance(m, nn.Module)]
        if bad or not modules:
            raise TypeError(f"Sequential: expected one or more nn.Modules, got {bad or 'none'}")
        super().__init__(*modules)
