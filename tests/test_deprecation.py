"""Deprecated spellings keep working, warn once, and never choose silently."""

import types
import warnings

import pytest

from hybridflow import deprecation
from hybridflow.errors import ArgumentTypeError


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(deprecation, "_warned", set())


def test_renamed_argument_maps_and_warns_once():
    @deprecation.renamed_arguments(size="features")
    def build(features, depth=1):
        return features, depth

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert build(size=3, depth=2) == (3, 2)
        assert build(size=4) == (4, 1)
        assert build(features=5) == (5, 1)
    assert len(caught) == 1
    assert caught[0].category is FutureWarning
    assert "size=" in str(caught[0].message) and "features=" in str(caught[0].message)
    assert caught[0].filename == __file__


def test_renamed_argument_refuses_both_spellings():
    @deprecation.renamed_arguments(size="features")
    def build(features):
        return features

    with pytest.raises(ArgumentTypeError, match="both size=") as info:
        build(size=3, features=4)
    assert info.value.argument == "size"


def test_module_alias_is_the_same_object_and_warns_once():
    module = types.ModuleType("example")

    class New:
        pass

    module.New = New
    module.__getattr__ = deprecation.module_aliases("example", {"Old": ("New", lambda: New)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert module.Old is New
        assert module.Old is New
    assert len(caught) == 1
    assert "example.Old" in str(caught[0].message) and "example.New" in str(caught[0].message)
    with pytest.raises(AttributeError, match="no attribute 'Missing'"):
        _ = module.Missing
