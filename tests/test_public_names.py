"""Packages whose ``__all__`` is composed from their submodules' lists export exactly what
they import (ruff's unused-import check cannot follow such a list, so this test does)."""

import importlib
import inspect

import pytest

COMPOSED = ["hybridflow.bench", "hybridflow.layers"]


@pytest.mark.parametrize("name", COMPOSED)
def test_composed_all_is_exactly_the_imported_public_names(name):
    package = importlib.import_module(name)
    imported = {
        attribute
        for attribute, value in vars(package).items()
        if not attribute.startswith("_") and not inspect.ismodule(value)
    }
    assert len(package.__all__) == len(set(package.__all__)), "a name is listed twice"
    assert set(package.__all__) == imported


def test_layers_export_the_whole_coupling_family():
    import hybridflow.layers
    import hybridflow.layers.coupling

    for attribute in hybridflow.layers.coupling.__all__:
        assert getattr(hybridflow.layers, attribute) is getattr(
            hybridflow.layers.coupling, attribute
        )
