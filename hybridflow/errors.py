"""The errors and warnings hybridflow raises, by type, so callers match types, never text.

Each error subclasses the built-in that fits (``ValueError``, ``TypeError``,
``RuntimeError``), so ``except ValueError`` clauses written before these types existed keep
working. Code in hybridflow that reacts to an error matches one of these types; no code
decides anything by parsing a message.

========================  ==============  ===================================================
type                      built-in        raised when
========================  ==============  ===================================================
``InputError``            ``ValueError``  a tensor has the wrong shape, values, batch size
``InputTypeError``        ``TypeError``   an input is not a tensor, or has the wrong dtype or
                                          device
``ArgumentError``         ``ValueError``  a constructor or config argument is out of range
``ArgumentTypeError``     ``TypeError``   a constructor or config argument has the wrong type
``FileFormatError``       ``ValueError``  a model file or checkpoint is corrupt, of another
                                          format or version, or fails its checksum (a
                                          missing file is ``FileNotFoundError``)
``CheckpointMismatch``    ``ValueError``  a file is sound but does not fit what loads it
                                          (other architecture, other training settings)
``ReconstructionError``   ``RuntimeError``  reconstruction would return a wrong gradient:
                                          rebuilt activations drifted or became non-finite
``ModifiedError``         ``RuntimeError``  a parameter, buffer, saved output or condition
                                          changed between a forward pass and its backward,
                                          or a distribution's transform parameters were
                                          swapped (``functional_call``) since it was built
========================  ==============  ===================================================

``DriftWarning`` (a ``UserWarning``) reports reconstruction drift above tolerance under the
default ``on_drift="warn"`` policy.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "CheckpointMismatch",
    "DriftWarning",
    "FileFormatError",
    "HybridflowError",
    "InputError",
    "InputTypeError",
    "ModifiedError",
    "ReconstructionError",
]


class HybridflowError(Exception):
    """Base of every error hybridflow raises on purpose.

    ``where`` is the path of places the error passed through, outermost first (for example
    ``("Graph node 'flow'", "Chain layer 3 (AffineCoupling)")``); ``detail`` is the message
    without that path. ``str(error)`` joins both: ``"Chain layer 3 (AffineCoupling): ..."``.
    """

    def __init__(self, detail: str, *, where: tuple[str, ...] = ()) -> None:
        self.detail = detail
        self.where = tuple(where)
        super().__init__(self._text())

    def _text(self) -> str:
        return ": ".join((*self.where, self.detail))

    def located(self, place: str) -> HybridflowError:
        """Prefix ``place`` to the path (in place) and return the error, for re-raising."""
        self.where = (place, *self.where)
        self.args = (self._text(), *self.args[1:])
        return self


class InputError(HybridflowError, ValueError):
    """A tensor given to a layer, chain, graph or flow has the wrong shape or values."""


class InputTypeError(HybridflowError, TypeError):
    """An input is not a tensor, or its dtype or device does not match the module's."""


class ArgumentError(HybridflowError, ValueError):
    """A constructor or configuration argument is out of its range. ``argument`` names it."""

    def __init__(self, detail: str, *, argument: str | None = None, where: tuple[str, ...] = ()):
        self.argument = argument
        super().__init__(detail, where=where)


class ArgumentTypeError(HybridflowError, TypeError):
    """A constructor or configuration argument has the wrong type. ``argument`` names it."""

    def __init__(self, detail: str, *, argument: str | None = None, where: tuple[str, ...] = ()):
        self.argument = argument
        super().__init__(detail, where=where)


class FileFormatError(HybridflowError, ValueError):
    """A model file or checkpoint cannot be trusted: ``path`` names it."""

    def __init__(self, detail: str, *, path: object = None, where: tuple[str, ...] = ()):
        self.path = None if path is None else str(path)
        super().__init__(detail, where=where)


class CheckpointMismatch(FileFormatError):
    """A sound file that does not fit what loads it (architecture or settings differ)."""


class ReconstructionError(HybridflowError, RuntimeError):
    """Reconstruction in backward rebuilt activations that would give a wrong gradient.

    ``layer`` names the layer (its path in the chain) where it was detected; ``error`` is the
    measured relative error of the rebuilt activation (``inf`` for non-finite values).
    """

    def __init__(
        self,
        detail: str,
        *,
        layer: str | None = None,
        error: float | None = None,
        where: tuple[str, ...] = (),
    ) -> None:
        self.layer = layer
        self.error = error
        super().__init__(detail, where=where)


class ModifiedError(HybridflowError, RuntimeError):
    """A tensor the backward pass relies on changed in place after the forward pass, or the
    parameters a :class:`~hybridflow.FlowDistribution` was built with were swapped out (by
    ``torch.func.functional_call``) before it was used.

    ``tensor`` names it (a parameter or buffer name, ``"output"`` or ``"condition"``).
    """

    def __init__(self, detail: str, *, tensor: str | None = None, where: tuple[str, ...] = ()):
        self.tensor = tensor
        super().__init__(detail, where=where)


class DriftWarning(UserWarning):
    """Rebuilt activations drifted from the forward pass's by more than the tolerance."""
