"""Version checks: refuse a backward whose forward saw other parameters than it would rebuild with.

Autograd refuses a gradient when a tensor it saved changed in place (every tensor has a
version counter, bumped by each in-place operation). Reconstruction reads the chain's
parameters and buffers *again* in backward, so it must be as strict about them: an
``optimizer.step()``, an in-place edit or an EMA update between a forward pass and its
backward would otherwise rebuild with the new weights and return wrong gradients silently.
:class:`Versions` records the counters at the end of the forward pass and :meth:`check`
compares them (and the tensors' identities) before the backward pass starts.

Edits through ``.data`` bypass version counters (as they do for autograd); the drift guard's
fingerprints then catch the change instead, on checked calls.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from hybridflow.errors import ModifiedError

__all__ = ["Versions"]


class Versions:
    """The version counters of a module's parameters and buffers at one moment.

    Args:
        module: whose tensors to watch.
        params: ``tuple(module.parameters())``, when the caller has it already.
    """

    __slots__ = ("_buffers", "_params", "_versions")

    def __init__(self, module: nn.Module, params: Sequence[Tensor] | None = None) -> None:
        self._params = tuple(module.parameters()) if params is None else tuple(params)
        self._buffers = tuple(module.buffers())
        self._versions = tuple(t._version for t in (*self._params, *self._buffers))

    def check(self, module: nn.Module, where: str) -> None:
        """Raise :class:`~hybridflow.errors.ModifiedError` naming the first tensor of
        ``module`` that changed (in place, or replaced) since the record was taken."""
        params, buffers = tuple(module.parameters()), tuple(module.buffers())
        now = (*params, *buffers)
        then = (*self._params, *self._buffers)
        changed = len(now) != len(then) or any(
            a is not b or a._version != v for a, b, v in zip(now, then, self._versions, strict=True)
        )
        if not changed:
            return
        name = _first_changed(module, then, self._versions)
        raise ModifiedError(
            f"{name} changed after the forward pass (an optimizer.step(), an in-place edit or "
            "a replaced tensor before backward); reconstruction would rebuild activations "
            "with the new values and return wrong gradients. Run backward before changing "
            "parameters, or run the forward pass again",
            tensor=name,
            where=(where,),
        )


def _first_changed(module: nn.Module, then: tuple[Tensor, ...], versions: tuple[int, ...]) -> str:
    recorded = {id(t): v for t, v in zip(then, versions, strict=True)}
    for kind, named in (
        ("parameter", module.named_parameters()),
        ("buffer", module.named_buffers()),
    ):
        for name, tensor in named:
            version = recorded.get(id(tensor))
            if version is None:
                return f"{kind} {name!r} (replaced by another tensor)"
            if tensor._version != version:
                return f"{kind} {name!r}"
    return "a parameter or buffer (removed)"
