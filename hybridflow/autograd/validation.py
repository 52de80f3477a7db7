"""The ``validate`` switch: whether data-dependent input checks (NaN/Inf) run.

Metadata checks (type, shape, dtype, device, empty batch) always run: they read no tensor
data, so they cost no device sync and trace under ``torch.compile`` without a graph break.
Data-dependent checks (``torch.isfinite(x).all()``) read every entry and, on a GPU, wait for
the device; they run only when validation is on. Like ``validate_args`` of
``torch.distributions``, each :class:`~hybridflow.Chain`, :class:`~hybridflow.GraphModule`,
:class:`~hybridflow.Flow` and :class:`~hybridflow.ConditionalFlow` takes ``validate``:
``True`` or ``False`` decide for that object, ``None`` (the default) follows the module-wide
default set by :class:`set_validation` (on unless switched off).

Under ``torch.compile`` and inside ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``)
data checks never run: a data-dependent ``if`` would break the graph there, or fail under
``vmap``. Pass ``validate=False`` to skip them in eager code too (a trained model in
production, a benchmark).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

import torch

from hybridflow.errors import ArgumentTypeError

__all__ = [
    "data_checks",
    "set_validation",
    "torch_func_active",
    "validation_enabled",
    "validation_requested",
    "validation_scope",
]


class _Validation:
    """The module-wide default (a plain attribute: ``torch.compile`` traces it)."""

    def __init__(self) -> None:
        self.enabled = True


_STATE = _Validation()


class set_validation:  # a lower-case class: used like torch.set_grad_enabled
    """Switch data-dependent input checks on or off for objects built with ``validate=None``.

    Works as a call, which changes the default until changed again, and as a context manager,
    which restores the previous default on exit (also when the block raises)::

        with hybridflow.set_validation(False):
            loss = -flow(x).log_prob(theta).mean()  # no isfinite pass over x or theta

    Args:
        enabled: ``True`` to run NaN/Inf checks at the entry of chains, graphs and flows.
    """

    def __init__(self, enabled: bool) -> None:
        if not isinstance(enabled, bool):
            raise ArgumentTypeError(
                f"enabled must be True or False, got {enabled!r}",
                argument="enabled",
                where=("set_validation",),
            )
        self.previous = _STATE.enabled
        _STATE.enabled = enabled

    def __enter__(self) -> set_validation:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _STATE.enabled = self.previous


def validation_enabled() -> bool:
    """The module-wide default that ``validate=None`` follows."""
    return _STATE.enabled


@contextmanager
def validation_scope(validate: bool | None) -> Iterator[None]:
    """Run the block with the default set to ``validate`` (unchanged for ``None``): an
    object built with ``validate=False`` switches off the checks of what it calls."""
    if validate is None:
        yield
        return
    previous = _STATE.enabled
    _STATE.enabled = validate
    try:
        yield
    finally:
        _STATE.enabled = previous


def torch_func_active() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``, ``jacrev``, ...) is running.

    There is no public API for this in torch 2.13. ``torch._C._are_functorch_transforms_active``
    is the very predicate ``torch.autograd.Function.apply`` uses to choose its functorch path
    (and to refuse a Function without ``setup_context``), so asking it is exact, where parsing
    torch's error text would break when torch rewords it. Tested by ``tests/test_torch_func.py``
    and ``tests/test_validate_switch.py``.
    """
    return bool(torch._C._are_functorch_transforms_active())


def validation_requested(validate: bool | None) -> bool:
    """Whether an object with this ``validate`` setting asks for data-dependent checks (they
    run where they can: :func:`data_checks`)."""
    return _STATE.enabled if validate is None else validate


def data_checks(validate: bool | None) -> bool:
    """Whether an object with this ``validate`` setting runs data-dependent checks now: not
    in code that torch.compile traces or a torch.func transform runs."""
    if not validation_requested(validate) or torch.compiler.is_compiling():
        return False
    return not torch_func_active()
