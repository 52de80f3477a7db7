"""Activation normalisation: a per-channel affine map initialised from the first batch."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from hybridflow.arguments import number, positive_int
from hybridflow.autograd.checks import check_input
from hybridflow.errors import InputError
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

    A first batch that cannot give statistics is refused before anything changes
    (:class:`~hybridflow.errors.InputError`): an empty batch, or one with NaN/Inf values.
    Where the statistics are degenerate, the initialisation falls back and warns
    (``UserWarning``): with fewer than two values per channel (one vector, say) the scale is
    left at 1 and only the mean is removed; a channel whose standard deviation is below
    ``eps`` (a constant channel) keeps scale 1 instead of ``1 / eps``.

    Args:
        num_features: the number of channels ``C``.
        eps: smallest standard deviation that is normalised (see above).

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018.
    """

    draws_random_numbers = False

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
        if x.shape[0] == 0:
            raise InputError(
                "ActNorm: cannot initialise from an empty batch (shape "
                f"{tuple(x.shape)}); the first batch sets the scale and bias",
            )
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
        if not bool(torch.isfinite(stats).all()):
            raise InputError(
                "ActNorm: the first batch has NaN/Inf values; the data-dependent "
                "initialisation would make the layer's parameters NaN. Clean the batch (or "
                "set the parameters and call mark_initialized())"
            )
        channels = self.num_features
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean**2).clamp_min(0)
        std = var.sqrt()
        if float(total) < 2:
            warnings.warn(
                f"ActNorm: the first batch has {float(total):.0f} value per channel, too few "
                "for a standard deviation; the scale is initialised to 1 (only the mean is "
                "removed). Initialise on a larger batch for a normalised start",
                UserWarning,
                stacklevel=4,
            )
            std = torch.ones_like(std)
        elif bool((std < self.eps).any()):
            flat = int((std < self.eps).sum())
            warnings.warn(
                f"ActNorm: {flat} of {channels} channels are constant over the first batch "
                f"(standard deviation below eps={self.eps:g}); they keep scale 1",
                UserWarning,
                stacklevel=4,
            )
            std = torch.where(std < self.eps, torch.ones_like(std), std)
        mean, std = mean.to(x.dtype), std.to(x.dtype)
        log_scale = -torch.log(std)
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
