"""Plain-data configs of modules: what rebuilds a model, with no code and no pickles."""

from __future__ import annotations

import functools
import inspect
from typing import Any, ClassVar

from torch import nn

from hybridflow.deprecation import rename_keywords
from hybridflow.errors import ArgumentError, ArgumentTypeError

__all__ = ["Configurable", "check_config", "from_config", "get_config", "registered_classes"]

_REGISTRY: dict[str, type] = {}
_PRIMITIVES = (type(None), bool, int, float, str)


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Configurable:
    """Mixin that records a module's constructor arguments as plain data.

    Every subclass is registered under ``module.QualifiedName`` when it is defined, and the
    arguments of the outermost constructor call are recorded. :func:`get_config` turns them
    into JSON-ready data (numbers, strings, lists, dicts and nested configs of configurable
    modules); :func:`from_config` rebuilds the module from a registered class, so loading a
    model never imports or executes anything named by the file. Subclasses whose state can
    change after construction (``Chain.mode``) override :meth:`config_arguments`.

    Saved configs outlive renames: a class that moved lists its former names in
    :attr:`previous_config_names`, and keyword arguments renamed with
    :func:`~hybridflow.deprecation.renamed_arguments` are recorded under their new names and
    read under either.
    """

    _config_name: ClassVar[str]
    previous_config_names: ClassVar[tuple[str, ...]] = ()
    """Names under which configs saved before the class moved know it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._config_name = _class_name(cls)
        _REGISTRY[cls._config_name] = cls
        for previous in cls.__dict__.get("previous_config_names", ()):
            _REGISTRY[previous] = cls
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)
        renamed = _renamed_arguments(init)

        @functools.wraps(init)
        def recording_init(self: Any, *args: Any, **kw: Any) -> None:
            if renamed:  # recorded (and passed on) under the new names
                kw = rename_keywords(cls.__qualname__, renamed, kw)
            if "_config_arguments" not in self.__dict__:  # the outermost constructor call
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                arguments = dict(bound.arguments)
                arguments.pop(next(iter(signature.parameters)))  # self
                object.__setattr__(self, "_config_arguments", arguments)
            init(self, *args, **kw)

        cls.__init__ = recording_init  # type: ignore[method-assign]

    def config_arguments(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this module as it is now."""
        return dict(self.__dict__.get("_config_arguments", {}))


def _renamed_arguments(init: Any) -> dict[str, str]:
    """Old keyword names -> new ones of a constructor (see :mod:`hybridflow.deprecation`)."""
    return dict(getattr(init, "renamed_arguments", {}))


def registered_classes() -> dict[str, type]:
    """The configurable classes that :func:`from_config` may build, by name."""
    return dict(_REGISTRY)


