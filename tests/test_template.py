"""The user-block template runs the public checkers, and they catch a wrong rule."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from hybridflow.testing import check_invertible_module, check_reconstruction_gradients

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_template_block_passes_every_check(float64):
    _load("invertible_block_template").main()


def test_template_block_in_a_deep_chain(float64):
    import hybridflow as hf

    template = _load("invertible_block_template")
    blocks = [template.ConditionalScaleShift(3, 2) for _ in range(5)]
    for block in blocks:
        with torch.no_grad():
            for p in block.parameters():
                p.add_(0.3 * torch.randn_like(p))
    chain = hf.Chain(*blocks, hf.layers.InvConv1x1(3))
    check_invertible_module(chain, torch.randn(4, 3), torch.randn(4, 2))


def test_checkers_catch_a_wrong_hand_written_rule(float64):
    template = _load("invertible_block_template")

    class Broken(template.ConditionalScaleShift):
        def reconstruct_vjp(self, output, grad_output, grad_logdet, cond=None, *, inverse=False):
            result = super().reconstruct_vjp(
                output, grad_output, grad_logdet, cond, inverse=inverse
            )
            return result._replace(grad_input=1.01 * result.grad_input)

    block = Broken(3, 2)
    with pytest.raises(AssertionError, match="gradient of input differs"):
        check_reconstruction_gradients(block, torch.randn(4, 3), torch.randn(4, 2))
