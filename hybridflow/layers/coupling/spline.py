"""Monotonic rational-quadratic spline coupling (Neural Spline Flows) with identity tails."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hybridflow.arguments import integer, number
from hybridflow.layers.coupling.base import CouplingLayer
from hybridflow.layers.coupling.conditioners import Subnet
from hybridflow.layers.shapes import per_sample_sum

__all__ = ["SPLINE_BOUND", "SplineCoupling", "SplineKnots"]

SPLINE_BOUND = 4.0
"""The default half width ``B`` of every spline's interval :math:`[-B, B]` (in the
standardised units that ActNorm gives): one value for :class:`SplineCoupling`,
:class:`~hybridflow.layers.ConditionalSpline` and :func:`~hybridflow.distributions.coupling_flow`."""


class SplineKnots(NamedTuple):
    r"""The knots of a rational-quadratic spline, per transformed entry.

    Attributes:
    Each field has shape ``(B, C, K + 1, *S)`` (the knot axis is dimension 2, next to the
    channels, so that softmax and cumsum run along a strided axis with contiguous spatial rows;
    vectors get one trailing position, ``S = (1,)``).

    Attributes:
        x: input knots :math:`x_0 = -B < \dots < x_K = B`.
        y: output knots :math:`y_0 = -B < \dots < y_K = B`.
        derivatives: :math:`\delta_0 = 1, \dots, \delta_K = 1`, all positive.
    """

    x: Tensor
    y: Tensor
    derivatives: Tensor


class _Bin(NamedTuple):
    """The bin of each entry: left knot, width, height, slope and end derivatives."""

    x_lo: Tensor
    width: Tensor
    y_lo: Tensor
    height: Tensor
    slope: Tensor
    d_lo: Tensor
    d_hi: Tensor


def _gather_bin(knots: SplineKnots, index: Tensor) -> _Bin:
    """Pick bin ``index`` (shape ``(B, C, 1, *S)``) of every entry."""

    def at(values: Tensor, offset: int) -> Tensor:
        return values.gather(2, index + offset).squeeze(2)

    x_lo, y_lo = at(knots.x, 0), at(knots.y, 0)
    width, height = at(knots.x, 1) - x_lo, at(knots.y, 1) - y_lo
    return _Bin(
        x_lo,
        width,
        y_lo,
        height,
        height / width,
        at(knots.derivatives, 0),
        at(knots.derivatives, 1),
    )


def _locate(values: Tensor, knots: Tensor) -> Tensor:
    """Bin index in ``[0, K - 1]`` of each of ``values`` ``(B, C, *S)`` (already clamped to the
    knot range), shape ``(B, C, 1, *S)``.

    Counting interior knots at or below the value puts a value on a knot into the bin on its
    right and the right end ``B`` into the last bin; no index can fall outside.
    """
    return (values.unsqueeze(2) >= knots[:, :, 1:-1]).sum(dim=2, keepdim=True)


def _log_slope(b: _Bin, theta: Tensor) -> Tensor:
    r""":math:`\log dy/dx` of the bin's rational-quadratic at :math:`\theta \in [0, 1]`."""
    one_minus = 1 - theta
    mixed = theta * one_minus
    denominator = b.slope + (b.d_lo + b.d_hi - 2 * b.slope) * mixed
    numerator = b.d_hi * theta**2 + 2 * b.slope * mixed + b.d_lo * one_minus**2
    return 2 * torch.log(b.slope) + torch.log(numerator) - 2 * torch.log(denominator)


