"""The flow step that Glow, the vector coupling flow and the benchmarks' model share."""

from __future__ import annotations

from collections.abc import Callable

from hybridflow.autograd import InvertibleModule
from hybridflow.layers.actnorm import ActNorm
from hybridflow.layers.conv1x1 import InvConv1x1

__all__ = ["glow_step", "offset_seed"]


def offset_seed(seed: int | None, offset: int) -> int | None:
    """The seed of the ``offset``-th seeded layer of a network (``None`` stays ``None``)."""
    return None if seed is None else seed + offset


def glow_step(
    width: int, seed: int | None, coupling: Callable[[], InvertibleModule]
) -> list[InvertibleModule]:
    """One step of Glow's flow: ActNorm -> InvConv1x1 -> ``coupling()``, on ``width`` channels.

    The ActNorm standardises each channel (data-dependent initialisation), the 1x1 convolution
    (``seed`` for its initial rotation; ``None`` draws from torch's global RNG) mixes the
    channels so that every one is transformed across steps, and the coupling transforms half
    of them. The coupling is built last, so that a network drawing from the global RNG draws
    in the order of its layers.
    """
    return [ActNorm(width), InvConv1x1(width, seed=seed), coupling()]
