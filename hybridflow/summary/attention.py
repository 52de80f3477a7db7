"""``SetTransformer``: an attention-based, permutation-invariant summary of a set."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hybridflow.arguments import boolean, integer, number
from hybridflow.config import Configurable
from hybridflow.errors import ArgumentError
from hybridflow.summary.mlp import mlp_layers
from hybridflow.summary.sets import as_padded_set

__all__ = ["SetTransformer"]


class _AttentionBlock(nn.Module):
    r"""Multihead attention block: :math:`H = \mathrm{LN}(Q + \mathrm{MHA}(Q, K, K))`,
    :math:`\mathrm{LN}(H + \mathrm{FF}(H))` (MAB of Lee et al.)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.feedforward = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, query: Tensor, keys: Tensor, ignore: Tensor) -> Tensor:
        attended, _ = self.attention(query, keys, keys, key_padding_mask=ignore, need_weights=False)
        h = self.norm1(query + attended)
        return self.norm2(h + self.feedforward(h))


class SetTransformer(nn.Module, Configurable):
    r"""Set Transformer summary: self-attention between the elements, then attention pooling.

    Each element is embedded linearly, passes ``blocks`` self-attention blocks (every element
    attends to every real element of its set, :class:`torch.nn.MultiheadAttention` with a key
    padding mask), and ``seeds`` learned query vectors attend to the result (pooling by
    multihead attention, PMA). The pooled vectors, with :math:`\log(1 + n)` when
    ``set_size=True``, go through a small MLP. Self-attention is permutation-equivariant and
    PMA permutation-invariant, so the summary does not depend on the order of the elements;
    unlike :class:`~hybridflow.summary.DeepSet` it can model interactions between elements.
    Cost: :math:`O(N^2)` per set and block.

    Sets of different sizes are given as for :class:`~hybridflow.summary.DeepSet`: a list of
    ``(n_b, D)`` tensors or a zero-padded ``(B, N, D)`` tensor with a boolean ``mask``
    ``(B, N)``; padded entries are never attended to, and an empty set summarises to the
    output of the MLP on zeros.

    Args:
        in_features: size ``D`` of one element.
        out_features: size of the summary.
        hidden: width of the attention blocks (a multiple of ``heads``).
        heads: attention heads.
        blocks: self-attention blocks before pooling (0 is allowed: pooling only).
        seeds: learned pooling queries.
        set_size: give :math:`\log(1 + n)` to the output MLP.
        dropout: dropout of the attention weights.

    Example:
        >>> import torch
        >>> from hybridflow.summary import SetTransformer
        >>> _ = torch.manual_seed(0)
        >>> net = SetTransformer(2, 8, hidden=16, heads=2).eval()
        >>> x = torch.randn(3, 5, 2)
        >>> torch.allclose(net(x), net(x[:, torch.randperm(5)]), atol=1e-5)
        True

    References:
        Lee et al., "Set Transformer: A Framework for Attention-based Permutation-Invariant
        Neural Networks", 2019.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 64,
        heads: int = 4,
        blocks: int = 2,
        seeds: int = 1,
        set_size: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        where = "SetTransformer"
        self.in_features = integer(in_features, "in_features", where, minimum=1)
        self.out_features = integer(out_features, "out_features", where, minimum=1)
        integer(hidden, "hidden", where, minimum=1)
        integer(heads, "heads", where, minimum=1)
        integer(blocks, "blocks", where, minimum=0)
        integer(seeds, "seeds", where, minimum=1)
        if hidden % heads:
            raise ArgumentError(
                f"hidden={hidden} must be a multiple of heads={heads}",
                argument="hidden",
                where=(where,),
            )
        number(dropout, "dropout", where, minimum=0, maximum=1, open_high=True)
        self.set_size = boolean(set_size, "set_size", where)
        self.embed = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(_AttentionBlock(hidden, heads, dropout) for _ in range(blocks))
        self.seeds = nn.Parameter(torch.randn(seeds, hidden) / hidden**0.5)
        self.pool = _AttentionBlock(hidden, heads, dropout)
        self.head = mlp_layers(seeds * hidden + int(self.set_size), out_features, hidden, 1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x: Tensor | Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
        """Summaries ``(B, out_features)`` of a set batch (see the class docstring)."""
        x, mask = as_padded_set(x, mask, self.in_features, "SetTransformer")
        count = mask.sum(dim=1, keepdim=True)
        empty = count == 0
        # Attention over no key at all is undefined: let an empty set attend to its first
        # (zero) slot and discard what it pooled.
        ignore = ~mask
        ignore[:, 0] &= ~empty[:, 0]
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, h, ignore)
        queries = self.seeds.unsqueeze(0).expand(x.shape[0], -1, -1)
        pooled = self.pool(queries, h, ignore).flatten(1)
        pooled = torch.where(empty, torch.zeros_like(pooled), pooled)
        if self.set_size:
            pooled = torch.cat([pooled, torch.log1p(count.to(pooled.dtype))], dim=1)
        return self.head(pooled)
