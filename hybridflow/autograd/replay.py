"""Replaying a pass's random numbers and autocast state during reconstruction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from hybridflow.autograd.scopes import NestingCount

__all__ = ["ReplayState", "draws_random_numbers", "is_replaying", "replaying"]

# torch modules whose forward draws no random numbers (exact types: a subclass may override
# forward). Dropout, RReLU and anything else not listed count as drawing.
_NON_RANDOM_TORCH_MODULES: frozenset[type[nn.Module]] = frozenset(
    {
        nn.Sequential,
        nn.ModuleList,
        nn.ModuleDict,
        nn.Identity,
        nn.Linear,
        nn.Bilinear,
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.ConvTranspose1d,
        nn.ConvTranspose2d,
        nn.ConvTranspose3d,
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.PReLU,
        nn.ELU,
        nn.CELU,
        nn.SELU,
        nn.GELU,
        nn.SiLU,
        nn.Mish,
        nn.Tanh,
        nn.Sigmoid,
        nn.Softplus,
        nn.Softsign,
        nn.Tanhshrink,
        nn.Hardtanh,
        nn.Hardswish,
        nn.Hardsigmoid,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.InstanceNorm1d,
        nn.InstanceNorm2d,
        nn.InstanceNorm3d,
        nn.Flatten,
        nn.Unflatten,
        nn.Upsample,
        nn.AvgPool1d,
        nn.AvgPool2d,
        nn.AvgPool3d,
        nn.AdaptiveAvgPool1d,
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveAvgPool3d,
    }
)


def draws_random_numbers(module: nn.Module) -> bool:
    """Whether running ``module`` may draw from torch's random generators.

    False only when every submodule (``module`` included) is a torch module known to draw
    none (exact type, e.g. ``nn.Conv2d``, ``nn.ReLU``; not ``nn.Dropout``) or declares
    ``draws_random_numbers = False`` in its own class body (an inherited declaration does not
    count: a subclass may add randomness). Anything else counts as drawing, so the answer errs
    on the side of re-seeding. Read at every call, so a conditioner swapped for one with
    dropout is seen at once.
    """
    return not all(
        type(m) in _NON_RANDOM_TORCH_MODULES
        or vars(type(m)).get("draws_random_numbers", True) is False
        for m in module.modules()
    )


_SEEDED = NestingCount()
"""How many seeded chains are running their layers (forward or reconstruction). Chains nested
in one then seed their own layers too, the same way in both passes."""


def replaying() -> AbstractContextManager[None]:
    """Mark the enclosed code as running inside a seeded chain."""
    return _SEEDED.entered()


def is_replaying() -> bool:
    """Whether the caller runs inside a seeded chain."""
    return _SEEDED.active


# Odd 64-bit constant (golden ratio) that spreads per-layer seeds far apart, so that layer i of
# one call and layer j of another never share a random stream.
_SEED_STRIDE = 0x9E3779B97F4A7C15
_SEED_MASK = (1 << 63) - 1
# Another odd constant (splitmix64's) for the first row of a slice of the batch.
_ROW_STRIDE = 0xBF58476D1CE4E5B9


@dataclass(frozen=True)
class ReplayState:
    """What a chain's pass must see again when a layer is re-run during backward.

    Random numbers: when ``seed`` is set, layer ``i`` runs with the generators of the CPU and of
    the input's device seeded from ``(seed, i)`` and restored afterwards, so a layer's random
    draws (dropout in a conditioner, say) are the same in the forward pass and when it is
    re-run during backward. Only one integer is kept per call, whatever the depth.

    The seed is one draw from the global CPU generator (so it follows ``torch.manual_seed``
    and advances that generator by one draw per call of a chain holding a layer that draws
    random numbers; a chain without one is not seeded), kept as a 0-d CPU tensor: drawing it
    reads no value back, so ``torch.compile`` traces the draw into its graph and a CUDA run
    waits for nothing. The value is read (a CPU ``int``, no device sync) only where a layer's
    generators are re-seeded (:meth:`layer`): ``manual_seed`` takes a Python integer, and
    ``torch.random.fork_rng`` runs eagerly under Dynamo in any case.

    A pass run on slices of the batch (micro-batches) seeds each slice's layers from
    ``(seed, i, row)`` too, ``row`` the slice's first row (:meth:`at_row`): slice ``k`` draws
    the same numbers in the forward pass and in its reconstruction, and other numbers than the
    other slices.

    Autocast: the autocast settings (enabled, dtype) of the forward pass, per device type.
    """

    seed: torch.Tensor | None
    device: torch.device
    autocast: tuple[tuple[str, bool, torch.dtype], ...]
    random_layers: frozenset[int] = frozenset()
    row: int = 0

    @classmethod
    def capture(cls, device: torch.device, seeded: Sequence[nn.Module] = ()) -> ReplayState:
        """The state of a pass that seeds the streams of ``seeded`` (a chain's layers, or none).

        Only the layers that may draw random numbers (:func:`draws_random_numbers`, judged
        once here for both passes) are re-seeded; when none may, no seed is drawn at all.
        """
        random_layers = frozenset(
            i for i, layer in enumerate(seeded) if draws_random_numbers(layer)
        )
        seed = torch.randint(_SEED_MASK, (), device="cpu") if random_layers else None
        device_types = dict.fromkeys(["cpu", device.type])
        autocast = tuple(
            (t, torch.is_autocast_enabled(t), torch.get_autocast_dtype(t)) for t in device_types
        )
        return cls(seed, device, autocast, random_layers)

    def at_row(self, row: int) -> ReplayState:
        """The state for a slice of the batch starting at ``row`` (``0``: this state)."""
        return self if row == 0 else replace(self, row=row)

    @contextmanager
    def layers(self) -> Iterator[None]:
        """Enclose a chain's run over its layers (marks it as seeded when it is)."""
        if self.seed is None:
            yield
            return
        with replaying():
            yield

    @contextmanager
    def layer(self, index: int) -> Iterator[None]:
        """Run layer ``index`` with its own reproducible random stream.

        A layer that draws no random numbers runs as it is: its stream would go unused, and
        forking the generators costs a host round trip per layer (and a graph break under
        ``torch.compile``)."""
        if index not in self.random_layers:
            yield
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            # read inside the fork, which Dynamo runs eagerly: no graph break of its own
            offset = (index + 1) * _SEED_STRIDE + self.row * _ROW_STRIDE
            layer_seed = (int(self.seed) + offset) & _SEED_MASK
            torch.default_generator.manual_seed(layer_seed)
            if devices:
                with torch.cuda.device(self.device):
                    torch.cuda.manual_seed(layer_seed)
            yield

    @contextmanager
    def autocast_state(self) -> Iterator[None]:
        """Restore the forward pass's autocast settings (backward runs without them)."""
        with ExitStack() as stack:
            for device_type, enabled, dtype in self.autocast:
                stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled))
            yield
