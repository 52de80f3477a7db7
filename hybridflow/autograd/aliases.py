"""Parameter aliases: differentiate a layer's re-run without touching its real parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["parameter_aliases"]


@contextmanager
def parameter_aliases(module: nn.Module) -> Iterator[None]:
    """Temporarily replace every parameter of ``module`` by a fresh leaf sharing its storage.

    A reconstructing rule differentiates a re-run of its layer with ``torch.autograd.grad``.
    Taken with respect to the real parameters, that inner call would fire the hooks users
    registered on them (``param.register_hook``) with partial gradients. The aliases carry no
    hooks; the chain hands the gradients it collects to autograd, which then fires each hook
    once with the full gradient, exactly as plain autograd does. Shared parameters get one
    shared alias, and ``module.parameters()`` keeps its order.
    """
    aliases: dict[int, nn.Parameter] = {}
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for owner in module.modules():
            for name, param in list(owner._parameters.items()):
                if param is None:
                    continue
                alias = aliases.get(id(param))
                if alias is None:
                    alias = nn.Parameter(param.detach(), requires_grad=param.requires_grad)
                    aliases[id(param)] = alias
                swapped.append((owner, name, param))
                # straight into the registry: nn.Module.__setattr__ re-checks every name
                owner._parameters[name] = alias
        yield
    finally:
        for owner, name, param in reversed(swapped):
            owner._parameters[name] = param
