"""The bounds of a prior's support, for :class:`~hybridflow.layers.Bounded`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.distributions import Distribution, constraints

__all__ = ["Support", "support_bounds"]

Support = Distribution | constraints.Constraint | tuple[Sequence[float], Sequence[float]]
"""What ``support=`` takes: a prior (its ``.support``), a torch constraint, or a pair
``(lower, upper)`` of per-entry bounds (``-inf``/``inf`` for none)."""


def _per_entry(bound: object, features: int, fill: float) -> list[float]:
    values = torch.as_tensor(bound, dtype=torch.float64).flatten()
    if values.numel() == 1:
        values = values.expand(features)
    if values.numel() != features:
        raise ValueError(
            f"support_bounds: the support has {values.numel()} bound(s), the parameter "
            f"{features} entries"
        )
    return [fill if math.isnan(v) else v for v in values.tolist()]


def support_bounds(support: Support, features: int) -> tuple[list[float], list[float]]:
    """Per-entry ``(lower, upper)`` bounds of a support over vectors of ``features`` entries.

    Understands the constraints of torch's priors: ``real``, ``interval`` and
    ``half_open_interval`` (``Uniform``, sbi's ``BoxUniform``), ``greater_than``/``positive``
    and ``nonnegative``, ``less_than``, each possibly wrapped in ``independent``.

    Args:
        support: a prior, a constraint, or a ``(lower, upper)`` pair.
        features: the number of entries ``D`` of a parameter vector.

    Returns:
        Two lists of ``D`` floats, ``-inf``/``inf`` where an entry is unbounded.

    Raises:
        TypeError: a support of another kind (a simplex, an integer set, ...), which a bound
            per entry cannot describe.
        ValueError: bounds of another size than ``features``.

    Example:
        >>> import torch
        >>> from torch.distributions import Independent, Uniform
        >>> prior = Independent(Uniform(-torch.ones(2), torch.ones(2)), 1)
        >>> support_bounds(prior, 2)
        ([-1.0, -1.0], [1.0, 1.0])
    """
    if isinstance(support, tuple) and len(support) == 2:
        return _per_entry(support[0], features, -math.inf), _per_entry(
            support[1], features, math.inf
        )
    constraint = support.support if isinstance(support, Distribution) else support
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    inf = math.inf
    if constraint is constraints.real:
        return [-inf] * features, [inf] * features
    if isinstance(constraint, (constraints.interval, constraints.half_open_interval)):
        low, high = constraint.lower_bound, constraint.upper_bound
    elif isinstance(constraint, (constraints.greater_than, constraints.greater_than_eq)):
        low, high = constraint.lower_bound, inf
    elif isinstance(constraint, constraints.less_than):
        low, high = -inf, constraint.upper_bound
    else:
        raise TypeError(
            f"support_bounds: cannot bound a parameter entry by entry on the support "
            f"{constraint!r}; pass support=(lower, upper) with one bound per entry"
        )
    return _per_entry(low, features, -inf), _per_entry(high, features, inf)
