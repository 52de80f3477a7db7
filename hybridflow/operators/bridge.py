"""The NumPy bridge: operators written in NumPy/SciPy take and return arrays, users see tensors.

An operator declares its ``backend``. With ``"numpy"``, every tensor handed to its functions
is converted to a NumPy array and every array it returns is converted back to a tensor on the
device and in the precision of the tensor it stands for (float32 stays float32 even when SciPy
computed in float64; a complex result becomes complex64 or complex128 to match).

NumPy arrays live on the CPU. A tensor on another device (a GPU) would need a copy to the host
and back on every call, often the dominant cost, so it is refused unless the operator was
built with ``allow_device_transfer=True``: the error says so at call time, before any work.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

__all__ = ["Backend", "check_backend", "check_transfer", "from_numpy", "to_numpy"]

Backend = Literal["torch", "numpy"]


def check_backend(backend: object, where: str) -> Backend:
    """Return ``backend`` if it is one of :data:`Backend`, else raise ``ValueError``."""
    if backend not in get_args(Backend):
        raise ValueError(f"{where}: backend must be one of {get_args(Backend)}, got {backend!r}")
    return backend  # type: ignore[return-value]


def check_transfer(tensor: Tensor, where: str, allow_device_transfer: bool) -> None:
    """Refuse a non-CPU tensor for a NumPy operator unless device transfers are allowed.

    Raises:
        TypeError: naming the operator, the tensor's device and the two ways out.
    """
    if tensor.device.type != "cpu" and not allow_device_transfer:
        raise TypeError(
            f"{where}: the operator is written in NumPy but got a tensor on {tensor.device}; "
            "build it with allow_device_transfer=True to copy to the CPU and back on every "
            "call, or write it in torch (backend='torch') to stay on the device"
        )


def to_numpy(tensor: Tensor, where: str, allow_device_transfer: bool) -> np.ndarray:
    """Convert a tensor to a NumPy array (no copy for a plain CPU tensor).

    The array may share memory with the tensor: the operator's functions must not write into
    their arguments.
    """
    check_transfer(tensor, where, allow_device_transfer)
    return tensor.detach().resolve_conj().resolve_neg().cpu().numpy()


def _target_dtype(value_is_complex: bool, reference: torch.dtype) -> torch.dtype:
    real = reference.to_real()
    return torch.promote_types(real, torch.complex64) if value_is_complex else real


def from_numpy(
    value: object, dtype: torch.dtype, device: torch.device, where: str, what: str
) -> Tensor:
    """Convert what a NumPy function returned to a tensor on ``device``, in the precision of
    ``dtype``.

    Real (and integer or boolean) results take ``dtype``'s real floating type (float32 for
    ``torch.float32`` or ``torch.complex64``); complex results take the matching complex type.
    The result never shares memory with ``value``.

    Args:
        value: a NumPy array or scalar (a tensor is accepted too).
        dtype: the dtype of the tensor the result stands for (the input for a forward, the
            input whose gradient it is for a VJP).
        device: where the result goes.
        where: the operator's name for the message.
        what: which function returned it (``"forward"``, ``"vjp for input 0"``).

    Raises:
        TypeError: if ``value`` is neither an array, a NumPy scalar nor a tensor.
    """
    if isinstance(value, Tensor):
        tensor = value.detach()
    elif isinstance(value, np.ndarray | np.generic):
        tensor = torch.from_numpy(np.array(value, order="C"))
    else:
        raise TypeError(
            f"{where}: {what} returned a {type(value).__name__}, expected a NumPy array"
        )
    target = _target_dtype(tensor.is_complex(), dtype)
    return tensor.to(device=device, dtype=target, copy=isinstance(value, Tensor))
