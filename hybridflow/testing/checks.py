"""Public checkers for invertible blocks: round trips, log determinants, reconstruction, Taylor."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hybridflow.autograd.chain import Chain
from hybridflow.autograd.module import InvertibleModule

__all__ = [
    "TaylorResult",
    "check_inverse",
    "check_invertible_module",
    "check_logdet",
    "check_reconstruction_gradients",
    "check_taylor",
    "taylor_test",
]


def _max_relative(a: Tensor, b: Tensor) -> float:
    scale = max(float(b.abs().max()), 1e-300)
    return float((a - b).abs().max()) / max(scale, 1.0)


def check_inverse(
    module: InvertibleModule, x: Tensor, cond: Tensor | None = None, atol: float = 1e-10
) -> None:
    """Assert ``inverse(forward(x)) == x``, ``forward(inverse(y)) == y`` and that the two
    log determinants cancel, to ``atol`` (relative to the values' scale when it exceeds 1).

    Raises:
        AssertionError: saying which property failed and by how much.
    """
    name = type(module).__name__
    with torch.no_grad():
        y, logdet = module(x, cond)
        x_back, logdet_inverse = module.inverse(y, cond)
        y_again, logdet_again = module(x_back, cond)
    checks = {
        "inverse(forward(x)) != x": _max_relative(x_back, x),
        "forward(inverse(y)) != y": _max_relative(y_again, y),
        "forward and inverse log determinants do not cancel": _max_relative(
            logdet + logdet_inverse, torch.zeros_like(logdet)
        ),
        "log determinant changed between calls": _max_relative(logdet_again, logdet),
    }
    if logdet.shape != (x.shape[0],):
        raise AssertionError(f"{name}: logdet has shape {tuple(logdet.shape)}, expected (B,)")
    for message, error in checks.items():
        if not error <= atol:
            raise AssertionError(f"{name}: {message} (max error {error:.3e} > {atol:.1e})")


def check_logdet(
    module: InvertibleModule, x: Tensor, cond: Tensor | None = None, atol: float = 1e-8
) -> None:
    """Assert that the log determinant equals ``slogdet`` of the autograd Jacobian, per sample.

    Builds the full Jacobian, so use small inputs (a few hundred entries per sample).
    Checks the inverse pass too, at ``y = forward(x)``.
    """
    name = type(module).__name__
    with torch.no_grad():
        y, logdet = module(x, cond)
        _, logdet_inverse = module.inverse(y, cond)
    for pass_name, fn, point, claimed in (
        ("forward", module.forward, x, logdet),
        ("inverse", module.inverse, y, logdet_inverse),
    ):
        for b in range(point.shape[0]):
            sample = point[b : b + 1]
            sample_cond = None if cond is None else cond[b : b + 1]

            def single(z: Tensor, fn=fn, shape=sample.shape, sample_cond=sample_cond) -> Tensor:
                out, _ = fn(z.view(shape), sample_cond)
                return out.reshape(-1)

            jacobian = torch.autograd.functional.jacobian(single, sample.reshape(-1))
            sign, expected = torch.linalg.slogdet(jacobian)
            error = abs(float(expected - claimed[b]))
            if sign == 0 or not error <= atol * max(1.0, abs(float(expected))):
                raise AssertionError(
                    f"{name}: {pass_name} logdet of sample {b} is {float(claimed[b]):.10g}, "
                    f"slogdet of the Jacobian gives {float(expected):.10g} (sign {float(sign)})"
                )


def _loss_weights(like: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


def check_reconstruction_gradients(
    module: InvertibleModule,
    x: Tensor,
    cond: Tensor | None = None,
    rtol: float = 1e-10,
    seed: int = 0,
) -> None:
    """Assert that reconstructing backward equals plain autograd, for both passes.

    Wraps ``module`` in a one-layer :class:`~hybridflow.Chain` in ``"invert"`` and ``"store"``
    mode and compares the gradients of a random loss of the output and the log determinant
    with respect to the input, the condition and every parameter. Use float64.
    """
    name = type(module).__name__
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y, _ = module(x, cond)
    for inverse, point, result in ((False, x, y), (True, y, x)):
        weight_out = _loss_weights(result, generator)
        weight_logdet = _loss_weights(point.new_empty(point.shape[0]), generator)
        grads = {}
        for mode in ("store", "invert"):
            chain = Chain(module, mode=mode)
            inp = point.detach().requires_grad_(True)
            cnd = None if cond is None else cond.detach().requires_grad_(True)
            out, logdet = chain.inverse(inp, cnd) if inverse else chain(inp, cnd)
            loss = (out * weight_out).sum() + (logdet * weight_logdet).sum()
            targets = [inp, *([cnd] if cnd is not None else []), *module.parameters()]
            targets = [t for t in targets if t.requires_grad]
            grads[mode] = torch.autograd.grad(loss, targets, allow_unused=True)
        labels = [
            "input",
            *(["cond"] if cond is not None else []),
            *(n for n, p in module.named_parameters() if p.requires_grad),
        ]
        for label, g_store, g_invert in zip(labels, grads["store"], grads["invert"], strict=True):
            if g_store is None and g_invert is None:
                continue
            g_store = torch.zeros_like(g_invert) if g_store is None else g_store
            g_invert = torch.zeros_like(g_store) if g_invert is None else g_invert
            scale = max(float(g_store.norm()), 1e-30)
            error = float((g_store - g_invert).norm()) / scale
            if not error <= rtol:
                direction = "inverse" if inverse else "forward"
                raise AssertionError(
                    f"{name}: {direction} pass, gradient of {label} differs between invert and "
                    f"store mode (relative error {error:.3e} > {rtol:.1e})"
                )


@dataclass(frozen=True)
class TaylorResult:
    r"""Errors of a Taylor (gradient) test at step sizes ``h``.

    ``first[i]`` is :math:`|f(x + h_i v) - f(x)|`, which falls as :math:`O(h)`;
    ``second[i]`` is :math:`|f(x + h_i v) - f(x) - h_i \langle \nabla f(x), v \rangle|`,
    which falls as :math:`O(h^2)` when the gradient is right. ``first_order`` and
    ``second_order`` are the median observed rates :math:`\log_2` of successive ratios.
    """

    steps: tuple[float, ...]
    first: tuple[float, ...]
    second: tuple[float, ...]
    first_order: float
    second_order: float


def _median_rate(errors: list[float]) -> float:
    rates = [math.log2(a / b) for a, b in itertools.pairwise(errors) if a > 0 and b > 0]
    return statistics.median(rates) if rates else float("nan")


def taylor_test(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    direction: Tensor | None = None,
    h0: float = 1e-2,
    steps: int = 6,
    seed: int = 0,
) -> TaylorResult:
    """Taylor test of a scalar function ``fn`` at ``x`` along ``direction``, with step sizes
    ``h0 / 2**k``. The gradient comes from ``fn``'s own backward (reconstructing rules,
    hand-written VJPs), so the test checks those against the function's values.
    """
    if direction is None:
        generator = torch.Generator().manual_seed(seed)
        direction = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    point = x.detach().requires_grad_(True)
    value = fn(point)
    if value.numel() != 1:
        raise ValueError(f"taylor_test: fn must return a scalar, got shape {tuple(value.shape)}")
    (gradient,) = torch.autograd.grad(value, point)
    slope = float((gradient * direction).sum())
    f0 = float(value.detach())
    hs, first, second = [], [], []
    with torch.no_grad():
        for k in range(steps):
            h = h0 / 2**k
            fh = float(fn(x.detach() + h * direction))
            hs.append(h)
            first.append(abs(fh - f0))
            second.append(abs(fh - f0 - h * slope))
    return TaylorResult(
        tuple(hs), tuple(first), tuple(second), _median_rate(first), _median_rate(second)
    )


def check_taylor(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    direction: Tensor | None = None,
    *,
    tolerance: float = 0.3,
    **options: float,
) -> TaylorResult:
    """Assert that :func:`taylor_test` of ``fn`` at ``x`` (its ``options``: ``h0``, ``steps``,
    ``seed``) shows first-order error falling at least as O(h) and second-order error as
    O(h^2) (observed rates at least ``1 - tolerance`` and ``2 - tolerance``; a wrong gradient
    leaves the second-order error at O(h))."""
    result = taylor_test(fn, x, direction, **options)
    if result.first_order < 1 - tolerance or result.second_order < 2 - tolerance:
        raise AssertionError(
            f"Taylor test failed: first-order rate {result.first_order:.2f} (expected 1), "
            f"second-order rate {result.second_order:.2f} (expected 2); errors "
            f"{result.second}"
        )
    return result


def check_invertible_module(
    module: InvertibleModule,
    x: Tensor,
    cond: Tensor | None = None,
    *,
    logdet: bool = True,
    rtol: float = 1e-10,
    h0: float = 1e-2,
) -> None:
    """Run every checker on ``module`` at ``x`` (float64, small sizes): inverse round trips,
    log determinant against ``slogdet`` (unless ``logdet=False``), reconstructing gradients
    against plain autograd, and Taylor tests of a random loss in the input (and condition)
    through both the store and the invert chain, with largest step ``h0`` (lower it for
    strongly curved blocks, or blocks with kinks such as ReLU conditioners, where a step
    crossing a kink spoils the observed rates)."""
    check_inverse(module, x, cond)
    if logdet:
        check_logdet(module, x, cond)
    check_reconstruction_gradients(module, x, cond, rtol=rtol)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        y, _ = module(x, cond)
    weight = _loss_weights(y, generator)
    for mode in ("store", "invert"):
        chain = Chain(module, mode=mode)

        def loss(z: Tensor, chain: Chain = chain) -> Tensor:
            out, ld = chain(z, cond)
            return (out * weight).sum() + ld.sum() + 0.5 * (out**2).sum()

        check_taylor(loss, x, h0=h0)
        if cond is not None:

            def loss_cond(c: Tensor, chain: Chain = chain) -> Tensor:
                out, ld = chain(x, c)
                return (out * weight).sum() + ld.sum() + 0.5 * (out**2).sum()

            check_taylor(loss_cond, cond, h0=h0)
