"""Reading a recipe file (TOML, or YAML where PyYAML is installed) as plain data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hybridflow.cli.errors import UsageError

__all__ = ["read_recipe_file"]


def read_recipe_file(path: str | os.PathLike[str]) -> Any:
    """The parsed contents of a ``.toml`` (or ``.yaml``/``.yml``) file, unchecked.

    Raises:
        UsageError: no such file, another suffix, or a file that does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return _read_toml(path)
    if suffix in (".yaml", ".yml"):
        return _read_yaml(path)
    raise UsageError(f"config file {path}: expected a .toml (or .yaml) file")


def _read_toml(path: Path) -> Any:
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError as error:
            raise UsageError(
                f"{path}: reading TOML needs Python 3.11 or the tomli package (pip install tomli)"
            ) from error
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path} is not valid TOML: {error}") from error


def _read_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError as error:
        raise UsageError(
            f"{path}: YAML configs need PyYAML (pip install pyyaml); TOML needs nothing"
        ) from error
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UsageError(f"{path} is not valid YAML: {error}") from error
