"""Old names that keep working for one release and warn once.

Two kinds of rename happen: a public name moves (``LinearGaussian`` ->
``LinearInverseProblem``) and a keyword argument is renamed (``in_channels=`` -> ``features=``).
Both warn with a ``FutureWarning`` (shown to users by default, unlike ``DeprecationWarning``)
the first time the old spelling is used in a process, naming the new one.

>>> import warnings
>>> @renamed_arguments(size="features")
... def build(features: int) -> int:
...     return features
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     build(size=3)
3
>>> print(caught[0].message)
build(size=...) is deprecated: pass features=... instead; the old name goes in the next release
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from hybridflow.errors import ArgumentTypeError

__all__ = [
    "module_aliases",
    "moved_names",
    "rename_keywords",
    "renamed_arguments",
    "warn_deprecated",
]

F = TypeVar("F", bound=Callable[..., Any])
_warned: set[str] = set()


def warn_deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn once per process that ``old`` is deprecated in favour of ``new``."""
    if old in _warned:
        return
    _warned.add(old)
    warnings.warn(
        f"{old} is deprecated: {new} instead; the old name goes in the next release",
        FutureWarning,
        stacklevel=stacklevel,
    )


def rename_keywords(
    name: str, old_to_new: Mapping[str, str], kwargs: dict[str, Any], *, stacklevel: int = 4
) -> dict[str, Any]:
    """``kwargs`` with each old keyword name replaced by its new one, warning once per name.

    ``name`` is the callee's, for the messages; ``stacklevel`` is that of the user's call, seen
    from here (4: the caller of the function that calls this one).

    Raises:
        ArgumentTypeError: both the old and the new name of an argument were given.
    """
    kwargs = dict(kwargs)
    for old, new in old_to_new.items():
        if old not in kwargs:
            continue
        if new in kwargs:
            raise ArgumentTypeError(
                f"{name}() got both {old}= (deprecated) and {new}=; pass only {new}=",
                argument=old,
            )
        warn_deprecated(f"{name}({old}=...)", f"pass {new}=...", stacklevel=stacklevel)
        kwargs[new] = kwargs.pop(old)
    return kwargs


def renamed_arguments(**old_to_new: str) -> Callable[[F], F]:
    """Decorate a function (or ``__init__``) so that old keyword names map to new ones.

    Passing both the old and the new name is an error, never a silent choice. The mapping is
    kept on the wrapper as ``renamed_arguments``, so that :mod:`hybridflow.config` records
    the new names (renaming before it records, see :func:`rename_keywords`) and still loads
    configs saved with the old ones.
    """

    def decorate(function: F) -> F:
        name = function.__qualname__.removesuffix(".__init__")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return function(*args, **rename_keywords(name, old_to_new, kwargs))

        wrapper.renamed_arguments = dict(old_to_new)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def module_aliases(module: str, aliases: Mapping[str, tuple[str, Callable[[], Any]]]):
    """A module ``__getattr__`` that resolves old names to new objects, warning once.

    ``aliases`` maps an old name to ``(new name, loader)``; the loader returns the object,
    so the old name is the very same object (``isinstance`` and identity keep working)::

        __getattr__ = module_aliases(__name__, {"Old": ("New", lambda: New)})
    """

    def __getattr__(name: str) -> Any:
        if name not in aliases:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new, load = aliases[name]
        warn_deprecated(f"{module}.{name}", f"use {module}.{new}")
        return load()

    return __getattr__


def moved_names(module: str, new_module: str, names: Collection[str]):
    """A module ``__getattr__`` for names that moved, unrenamed, to ``new_module``: the old
    spelling ``module.name`` returns ``new_module.name`` (the same object), warning once::

        __getattr__ = moved_names(__name__, "hybridflow.io", ("save", "load"))
    """
    moved = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warn_deprecated(f"{module}.{name}", f"use {new_module}.{name}")
        return getattr(importlib.import_module(new_module), name)

    return __getattr__
