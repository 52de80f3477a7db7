"""Base (latent) distributions of flows, as modules so that ``.to()`` moves their tensors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

__all__ = ["FixedDistribution", "StandardNormal", "as_base", "check_event_shape"]


def check_event_shape(event_shape: object, where: str) -> torch.Size:
    """Validate an event shape: a non-empty sequence of positive ints.

    Raises:
        TypeError: not a sequence of ints.
        ValueError: empty, or with a size below 1.
    """
    if not isinstance(event_shape, (Sequence, torch.Size)) or isinstance(event_shape, str):
        raise TypeError(
            f"{where}: event_shape must be a sequence of ints, got {type(event_shape).__name__}"
        )
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in event_shape):
        raise TypeError(f"{where}: event_shape must hold ints, got {tuple(event_shape)!r}")
    if len(event_shape) == 0 or any(s < 1 for s in event_shape):
        raise ValueError(
            f"{where}: event_shape must be non-empty with positive sizes, got "
            f"{tuple(event_shape)!r}"
        )
    return torch.Size(event_shape)


class StandardNormal(nn.Module):
    r"""The standard normal :math:`N(0, I)` over events of a given shape.

    Calling the module returns a :class:`torch.distributions.Distribution` with
    ``batch_shape == ()`` and ``event_shape == event_shape``: every entry of the event is an
    independent :math:`N(0, 1)`, so
    :math:`\log p(z) = -\tfrac12 \|z\|^2 - \tfrac{n}{2} \log 2\pi` with ``n`` the number of
    entries. Its location and scale are buffers: ``.to(device)``, ``.double()`` and
    ``state_dict`` treat them as the rest of the model.

    Args:
        event_shape: shape of one event, e.g. ``(D,)`` for vectors or ``(C, H, W)`` for images.

    Example:
        >>> import torch
        >>> from hybridflow.distributions import StandardNormal
        >>> base = StandardNormal((3,))
        >>> dist = base()
        >>> tuple(dist.event_shape), tuple(dist.batch_shape)
        ((3,), ())
        >>> round(float(dist.log_prob(torch.zeros(3))), 4)  # -3/2 log(2 pi)
        -2.7568
    """

    def __init__(self, event_shape: Sequence[int]) -> None:
        super().__init__()
        self.event_shape = check_event_shape(event_shape, "StandardNormal")
        self.register_buffer("loc", torch.zeros(self.event_shape))
        self.register_buffer("scale", torch.ones(self.event_shape))

    def extra_repr(self) -> str:
        return f"event_shape={tuple(self.event_shape)}"

    def forward(self) -> Distribution:
        """The distribution, with ``batch_shape == ()`` and the module's event shape."""
        return Independent(
            Normal(self.loc, self.scale, validate_args=False),
            len(self.event_shape),
            validate_args=False,
        )

    def log_normalizer(self) -> float:
        r""":math:`\tfrac{n}{2} \log 2\pi`, the constant of :math:`-\log p(z)`."""
        return 0.5 * math.prod(self.event_shape) * math.log(2 * math.pi)


class FixedDistribution(nn.Module):
    """Wrap a ready :class:`torch.distributions.Distribution` as a base module.

    The wrapped distribution's tensors are not buffers: ``.to(device)`` does not move them.
    Prefer a module that builds the distribution from its own buffers (like
    :class:`StandardNormal`) for a model that changes device or dtype.

    Args:
        distribution: a distribution with ``batch_shape == ()``.
    """

    def __init__(self, distribution: Distribution) -> None:
        super().__init__()
        if not isinstance(distribution, Distribution):
            raise TypeError(
                "FixedDistribution: expected a torch.distributions.Distribution, got "
                f"{type(distribution).__name__}"
            )
        if distribution.batch_shape != torch.Size():
            raise ValueError(
                "FixedDistribution: the base must have batch_shape (), got "
                f"{tuple(distribution.batch_shape)}; make the event dimensions independent "
                "(torch.distributions.Independent)"
            )
        self.distribution = distribution

    def forward(self) -> Distribution:
        return self.distribution


def as_base(
    base: nn.Module | Distribution | None, event_shape: Sequence[int] | None, where: str
) -> tuple[nn.Module, torch.Size]:
    """Resolve a flow's ``base`` argument to a module and its event shape.

    ``None`` gives :class:`StandardNormal` of ``event_shape`` (then required); a
    :class:`~torch.distributions.Distribution` is wrapped in :class:`FixedDistribution`; a
    module must return a distribution with ``batch_shape == ()`` when called. When both a base
    and ``event_shape`` are given they must agree.

    Raises:
        ValueError: no base and no event shape, or shapes that disagree.
        TypeError: a base of another type, or a module that returns no distribution.
    """
    if base is None:
        if event_shape is None:
            raise ValueError(
                f"{where}: give event_shape (the shape of one parameter, e.g. (D,) or "
                "(C, H, W)) or a base distribution"
            )
        shape = check_event_shape(event_shape, where)
        return StandardNormal(shape), shape
    if isinstance(base, Distribution):
        base = FixedDistribution(base)
    if not isinstance(base, nn.Module):
        raise TypeError(
            f"{where}: base must be an nn.Module returning a Distribution, a Distribution or "
            f"None, got {type(base).__name__}"
        )
    dist = base()
    if not isinstance(dist, Distribution):
        raise TypeError(
            f"{where}: calling the base module must return a torch Distribution, got "
            f"{type(dist).__name__}"
        )
    if dist.batch_shape != torch.Size():
        raise ValueError(
            f"{where}: the base distribution must have batch_shape (), got "
            f"{tuple(dist.batch_shape)}"
        )
    if event_shape is not None and torch.Size(event_shape) != dist.event_shape:
        raise ValueError(
            f"{where}: event_shape {tuple(event_shape)} disagrees with the base's event shape "
            f"{tuple(dist.event_shape)}"
        )
    if len(dist.event_shape) == 0:
        raise ValueError(f"{where}: the base distribution has no event dimensions")
    return base, dist.event_shape
