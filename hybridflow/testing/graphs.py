"""A reference hybrid graph, and the bytes a graph module keeps for backward, measured.

hybridflow's graph tests, its distributed graph test and the graph memory benchmark run the
same kind of graph: a summary network (autograd) conditioning a multiscale Glow (invertible),
optionally between an ActNorm and a coupling, whose latent a blur (linear operator) maps to
the data space of a loss (autograd). :func:`hybrid_graph` builds it; :func:`kept_bytes`
measures what a planned module keeps for backward, to hold the planner's estimates against.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from hybridflow.graph import Graph
from hybridflow.layers import ActNorm, AffineCoupling
from hybridflow.networks import Glow
from hybridflow.operators import Convolution

__all__ = ["hybrid_graph", "kept_bytes"]


def hybrid_graph(
    dtype: torch.dtype = torch.float64,
    batch: int = 4,
    side: int = 8,
    hidden: int = 8,
    depth: int = 2,
    seed: int = 0,
    *,
    summary: nn.Module | None = None,
    ends: bool = True,
    channels: int = 2,
    levels: int = 2,
    cond: int = 2,
    per_sample_loss: bool = False,
    perturb: bool = True,
) -> tuple[Graph, dict[str, Tensor]]:
    """The reference graph and a random sample batch for it (inputs ``obs``, ``x``, ``data``).

    The summary network turns ``obs`` ``(B, 1, side, side)`` (``x`` and ``data`` are
    ``(B, channels, side, side)``) into a condition field of
    ``cond`` channels for the invertible nodes: ``pre`` (ActNorm), ``glow`` (Glow of
    ``levels`` scales, ``depth`` steps each) and ``post`` (affine coupling), the last two
    conditioned. ``blur`` (a 3x3 convolution) maps the latent to the space of ``data``. The
    output ``loss`` is a data misfit plus the flow's negative log-likelihood, averaged over
    samples; ``z`` is the latent.

    Args:
        dtype: of the parameters and the sample.
        batch: the sample's batch size.
        side: the images' side (divisible by ``2**levels``).
        hidden: hidden channels of the conditioners.
        depth: Glow steps per scale.
        seed: seeds the parameters and the sample.
        summary: the summary network (``(B, 1, side, side) -> (B, cond, side, side)``);
            default two convolutions with a GELU between.
        ends: include ``pre`` and ``post``; without them ``glow`` reads ``x`` and is the
            latent.
        channels: channels of ``x`` and ``data``.
        levels: Glow scales.
        cond: channels of the condition field.
        per_sample_loss: leave out the loss's ``sum(sin(z))`` term, so that the loss is a
            mean over samples (shards of a batch on several ranks then average to it); the
            term, on by default, makes the loss's gradient depend on ``z`` non-linearly.
        perturb: move every parameter away from its identity initialisation (and mark
            ActNorms initialised), so that nothing hides a mistake.
    """
    torch.manual_seed(seed)
    if summary is None:
        summary = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, cond, 3, padding=1)
        )
    pre = ActNorm(channels) if ends else None
    glow = Glow(channels, levels=levels, depth=depth, hidden=hidden, cond_features=cond, seed=seed)
    post = (
        AffineCoupling(channels, hidden=hidden, cond_features=cond, spatial_dims=2)
        if ends
        else None
    )
    kernel = torch.tensor([[0.0, 0.1, 0.0], [0.1, 0.6, 0.1], [0.0, 0.1, 0.0]])
    blur = Convolution(kernel, in_shape=(channels, side, side))
    modules = nn.ModuleList([m for m in (summary, pre, glow, post) if m is not None]).to(dtype)
    if perturb:
        with torch.no_grad():
            for p in modules.parameters():
                p.add_(0.1 * torch.randn_like(p))
        for m in modules.modules():
            if isinstance(m, ActNorm):
                m.mark_initialized()

    def loss(z: Tensor, logdet: Tensor, blurred: Tensor, data: Tensor) -> Tensor:
        misfit = 0.5 * (blurred - data).pow(2).flatten(1).sum(1)
        nll = (misfit + 0.5 * z.pow(2).flatten(1).sum(1) - logdet).mean()
        return nll if per_sample_loss else nll + torch.sin(z).sum()

    graph = Graph().input("obs").input("x").input("data").autograd("summary", summary, "obs")
    if ends:
        graph = (
            graph.invertible("pre", pre, "x")
            .invertible("glow", glow, "pre", cond="summary")
            .invertible("post", post, "glow", cond="summary")
        )
    else:
        graph = graph.invertible("glow", glow, "x", cond="summary")
    latent = "post" if ends else "glow"
    graph = (
        graph.operator("blur", blur, latent)
        .autograd("loss", loss, [latent, f"{latent}.logdet", "blur", "data"])
        .output("loss")
        .output(latent, "z")
    )
    sample = {
        "obs": torch.randn(batch, 1, side, side, dtype=dtype),
        "x": torch.randn(batch, channels, side, side, dtype=dtype),
        "data": torch.randn(batch, channels, side, side, dtype=dtype),
    }
    return graph, sample


def kept_bytes(module: nn.Module, inputs: Mapping[str, Tensor], warm_up: bool = True) -> int:
    """Bytes of the distinct storages autograd keeps for backward during one forward pass of
    a graph ``module`` (its parameters and buffers left out), counted with saved-tensor hooks;
    then the backward of its ``loss`` output.

    A chain's first differentiable call is checked by the drift guard, which keeps a few
    numbers per sample and layer more: with ``warm_up`` an unchecked call is counted (a
    forward pass runs first, its graph dropped).
    """
    parameters = [*module.parameters(), *module.buffers()]
    excluded = {t.untyped_storage().data_ptr() for t in parameters}
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        # a detached alias: returning the tensor itself would tie a saved output to its own
        # grad_fn (a reference cycle that outlives the graph when no backward runs)
        return tensor.detach()

    if warm_up:
        module(**inputs)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = module(**inputs)["loss"]
    loss.backward()
    return sum(storages.values())