def _with_positions(h: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Give vectors ``(B, C)`` one trailing spatial position, ``(B, C, 1)``: the spline code
    keeps its knot axis at dimension 2 and wants something after it (softmax along a last
    axis of size ``K`` is several times slower on CPU)."""
    if x.dim() == 2:
        return h.unsqueeze(-1), x.unsqueeze(-1)
    return h, x


class SplineCoupling(CouplingLayer):
    r"""Rational-quadratic spline coupling: :math:`y_1 = x_1`, :math:`y_2 = g_{h}(x_2)`,
    :math:`h = \mathrm{NN}([x_1, c])`, each entry of :math:`x_2` mapped by its own monotonic
    rational-quadratic spline on :math:`[-B, B]` and by the identity outside.

    Per entry, the conditioner gives ``K`` bin widths and heights (softmax, floored at
    ``min_bin_width``/``min_bin_height``) and ``K - 1`` interior knot derivatives (softplus,
    floored at ``min_derivative``); the end derivatives are 1, so the spline joins the linear
    tails with a continuous slope. In bin :math:`k`, with :math:`\theta = (x - x_k) / w_k`,
    :math:`s_k = h_k / w_k`:

    .. math::
        y = y_k + \frac{h_k \left(s_k \theta^2 + \delta_k \theta (1 - \theta)\right)}
        {s_k + (\delta_{k+1} + \delta_k - 2 s_k)\,\theta (1 - \theta)}

    and the log determinant sums :math:`\log dy/dx` over the entries inside :math:`[-B, B]`
    (0 outside). The inverse solves a quadratic for :math:`\theta` in its cancellation-free
    form. Stable everywhere: the spline branch is evaluated on the input clamped to
    :math:`[-B, B]` and selected with ``torch.where``, so values far in the tails and values on
    the knots give finite outputs, log determinants and gradients in both directions.

    With the default zero-initialised conditioner the layer starts as the identity (uniform
    bins, unit derivatives). The reconstructing rule is the template's (one conditioner pass
    forward and one backward); its elementwise part inverts the splines and differentiates
    them with autograd, computing the knots once for both.

    Args:
        num_features: see :class:`~hybridflow.layers.CouplingLayer`.
        hidden: see :class:`~hybridflow.layers.CouplingLayer`.
        cond_features: see :class:`~hybridflow.layers.CouplingLayer`.
        spatial_dims: see :class:`~hybridflow.layers.CouplingLayer`.
        subnet: see :class:`~hybridflow.layers.CouplingLayer`; it must output
            ``(3 * bins - 1)`` channels per transformed channel, grouped per channel.
        bins: the number of bins ``K``, at least 2.
        bound: the half width ``B`` of the spline's interval; identity outside (default
            :data:`SPLINE_BOUND`).
        min_bin_width: floor of a bin's width, as a fraction of ``2B``.
        min_bin_height: floor of a bin's height, as a fraction of ``2B``.
        min_derivative: floor of the interior knot derivatives.

    Example:
        >>> import torch
        >>> from hybridflow.layers import SplineCoupling
        >>> layer = SplineCoupling(4, hidden=8, bins=4, bound=2.0)
        >>> x = torch.tensor([[0.5, -1.0, 1e6, -0.3]])
        >>> y, logdet = layer(x)
        >>> torch.allclose(y, x), bool(logdet.abs().max() < 1e-6)  # identity at initialisation
        (True, True)

    References:
        Durkan et al., "Neural Spline Flows", 2019;
        Gregory & Delbourgo, "Piecewise rational quadratic interpolation to monotonic data",
        1982.
    """

    draws_random_numbers = False

    previous_config_names = ("hybridflow.layers.spline_coupling.SplineCoupling",)

    def __init__(
        self,
        num_features: int,
        hidden: int = 64,
        cond_features: int = 0,
        spatial_dims: int = 0,
        subnet: Subnet | None = None,
        bins: int = 8,
        bound: float = SPLINE_BOUND,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ) -> None:
        where = type(self).__name__
        integer(bins, "bins", where, minimum=2)
        number(bound, "bound", where, minimum=0, open_low=True)
        for name, floor in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
            # the bins' floors must leave room: floor * bins < 1
            number(floor, name, where, minimum=0, maximum=1 / bins, open_high=True)
        number(
            min_derivative,
            "min_derivative",
            where,
            minimum=0,
            maximum=1,
            open_low=True,
            open_high=True,
        )
        super().__init__(
            num_features,
            hidden,
            cond_features,
            spatial_dims,
            subnet,
            params_per_feature=3 * bins - 1,
        )
        self.bins = bins
        self.bound = float(bound)
        self.min_bin_width = min_bin_width
        self.min_bin_height = min_bin_height
        self.min_derivative = min_derivative
        # Softplus offset that makes a raw derivative of 0 give exactly 1 (identity at init).
        self._derivative_offset = math.log(math.expm1(1 - min_derivative))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bins={self.bins}, bound={self.bound}"

    # -- spline parameters -----------------------------------------------------------------
    def _edges(self, raw: Tensor, floor: float) -> Tensor:
        """Knots ``-B = k_0 < ... < k_K = B`` along dimension 2 from raw bin sizes
        ``(B, C, K, *S)``."""
        sizes = floor + (1 - floor * self.bins) * torch.softmax(raw, dim=2)
        inner = 2 * self.bound * torch.cumsum(sizes[:, :, :-1], dim=2) - self.bound
        end = torch.full_like(inner[:, :, :1], self.bound)
        return torch.cat([-end, inner, end], dim=2)

    def _knots_from(self, h: Tensor, like: Tensor) -> SplineKnots:
        """Spline knots for every entry of ``like`` ``(B, C2, *S)`` (``S`` non-empty) from the
        conditioner output ``h`` ``(B, C2 * (3K - 1), *S)``, channel ``c (3K - 1) + p`` holding
        parameter ``p`` of channel ``c``. Each result has shape ``(B, C2, K + 1, *S)``."""
        k = self.bins
        raw = h.reshape(like.shape[0], like.shape[1], 3 * k - 1, *like.shape[2:])
        raw_widths, raw_heights, raw_derivatives = raw.split([k, k, k - 1], dim=2)
        interior = self.min_derivative + F.softplus(raw_derivatives + self._derivative_offset)
        ones = torch.ones_like(interior[:, :, :1])
        return SplineKnots(
            self._edges(raw_widths, self.min_bin_width),
            self._edges(raw_heights, self.min_bin_height),
            torch.cat([ones, interior, ones], dim=2),
        )

    def knots(self, x: Tensor, cond: Tensor | None = None) -> SplineKnots:
        """The splines the layer applies to the transformed half of ``x`` (given its
        pass-through half and the condition), for inspection and plotting.

        Args:
            x: an input ``(B, num_features, *spatial)``; only its pass-through half is read.
            cond: the condition, as for :meth:`forward`.

        Returns:
            :class:`SplineKnots`, each of shape ``(B, num_features - num_features // 2,
            *spatial, bins + 1)`` (the knot axis last).
        """
        self._check(x, cond, "SplineCoupling.knots")
        x1, x2 = self._split(x)
        knots = self._knots_from(*_with_positions(self._condition(x1, cond), x2))
        if x.dim() == 2:
            knots = SplineKnots(*(k.squeeze(-1) for k in knots))
        return SplineKnots(*(k.movedim(2, -1) for k in knots))

    # -- the elementwise map ---------------------------------------------------------------
    def _transform(self, x2: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h, fields = _with_positions(h, x2)
        y2, logdet = self._spline(fields, self._knots_from(h, fields))
        return y2.reshape(x2.shape), logdet

    def _inverse_transform(self, y2: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h, fields = _with_positions(h, y2)
        x2, logdet = self._inverse_spline(fields, self._knots_from(h, fields))
        return x2.reshape(y2.shape), logdet

    def _elementwise_vjp(
        self, out2: Tensor, h: Tensor, grad_out2: Tensor, grad_logdet: Tensor, inverse: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The template's generic rule (invert, then differentiate the map with autograd),
        computing the knots once for both: they cost about as much as the spline itself."""
        h = h.detach().requires_grad_(True)
        with torch.enable_grad():
            h_fields, fields = _with_positions(h, out2)
            knots = self._knots_from(h_fields, fields)
        run, undo = (
            (self._inverse_spline, self._spline)
            if inverse
            else (self._spline, self._inverse_spline)
        )
        with torch.no_grad():
            rebuilt = undo(fields, SplineKnots(*(k.detach() for k in knots)))[0]
        rebuilt.requires_grad_(True)
        with torch.enable_grad():
            out, logdet = run(rebuilt, knots)
            grad_in, grad_h = torch.autograd.grad(
                (out, logdet), (rebuilt, h), (grad_out2.reshape(out.shape), grad_logdet)
            )
        return rebuilt.detach().reshape(out2.shape), grad_in.reshape(out2.shape), grad_h

    def _spline(self, x2: Tensor, knots: SplineKnots) -> tuple[Tensor, Tensor]:
        """``(y2, logdet)`` of the splines (identity tails) on ``x2`` ``(B, C2, *S)``."""
        inside = (x2 >= -self.bound) & (x2 <= self.bound)
        safe = x2.clamp(-self.bound, self.bound)
        b = _gather_bin(knots, _locate(safe, knots.x))
        theta = (safe - b.x_lo) / b.width
        mixed = theta * (1 - theta)
        numerator = b.height * (b.slope * theta**2 + b.d_lo * mixed)
        denominator = b.slope + (b.d_lo + b.d_hi - 2 * b.slope) * mixed
        y2 = torch.where(inside, b.y_lo + numerator / denominator, x2)
        log_slope = torch.where(inside, _log_slope(b, theta), torch.zeros_like(theta))
        return y2, per_sample_sum(log_slope)

    def _inverse_spline(self, y2: Tensor, knots: SplineKnots) -> tuple[Tensor, Tensor]:
        """``(x2, logdet of the inverse)``: the root in :math:`[0, 1]` of the bin's quadratic."""
        inside = (y2 >= -self.bound) & (y2 <= self.bound)
        safe = y2.clamp(-self.bound, self.bound)
        b = _gather_bin(knots, _locate(safe, knots.y))
        rise = safe - b.y_lo
        curvature = b.d_lo + b.d_hi - 2 * b.slope
        qa = b.height * (b.slope - b.d_lo) + rise * curvature
        qb = b.height * b.d_lo - rise * curvature
        qc = -b.slope * rise
        # The discriminant is positive for a monotonic spline; the floor keeps sqrt's
        # derivative finite should rounding take it to 0.
        root = torch.sqrt((qb**2 - 4 * qa * qc).clamp_min(torch.finfo(y2.dtype).tiny))
        theta = 2 * qc / (-qb - root)
        x2 = torch.where(inside, b.x_lo + theta * b.width, y2)
        log_slope = torch.where(inside, _log_slope(b, theta), torch.zeros_like(theta))
        return x2, -per_sample_sum(log_slope)
