"""Replaying a pass's random numbers and autocast state during reconstruction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass

import torch

from hybridflow.autograd.scopes import NestingCount

__all__ = ["ReplayState", "is_replaying", "replaying"]


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


@dataclass(frozen=True)
class ReplayState:
    """What a chain's pass must see again when a layer is re-run during backward.

    Random numbers: when ``seed`` is set, layer ``i`` runs with the generators of the CPU and of
    the input's device seeded from ``(seed, i)`` and restored afterwards, so a layer's random
    draws (dropout in a conditioner, say) are the same in the forward pass and when it is
    re-run during backward. Only one integer is kept per call, whatever the depth.

    The seed is one draw from the global CPU generator (so it follows ``torch.manual_seed``
    and advances that generator by one draw per call), kept as a 0-d CPU tensor: drawing it
    reads no value back, so ``torch.compile`` traces the draw into its graph and a CUDA run
    waits for nothing. The value is read (a CPU ``int``, no device sync) only where a layer's
    generators are re-seeded (:meth:`layer`): ``manual_seed`` takes a Python integer, and
    ``torch.random.fork_rng`` runs eagerly under Dynamo in any case.

    Autocast: the autocast settings (enabled, dtype) of the forward pass, per device type.
    """

    seed: torch.Tensor | None
    device: torch.device
    autocast: tuple[tuple[str, bool, torch.dtype], ...]

    @classmethod
    def capture(cls, device: torch.device, preserve_rng_state: bool) -> ReplayState:
        seed = torch.randint(_SEED_MASK, (), device="cpu") if preserve_rng_state else None
        device_types = dict.fromkeys(["cpu", device.type])
        autocast = tuple(
            (t, torch.is_autocast_enabled(t), torch.get_autocast_dtype(t)) for t in device_types
        )
        return cls(seed, device, autocast)

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
        """Run layer ``index`` with its own reproducible random stream."""
        if self.seed is None:
            yield
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            # read inside the fork, which Dynamo runs eagerly: no graph break of its own
            layer_seed = (int(self.seed) + (index + 1) * _SEED_STRIDE) & _SEED_MASK
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
