"""Old home of the checksums and the checked ``torch.load``, now :mod:`hybridflow.io.integrity`.

Its names keep working for one release and warn once.
"""

from hybridflow.deprecation import moved_names

__all__: list[str] = []

_MOVED = ("digest", "first_line", "read_torch_file", "verify_digest")
__getattr__ = moved_names(__name__, "hybridflow.io", _MOVED)
