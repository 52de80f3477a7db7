"""Receptive field of a conditioner network: how far its output at a position looks.

The halo is computed from the layers: stride-1 convolutions that keep the spatial size add
their reach, position-wise layers (activations, eval-mode BatchNorm, eval-mode dropout) add
nothing, ``nn.Sequential`` composes. Layers whose output at a position depends on every
position (global pooling, attention, ``Linear`` over a flattened map) or on statistics over
positions (GroupNorm, InstanceNorm, LayerNorm, training-mode BatchNorm) cannot be tiled
exactly and are refused, by name. A custom network declares its reach with a
``receptive_field`` attribute or method: an int (the same reach before and after, in every
dimension), one int per spatial dimension, or one ``(before, after)`` pair per dimension.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.modules.dropout import _DropoutNd

from hybridflow.autograd.tiling import Halo
from hybridflow.errors import ArgumentError

__all__ = ["receptive_halo"]

_POSITIONWISE = (
    nn.CELU,
    nn.ELU,
    nn.GELU,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Identity,
    nn.LeakyReLU,
    nn.LogSigmoid,
    nn.Mish,
    nn.PReLU,
    nn.ReLU,
    nn.ReLU6,
    nn.SELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Tanh,
    nn.Tanhshrink,
)
_COUPLES_POSITIONS = (
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)
_UNBOUNDED = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Bilinear,
    nn.Flatten,
    nn.Linear,
    nn.MultiheadAttention,
    nn.Transformer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoderLayer,
    nn.Unflatten,
)


def _refuse(name: str, module: nn.Module, why: str) -> ArgumentError:
    return ArgumentError(
        f"{name or 'the conditioner'} ({type(module).__name__}) {why}, so tiling would change "
        "the result; use tile_size=None, or a conditioner of convolutions and position-wise "
        "layers (or declare its reach with a `receptive_field` attribute)",
        argument="tile_size",
    )


def _declared(value: object, dims: int, name: str, module: nn.Module) -> Halo:
    value = value() if callable(value) else value
    entries: Sequence[object] = (value,) * dims if isinstance(value, int) else value  # type: ignore[assignment]
    halo = []
    try:
        if len(entries) != dims:
            raise TypeError
        for entry in entries:
            before, after = (entry, entry) if isinstance(entry, int) else entry  # type: ignore[misc]
            if not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (before, after)
            ):
                raise TypeError
            halo.append((before, after))
    except (TypeError, ValueError):
        raise ArgumentError(
            f"{name or 'the conditioner'} ({type(module).__name__}) declares receptive_field = "
            f"{value!r}; expected a non-negative int, {dims} ints, or {dims} (before, after) pairs",
            argument="tile_size",
        ) from None
    return tuple(halo)


def _conv_halo(conv: _ConvNd, dims: int, name: str) -> Halo:
    if len(conv.kernel_size) != dims:
        raise _refuse(name, conv, f"is {len(conv.kernel_size)}-dimensional on {dims}-D input")
    if any(s != 1 for s in conv.stride):
        raise _refuse(name, conv, f"has stride {conv.stride}: it does not keep the spatial size")
    if conv.padding_mode == "circular":
        raise _refuse(name, conv, "pads circularly: its border reads the opposite border")
    halo = []
    for k, d, pad in zip(
        conv.kernel_size,
        conv.dilation,
        (conv.padding,) * dims if isinstance(conv.padding, str) else conv.padding,
        strict=True,
    ):
        reach = d * (k - 1)
        if pad == "same":
            before = reach // 2
        elif pad != "valid" and 2 * pad == reach:
            before = pad
        else:
            raise _refuse(
                name, conv, f"has padding {conv.padding!r}: it does not keep the spatial size"
            )
        halo.append((before, reach - before))
    return tuple(halo)


def receptive_halo(module: nn.Module, dims: int, name: str = "") -> Halo:
    """The :data:`~hybridflow.autograd.tiling.Halo` of ``module`` on ``dims``-D inputs.

    Raises:
        ArgumentError: naming the submodule whose receptive field is unbounded, couples
            positions through statistics, draws random numbers per position, or is unknown.
    """
    declared = getattr(module, "receptive_field", None)
    if declared is not None:
        return _declared(declared, dims, name, module)
    if isinstance(module, nn.Sequential):
        total = [(0, 0)] * dims
        for child_name, child in module.named_children():
            part = receptive_halo(child, dims, f"{name}.{child_name}" if name else child_name)
            total = [(a + c, b + d) for (a, b), (c, d) in zip(total, part, strict=True)]
        return tuple(total)
    if isinstance(module, _ConvTransposeNd):
        raise _refuse(name, module, "is a transposed convolution")
    if isinstance(module, _ConvNd):
        return _conv_halo(module, dims, name)
    if isinstance(module, _POSITIONWISE):
        return ((0, 0),) * dims
    if isinstance(module, (_DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)):
        if module.training and module.p > 0:
            raise _refuse(name, module, "draws random numbers per tile in training mode")
        return ((0, 0),) * dims
    if isinstance(module, _BatchNorm):
        if module.training or not module.track_running_stats:
            raise _refuse(name, module, "normalises with statistics over all positions")
        return ((0, 0),) * dims
    if isinstance(module, _COUPLES_POSITIONS):
        raise _refuse(name, module, "normalises with statistics over positions")
    if isinstance(module, _UNBOUNDED):
        raise _refuse(name, module, "has an unbounded receptive field (it mixes all positions)")
    raise _refuse(
        name, module, "has an unknown receptive field (declare it with `receptive_field`)"
    )
