"""Moved to :mod:`hybridflow.io`; the names of ``hybridflow.serialization`` keep working for one
release and warn once."""

from hybridflow.deprecation import moved_names

__all__: list[str] = []

__getattr__ = moved_names(
    __name__,
    "hybridflow.io",
    (
        "FORMAT_VERSION",
        "READABLE_VERSIONS",
        "atomic_torch_save",
        "atomic_write",
        "check_state_dict",
        "load",
        "load_state_dict",
        "save",
    ),
)
