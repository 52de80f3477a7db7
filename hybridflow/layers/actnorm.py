"""Activation normalisation: a per-channel affine map initialised from the first batch."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hybridflow.autograd.checks import check_finite, check_input
from hybridflow.autograd.module import InvertibleModule, Reconstruction
from hybridflow.layers.shapes import channel_view, reduce_except_channels

__all__ = ["ActNorm"]


class ActNorm(InvertibleModule):
    r"""Per-channel affine map :math:`y = x \odot e^{s} + b` (Glow's activation normalisation).

    Works on vectors ``(B, C)``, sequences ``(B, C, L)``, images ``(B, C, H, W)`` and volumes
    ``(B, C, D, H, W)``. The log determinant is :math:`N \sum_c s_c` with :math:`N` the number
    of spatial positions.

    On the first forward call, ``s`` and ``b`` are set so that the output has zero mean and
    unit variance per channel over that batch (data-dependent initialisation). The flag is the
    buffer ``initialized``, saved in ``state_dict``; reconstruction never re-initialises.

    Args:
        num_features: the number of channels ``C``.
        eps: floor of the standard deviation used by the initialisation.

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018.
    """

    def __init__(self, num_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"ActNorm: num_features must be positive, got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))
        # Python mirror of the buffer: reading a tensor flag on every forward would break
        # torch.compile graphs and, on a GPU, synchronise. It is synced on load_state_dict.
        self._initialized = False
        self.register_load_state_dict_post_hook(_sync_initialized_flag)

    @property
    def is_initialized(self) -> bool:
        return self._initialized

    def mark_initialized(self, initialized: bool = True) -> None:
        """Set the initialisation flag by hand (``True`` skips the data-dependent init)."""
        self.initialized.fill_(initialized)
        self._initialized = initialized

    def extra_repr(self) -> str:
        return f"{self.num_features}"

    def _logdet(self, x: Tensor, sign: float) -> Tensor:
        positions = math.prod(x.shape[2:])
        return (sign * positions * self.log_scale.sum()).expand(x.shape[0])

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        """Set ``s, b`` from the batch's per-channel mean and standard deviation. Under
        ``torch.distributed`` the statistics are those of all ranks' batches together, so
        every rank starts from the same parameters (as DDP requires)."""
        x64 = x.detach().double()
        count = torch.tensor([x64.numel() / x64.shape[1]], dtype=torch.float64, device=x.device)
        stats = torch.cat(
            [
                reduce_except_channels(x64, torch.sum),
                reduce_except_channels(x64**2, torch.sum),
                count,
            ]
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        channels = self.num_features
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean**2).clamp_min(0)
        mean, var = mean.to(x.dtype), var.to(x.dtype)
        log_scale = -torch.log(var.sqrt().clamp_min(self.eps))
        self.log_scale.copy_(log_scale)
        self.bias.copy_(-mean * log_scale.exp())
        self.mark_initialized(True)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, "ActNorm", self.num_features, None)
        if not self.is_initialized:
            self._initialize(x)
        y = x * channel_view(self.log_scale.exp(), x) + channel_view(self.bias, x)
        return y, self._logdet(x, 1.0)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(y, "ActNorm.inverse", self.num_features, None)
        check_finite(y, "ActNorm.inverse")
        x = (y - channel_view(self.bias, y)) * channel_view((-self.log_scale).exp(), y)
        return x, self._logdet(y, -1.0)

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        r"""Hand-written rule. Forward pass (:math:`y = x e^s + b`):
        :math:`\bar x = \bar y e^s`, :math:`\bar b = \sum \bar y`,
        :math:`\bar s = \sum \bar y (y - b) + N \sum_B \overline{\log\det}`.
        Inverse pass (:math:`x = (y - b) e^{-s}`): :math:`\bar y = \bar x e^{-s}`,
        :math:`\bar b = -\sum \bar y`, :math:`\bar s = -\sum \bar x x - N \sum_B \overline{\log\det}`.
        """
        scale = channel_view(self.log_scale.exp(), output)
        bias = channel_view(self.bias, output)
        positions = math.prod(output.shape[2:])
        if not inverse:
            centered = output - bias
            rebuilt = centered / scale
            grad_input = grad_output * scale
            grad_bias = reduce_except_channels(grad_output, torch.sum)
            grad_log_scale = reduce_except_channels(grad_output * centered, torch.sum)
            grad_log_scale = grad_log_scale + positions * grad_logdet.sum()
        else:
            rebuilt = output * scale + bias
            grad_input = grad_output / scale
            grad_bias = -reduce_except_channels(grad_input, torch.sum)
            grad_log_scale = -reduce_except_channels(grad_output * output, torch.sum)
            grad_log_scale = grad_log_scale - positions * grad_logdet.sum()
        grads = (
            grad_log_scale if self.log_scale.requires_grad else None,
            grad_bias if self.bias.requires_grad else None,
        )
        return Reconstruction(rebuilt, grad_input, None, grads)


def _sync_initialized_flag(module: nn.Module, incompatible_keys: object) -> None:
    module._initialized = bool(module.initialized)
