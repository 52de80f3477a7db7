"""The base of the layers that wrap one invertible module: Inverse, Split, ResizeCondition."""

from __future__ import annotations

from typing import ClassVar

from hybridflow.autograd import InvertibleModule
from hybridflow.errors import ArgumentTypeError

__all__ = ["Wrapper"]


class Wrapper(InvertibleModule):
    """An invertible module built around one other, which it runs in its passes.

    The wrapped module is checked to be invertible and stored under :attr:`inner_name` (its
    parameters are the wrapper's, shared, not copied); whether the wrapper takes a condition
    and whether it waits for a data-dependent initialisation are the wrapped module's.

    Args:
        inner: the wrapped invertible module.
    """

    draws_random_numbers = False

    inner_name: ClassVar[str] = "inner"
    """The attribute that holds the wrapped module (and the prefix of its ``state_dict`` keys)."""

    def __init__(self, inner: InvertibleModule) -> None:
        super().__init__()
        if not isinstance(inner, InvertibleModule):
            raise ArgumentTypeError(
                f"expected an InvertibleModule, got {type(inner).__name__}",
                argument=self.inner_name,
                where=(type(self).__name__,),
            )
        setattr(self, self.inner_name, inner)

    @property
    def wrapped(self) -> InvertibleModule:
        """The wrapped module."""
        return getattr(self, self.inner_name)

    @property
    def takes_condition(self) -> bool:
        return self.wrapped.takes_condition

    @property
    def is_initialized(self) -> bool:
        return self.wrapped.is_initialized