def _to_data(value: Any, where: str) -> Any:
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, Configurable):
        return get_config(value)
    if isinstance(value, list | tuple):
        return [_to_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _to_data(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise ArgumentTypeError(
        f"{where} is a {type(value).__name__}, which a config cannot hold (only numbers, "
        "strings, lists, dicts and configurable hybridflow modules); save the state_dict and "
        "rebuild the model in code instead",
        argument=where,
    )


def get_config(module: nn.Module) -> dict[str, Any]:
    """``{"class": name, "arguments": {...}}`` of a configurable module, as plain data."""
    if not isinstance(module, Configurable):
        raise ArgumentTypeError(
            f"{type(module).__name__} is not a configurable hybridflow module; only those can "
            "be saved as a config",
            argument="module",
        )
    name = type(module)._config_name
    arguments = {
        key: _to_data(value, f"{type(module).__name__} argument {key!r}")
        for key, value in module.config_arguments().items()
    }
    return {"class": name, "arguments": arguments}


def _is_config(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"class", "arguments"}


def _check_data(value: Any, where: str) -> None:
    """Check that an argument value is plain data (nested configs checked by
    :func:`check_config`)."""
    if _is_config(value):
        check_config(value, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_data(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ArgumentTypeError(
                    f"{where} has a key {key!r} that is not a str", argument=where
                )
            _check_data(item, f"{where}[{key!r}]")
    elif not isinstance(value, _PRIMITIVES):
        raise ArgumentTypeError(
            f"{where} is a {type(value).__name__}; a config holds only plain data", argument=where
        )


def check_config(config: Any, where: str = "config") -> None:
    """Check a whole config tree before anything is built from it.

    Every node must be ``{"class": name, "arguments": {...}}`` naming a registered class,
    with argument names its constructor takes and plain-data values (numbers, strings, None,
    lists, dicts, nested configs). Nothing is imported or built.

    Args:
        config: what :func:`get_config` returned (or a file claims it did).
        where: how messages name ``config``.

    Raises:
        ArgumentError: not a config, an unknown class, or an argument the class does not take
            (``argument`` is the path of the bad entry).
        ArgumentTypeError: a value that is not plain data.
    """
    if not _is_config(config):
        got = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise ArgumentError(
            f"{where} is not a module config (expected keys 'class' and 'arguments'), got {got}",
            argument=where,
        )
    name, arguments = config["class"], config["arguments"]
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ArgumentError(
            f"{where}: unknown module class {name!r}: import the module that defines it before "
            "loading (classes are never imported from a file's contents)",
            argument=f"{where}['class']",
        )
    if not isinstance(arguments, dict):
        raise ArgumentTypeError(
            f"{where}: the arguments of {name} must be a dict, got {type(arguments).__name__}",
            argument=f"{where}['arguments']",
        )
    renamed = _renamed_arguments(cls.__init__)
    current = {renamed.get(k, k): v for k, v in arguments.items()}
    if len(current) < len(arguments):
        both = sorted(k for k in arguments if k in renamed and renamed[k] in arguments)
        raise ArgumentError(
            f"{where}: config of {name} gives both the old and the new name of {both}",
            argument=where,
        )
    arguments = current
    parameters = {p.name: p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]}
    unknown = sorted(k for k in arguments if k not in parameters)
    if unknown:
        raise ArgumentError(
            f"{where}: config of {name} has unknown arguments {unknown}", argument=where
        )
    for key, value in arguments.items():
        place = f"{where}[{key!r}]"
        kind = parameters[key].kind
        if kind is inspect.Parameter.VAR_POSITIONAL and not isinstance(value, list):
            raise ArgumentTypeError(f"{place} (*{key}) must be a list", argument=place)
        if kind is inspect.Parameter.VAR_KEYWORD and not isinstance(value, dict):
            raise ArgumentTypeError(f"{place} (**{key}) must be a dict", argument=place)
        _check_data(value, place)


def _from_data(value: Any) -> Any:
    if _is_config(value):
        return _build(value)
    if isinstance(value, list):
        return [_from_data(v) for v in value]
    if isinstance(value, dict):
        return {k: _from_data(v) for k, v in value.items()}
    return value


def from_config(config: dict[str, Any]) -> nn.Module:
    """Build a module from :func:`get_config`'s output, using registered classes only.

    The whole tree is checked by :func:`check_config` before any module is built.

    Raises:
        ArgumentError: see :func:`check_config`; and whatever the constructors raise for
            arguments out of range.
    """
    check_config(config)
    return _build(config)


def _build(config: dict[str, Any]) -> nn.Module:
    """Build a checked config."""
    name = config["class"]
    cls = _REGISTRY[name]
    renamed = _renamed_arguments(cls.__init__)
    arguments = {renamed.get(k, k): _from_data(v) for k, v in config["arguments"].items()}
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    kinds = [p.kind for p in parameters]
    # parameters before a *args must be passed by position
    by_position = (
        kinds.index(inspect.Parameter.VAR_POSITIONAL)
        if (inspect.Parameter.VAR_POSITIONAL in kinds)
        else 0
    )
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    for index, parameter in enumerate(parameters):
        if parameter.name not in arguments:
            continue
        value = arguments.pop(parameter.name)
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            positional.extend(value)
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            keywords.update(value)
        elif parameter.kind is inspect.Parameter.POSITIONAL_ONLY or index < by_position:
            positional.append(value)
        else:
            keywords[parameter.name] = value
    return cls(*positional, **keywords)
