"""Template: write your own invertible block, then check it with ``hybridflow.testing``.

Copy this file, rename the class, change the math. Keep the contract of
``hybridflow.InvertibleModule``: ``forward`` and ``inverse`` return ``(output, logdet)`` with
``logdet`` of shape ``(B,)``, the inverse's logdet is minus the forward's, inputs are never
modified, and bad input raises ``ValueError``/``TypeError`` naming the block.

``reconstruct_vjp`` is optional: without it the block gets the generic rule (invert, re-run
with grad, take the VJP), which is exact but costs one extra forward. Write it when inversion
and the VJP can share work. Run ``python examples/invertible_block_template.py`` to check.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import hybridflow as hf
from hybridflow.autograd.checks import check_condition, check_finite, check_input
from hybridflow.testing import check_invertible_module


class ConditionalScaleShift(hf.InvertibleModule):
    r"""Per-feature affine map driven by a condition vector: :math:`y = x e^{s(c)} + t(c)`,
    :math:`(s, t) = \mathrm{Linear}(c)`, :math:`\log\det = \sum_i s_i(c)`.

    Args:
        num_features: size ``D`` of the input ``(B, D)``.
        cond_features: size of the condition ``(B, cond_features)``.
    """

    draws_random_numbers = False  # deterministic: an invert chain need not re-seed it

    def __init__(self, num_features: int, cond_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.cond_features = cond_features
        self.net = nn.Linear(cond_features, 2 * num_features)

    @property
    def takes_condition(self) -> bool:
        return True

    def _scale_shift(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        log_scale, shift = self.net(cond).chunk(2, dim=1)
        return torch.tanh(log_scale), shift  # bounded log-scale keeps the inverse stable

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, "ConditionalScaleShift", self.num_features, spatial_dims=0)
        check_condition(cond, x, "ConditionalScaleShift", self.cond_features)
        s, t = self._scale_shift(cond)
        return x * s.exp() + t, s.sum(dim=1)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(y, "ConditionalScaleShift.inverse", self.num_features, spatial_dims=0)
        check_condition(cond, y, "ConditionalScaleShift.inverse", self.cond_features)
        check_finite(y, "ConditionalScaleShift.inverse")
        s, t = self._scale_shift(cond)
        return (y - t) * (-s).exp(), -s.sum(dim=1)

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> hf.Reconstruction:
        """Optional hand-written rule (forward pass only; the inverse pass uses the generic one).

        One pass through ``net`` with grad on gives ``s, t``; the elementwise part is done by
        hand; ``hf.autograd.vjp_wrt`` back-propagates ``(ds, dt)`` through ``net`` to the
        condition and the parameters.
        """
        if inverse:
            return super().reconstruct_vjp(output, grad_output, grad_logdet, cond, inverse=True)
        with torch.enable_grad():
            log_scale, shift = self._scale_shift(cond)
        with torch.no_grad():
            x = (output - shift) * (-log_scale).exp()
            grad_x = grad_output * log_scale.exp()
            grad_s = grad_output * (output - shift) + grad_logdet[:, None]
        through = hf.autograd.vjp_wrt((log_scale, shift), (grad_s, grad_output), None, cond, self)
        return hf.Reconstruction(x, grad_x, through.grad_cond, through.grad_params)


def main() -> None:
    torch.manual_seed(0)
    block = ConditionalScaleShift(num_features=3, cond_features=2).double()
    with torch.no_grad():  # move away from the identity so that the checks mean something
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(4, 3, dtype=torch.float64)
    cond = torch.randn(4, 2, dtype=torch.float64)
    check_invertible_module(block, x, cond)
    print("ConditionalScaleShift passes every hybridflow.testing check")


if __name__ == "__main__":
    main()
