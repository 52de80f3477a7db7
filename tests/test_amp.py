"""Mixed precision: autocast in invert mode is replayed and as accurate as store mode's."""

from __future__ import annotations

import torch
from helpers import flow_loss, glow_chain

from hybridflow.layers import InvConv1x1


def _grads(mode, autocast, dtype=torch.float32, depth=8):
    chain = glow_chain(3, depth, mode, hidden=16, squeeze=True, perturb=0.02).to(dtype)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 16, 16, generator=generator).to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, logdet = chain(x)
        loss = flow_loss(y, logdet)
    assert y.dtype == dtype and logdet.dtype == dtype  # the flow itself stays in its precision
    return torch.autograd.grad(loss, [x, *chain.parameters()])


def _worst(grads, reference):
    return max(
        float((g.double() - r).norm() / r.norm()) for g, r in zip(grads, reference, strict=True)
    )


def test_bfloat16_autocast_invert_mode_is_as_accurate_as_store_mode():
    reference = _grads("store", autocast=False, dtype=torch.float64)
    errors = {mode: _worst(_grads(mode, autocast=True), reference) for mode in ("store", "invert")}
    # bfloat16 conditioners cost about 1e-1 relative gradient error whatever the mode (8 bits
    # of mantissa); reconstruction adds little to it
    assert errors["store"] < 0.2, errors
    assert errors["invert"] < 1.2 * errors["store"], errors


def test_inverse_round_trip_under_autocast():
    chain = glow_chain(3, 8, "invert", hidden=16, squeeze=True, perturb=0.02)
    x = torch.randn(4, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        y, _ = chain(x)
        x_back, _ = chain.inverse(y)
    assert (x_back - x).abs().max() < 1e-2


def test_invconv_mixes_in_float32_under_autocast():
    layer = InvConv1x1(6, seed=0)
    x = torch.randn(2, 6, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = layer(x)
        x_back, _ = layer.inverse(y)
    assert y.dtype == torch.float32
    assert (x_back - x).abs().max() < 1e-5
