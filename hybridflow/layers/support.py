"""``Bounded``: a fixed bijection from a box or half-line support onto all of R, per entry."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hybridflow.autograd.checks import check_finite, check_input
from hybridflow.autograd.module import InvertibleModule

__all__ = ["Bounded"]


def _bounds(values: object, name: str, where: str) -> list[float]:
    if isinstance(values, Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
        raise TypeError(f"{where}: {name} must be a non-empty sequence of numbers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            raise TypeError(f"{where}: {name} must hold numbers (inf allowed), got {v!r}")
        out.append(float(v))
    return out


class Bounded(InvertibleModule):
    r"""Map parameters with a bounded support onto :math:`\mathbb{R}^D`, entry by entry.

    Put it first in a flow's transform (which maps parameters :math:`\theta` to latents): the
    flow's density then lives on the support, and every sample lies inside it, so no mass leaks
    past a bounded prior and no sample needs rejecting. Per entry, with bounds :math:`(l, u)`:

    * box, :math:`l, u` finite: the logit :math:`y = \log v - \log(1 - v)`,
      :math:`v = (\theta - l) / (u - l)`; inverse :math:`\theta = l + (u - l)\,\sigma(y)`;
    * lower bound only: the inverse softplus :math:`y = t + \log(1 - e^{-t})`,
      :math:`t = \theta - l`; inverse :math:`\theta = l + \mathrm{softplus}(y)`;
    * upper bound only: the same on :math:`t = u - \theta`, with :math:`y` negated;
    * no bound: the identity.

    The log determinant of the forward map sums
    :math:`-\log(u - l) - \log v - \log(1 - v)` (box) and :math:`-\log(1 - e^{-t})` (half
    line) over the entries; the inverse pass returns :math:`\log(u - l) + \log\sigma(y) +
    \log\sigma(-y)` and :math:`\log\sigma(\pm y)`. The layer has no parameters; the bounds are
    buffers (moved by ``.to()``), and the constructor takes them as plain numbers so that a
    flow holding the layer saves as plain data (:func:`hybridflow.save`).

    In float32 the sigmoid rounds to 0 or 1 for :math:`|y| \gtrsim 17`: such a sample lands on
    the boundary itself. :meth:`forward` refuses points outside the closed support.

    Args:
        lower: the lower bound of each of the ``D`` entries (``-inf`` for none).
        upper: the upper bound of each entry (``inf`` for none); ``upper > lower``.

    Example:
        >>> import torch
        >>> from hybridflow.layers import Bounded
        >>> layer = Bounded([-1.0, 0.0], [1.0, float("inf")])  # a box entry, a positive one
        >>> theta, _ = layer.inverse(torch.tensor([[0.0, 0.0]]))
        >>> [round(v, 4) for v in theta[0].tolist()]  # centre of the box, softplus(0)
        [0.0, 0.6931]

    References:
        Stan Development Team, "Stan Reference Manual", constrained parameters (logit and
        log transforms); Dirmeier et al. / sbi's ``biject_transform_zuko``.
    """

    draws_random_numbers = False

    def __init__(self, lower: Sequence[float], upper: Sequence[float]) -> None:
        super().__init__()
        low, high = _bounds(lower, "lower", "Bounded"), _bounds(upper, "upper", "Bounded")
        if len(low) != len(high):
            raise ValueError(
                f"Bounded: lower has {len(low)} entries and upper {len(high)}; give one bound "
                "pair per parameter entry"
            )
        bad = [i for i, (a, b) in enumerate(zip(low, high, strict=True)) if not a < b]
        if bad or any(a == math.inf for a in low) or any(b == -math.inf for b in high):
            raise ValueError(
                f"Bounded: every entry needs lower < upper (finite or -inf/inf), got entries "
                f"{bad} of lower={low}, upper={high}"
            )
        self.num_features = len(low)
        self.register_buffer("lower", torch.tensor(low))
        self.register_buffer("upper", torch.tensor(high))

    def extra_repr(self) -> str:
        return f"lower={self.lower.tolist()}, upper={self.upper.tolist()}"

    def _kinds(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        lo, hi = self.lower.to(like.dtype), self.upper.to(like.dtype)
        has_lo, has_hi = torch.isfinite(lo), torch.isfinite(hi)
        return lo, hi, has_lo & has_hi, has_lo & ~has_hi, ~has_lo & has_hi

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, "Bounded", self.num_features, 0)
        lo, hi, box, low_only, high_only = self._kinds(x)
        outside = (x < lo) | (x > hi)
        if bool(outside.any()):
            raise ValueError(
                f"Bounded: {int(outside.sum())} input value(s) lie outside the support "
                f"[{self.lower.tolist()}, {self.upper.tolist()}]; the density is 0 there"
            )
        # Every branch is evaluated on values safe for it (0.5, 1) where it is not selected,
        # so no unused branch puts a NaN or an infinite derivative into the gradient.
        width = torch.where(box, hi - lo, torch.ones_like(hi))
        v = torch.where(box, (x - torch.where(box, lo, torch.zeros_like(lo))) / width, 0.5)
        log_v, log_1mv = torch.log(v), torch.log1p(-v)
        half_line = low_only | high_only
        t = torch.where(low_only, x - lo, torch.where(high_only, hi - x, torch.ones_like(x)))
        log_one_minus = torch.log(-torch.expm1(-t))  # log(1 - e^-t)
        soft = t + log_one_minus
        y = torch.where(
            box, log_v - log_1mv, torch.where(low_only, soft, torch.where(high_only, -soft, x))
        )
        logdet = torch.where(
            box,
            -torch.log(width) - log_v - log_1mv,
            torch.where(half_line, -log_one_minus, torch.zeros_like(x)),
        )
        return y, logdet.sum(1)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(y, "Bounded.inverse", self.num_features, 0)
        check_finite(y, "Bounded.inverse")
        lo, hi, box, low_only, high_only = self._kinds(y)
        width = torch.where(box, hi - lo, torch.ones_like(hi))
        in_box = torch.where(box, lo, torch.zeros_like(lo)) + width * torch.sigmoid(y)
        box_logdet = torch.log(width) + F.logsigmoid(y) + F.logsigmoid(-y)
        x = torch.where(
            box,
            in_box,
            torch.where(
                low_only, lo + F.softplus(y), torch.where(high_only, hi - F.softplus(-y), y)
            ),
        )
        logdet = torch.where(
            box,
            box_logdet,
            torch.where(
                low_only,
                F.logsigmoid(y),
                torch.where(high_only, F.logsigmoid(-y), torch.zeros_like(y)),
            ),
        )
        return x, logdet.sum(1)
