"""Activation normalisation: a per-channel affine map initialised from the first batch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hybridflow.arguments import number, positive_int
from hybridflow.autograd.checks import check_input
from hybridflow.layers.elementwise import Affine
from hybridflow.layers.shapes import reduce_except_channels

__all__ = ["ActNorm"]


class ActNorm(Affine):
    r"""Per-channel affine map :math:`y = x \odot e^{s} + b` (Glow's activation normalisation):
    :class:`~hybridflow.layers.Affine` (its map, inverse and hand-written rule) with a
    data-dependent initialisation.

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
        positive_int(num_features, "num_features", "ActNorm")
        number(eps, "eps", "ActNorm", minimum=0, open_low=True)
        super().__init__(num_features)
        self.eps = eps
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
        check_input(x, "ActNorm", self.num_features, None, self)
        if not self.is_initialized:
            self._initialize(x)
        return super().forward(x, cond)


def _sync_initialized_flag(module: nn.Module, incompatible_keys: object) -> None:
    module._initialized = bool(module.initialized)
