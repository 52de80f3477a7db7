"""Names that moved in the sbi/I-O redesign keep working for one release and warn once."""

import warnings

import pytest

import hybridflow.cli.outputs
import hybridflow.integrity
import hybridflow.io
import hybridflow.sbi
import hybridflow.serialization
from hybridflow import deprecation


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(deprecation, "_warned", set())


def test_linear_gaussian_is_linear_inverse_problem_and_warns_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert hybridflow.sbi.LinearGaussian is hybridflow.sbi.LinearInverseProblem
        assert hybridflow.sbi.LinearGaussian is hybridflow.sbi.LinearInverseProblem
    assert [w.category for w in caught] == [FutureWarning]
    assert "hybridflow.sbi.LinearInverseProblem" in str(caught[0].message)
    assert "LinearGaussian" not in hybridflow.sbi.__all__
    # the sbibm task is another thing: the identity operator with tau^2 = sigma^2 = 0.1
    assert issubclass(hybridflow.sbi.GaussianLinear, hybridflow.sbi.LinearInverseProblem)


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (hybridflow.serialization, "save"),
        (hybridflow.serialization, "atomic_write"),
        (hybridflow.serialization, "check_state_dict"),
        (hybridflow.integrity, "digest"),
        (hybridflow.integrity, "read_torch_file"),
        (hybridflow.cli.outputs, "write_text"),
        (hybridflow.cli.outputs, "save_figure"),
    ],
)
def test_moved_io_names_are_the_same_objects_and_warn_with_the_new_home(module, name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert getattr(module, name) is getattr(hybridflow.io, name)
    assert len(caught) == 1 and caught[0].category is FutureWarning
    assert f"hybridflow.io.{name}" in str(caught[0].message)
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = module.missing
