"""``Chain``: invertible modules composed, run with stored or reconstructed activations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from hybridflow.autograd.aliases import parameter_aliases
from hybridflow.autograd.checks import check_finite, inside_chain, is_inside_chain
from hybridflow.autograd.function import ReconstructingFunction
from hybridflow.autograd.microbatch import check_acts_per_sample, reconstruct_in_slices
from hybridflow.autograd.module import InvertibleModule, Reconstruction
from hybridflow.autograd.replay import ReplayState, is_replaying
from hybridflow.autograd.tiling import TileSize, check_tile_size, check_tileable, tiled

__all__ = ["Chain", "Mode"]

Mode = Literal["store", "invert"]


class Chain(InvertibleModule):
    r"""Invertible modules applied one after another: :math:`f = f_n \circ \dots \circ f_1`.

    The log determinant is the sum of the layers'. Every layer receives the same condition.

    Args:
        *modules: the layers, each an :class:`InvertibleModule` (chains nest).
        mode: ``"invert"`` (default) keeps only the chain's output, its condition and the
            optional anchors for backward and rebuilds each layer's input by inversion while
            back-propagating: memory for backward does not grow with depth. ``"store"`` is plain
            autograd: every layer's activations are kept, as in ``nn.Sequential``. A chain nested
            in an ``"invert"`` chain is reconstructed with it, whatever its own mode. Under
            ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``, ``jacfwd``), which cannot
            pass through the reconstructing Function, an ``"invert"`` chain runs as ``"store"``.
        anchor_every: in ``"invert"`` mode, also keep the activation after every ``m``-th layer,
            and restart the reconstruction from it. This bounds the float32 drift that inversion
            accumulates over depth, at the memory of ``len(self) // m`` activations.
        micro_batches: in ``"invert"`` mode, run each layer's reconstruction on this many
            slices of the batch, one after another. Invertible layers act on each sample alone,
            so the gradients are the same, and the working set of one layer's backward (its
            conditioner's activations) shrinks by this factor: it is what dominates peak
            memory once activations are no longer stored. Refused, with an error naming the
            module, for chains holding BatchNorm or Dropout in training mode.
        preserve_rng_state: in ``"invert"`` mode, give each layer a reproducible random stream
            (seeded once per call), so that random layers (dropout in a conditioner) draw the
            same numbers when re-run during backward. Costs one integer per call; disable only
            for deterministic layers. ``"store"`` mode draws exactly as ``nn.Sequential``.
        tile_size: run the layers that can (couplings with convolutional conditioners) tile
            by tile over the spatial dimensions, cores of this edge (one int, or one per
            dimension) plus a halo of the conditioner's receptive field, whenever they run
            without grad (the forward of ``"invert"`` mode, sampling) and while
            reconstructing: the results are the same, and the working set scales with the
            tile, not the image (:mod:`hybridflow.autograd.tiling`). ``None`` (default)
            keeps an enclosing chain's setting. Refused, naming the part, for conditioners
            whose receptive field is unbounded or that couple positions (GroupNorm).

    Example:
        >>> import torch, hybridflow as hf
        >>> chain = hf.Chain(hf.layers.ActNorm(4), hf.layers.InvConv1x1(4), mode="invert")
        >>> x = torch.randn(8, 4)
        >>> y, logdet = chain(x)
        >>> torch.allclose(chain.inverse(y)[0], x, atol=1e-5)
        True
    """

    def __init__(
        self,
        *modules: InvertibleModule,
        mode: Mode = "invert",
        anchor_every: int | None = None,
        micro_batches: int = 1,
        preserve_rng_state: bool = True,
        tile_size: TileSize | None = None,
    ) -> None:
        super().__init__()
        for i, module in enumerate(modules):
            if not isinstance(module, InvertibleModule):
                raise TypeError(
                    f"Chain: item {i} is a {type(module).__name__}, not an InvertibleModule; "
                    "non-invertible modules belong outside the chain (or in a coupling's "
                    "conditioner)"
                )
        if mode not in get_args(Mode):
            raise ValueError(f"Chain: mode must be one of {get_args(Mode)}, got {mode!r}")
        if anchor_every is not None and (not isinstance(anchor_every, int) or anchor_every < 1):
            raise ValueError(f"Chain: anchor_every must be a positive int, got {anchor_every!r}")
        if not isinstance(micro_batches, int) or micro_batches < 1:
            raise ValueError(f"Chain: micro_batches must be a positive int, got {micro_batches!r}")
        self.layers = nn.ModuleList(modules)
        self.mode: Mode = mode
        self.anchor_every = anchor_every
        self.micro_batches = micro_batches
        self.preserve_rng_state = preserve_rng_state
        self.tile_size = check_tile_size(tile_size, "Chain")
        if self.tile_size is not None:
            check_tileable(self, "Chain")

    def config_arguments(self) -> dict[str, object]:
        return {
            "modules": list(self.layers),
            "mode": self.mode,
            "anchor_every": self.anchor_every,
            "micro_batches": self.micro_batches,
            "preserve_rng_state": self.preserve_rng_state,
            "tile_size": self.tile_size,
        }

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> InvertibleModule:
        return self.layers[index]  # type: ignore[return-value]

    def __iter__(self) -> Iterator[InvertibleModule]:
        return iter(self.layers)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        anchors = f", anchor_every={self.anchor_every}" if self.anchor_every else ""
        slices = f", micro_batches={self.micro_batches}" if self.micro_batches > 1 else ""
        tiles = f", tile_size={self.tile_size}" if self.tile_size is not None else ""
        return f"mode={self.mode!r}{anchors}{slices}{tiles}"

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with _rollback_data_init_on_error(self):
            return self._pass(x, cond, inverse=False)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_finite(y, "Chain.inverse")
        return self._pass(y, cond, inverse=True)

    @property
    def takes_condition(self) -> bool:
        return any(layer.takes_condition for layer in self)

    def _pass(self, h: Tensor, cond: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        if not isinstance(h, Tensor):
            raise TypeError(f"Chain: expected a torch.Tensor input, got {type(h).__name__}")
        if cond is not None and not self.takes_condition and not is_inside_chain():
            raise ValueError(
                "Chain: got a condition but none of its layers takes one (build couplings "
                "with cond_features > 0)"
            )
        params = tuple(self.parameters())
        differentiable = torch.is_grad_enabled() and (
            h.requires_grad
            or (cond is not None and cond.requires_grad)
            or any(p.requires_grad for p in params)
        )
        # An invert-mode chain seeds its layers whether or not it records a graph, so its
        # random numbers do not depend on the grad mode; so does a chain nested in a
        # reconstructing pass (Chain.reconstruct_vjp re-runs it that way). A store-mode chain
        # draws exactly as nn.Sequential does.
        seeded = self._seeds_layers()
        if self.mode == "invert" and differentiable and len(self.layers) > 0:
            if self.micro_batches > 1:
                check_acts_per_sample(self, "Chain")
            try:
                return ReconstructingFunction.apply(self, inverse, h, cond, *params)
            except RuntimeError as error:
                # torch.func transforms (vmap, grad, jacrev, jacfwd) refuse this Function
                # before running anything; the chain then runs as plain autograd (store mode),
                # without seeding (random draws under vmap must come from the transform).
                if "functorch" not in str(error):
                    raise
                seeded = is_replaying()
        replay = ReplayState.capture(h.device, seeded)
        return self._run_layers(h, cond, inverse=inverse, replay=replay)

    def _seeds_layers(self) -> bool:
        return self.preserve_rng_state and (self.mode == "invert" or is_replaying())

    def _steps(self, inverse: bool) -> list[tuple[int, InvertibleModule]]:
        """Layers in the order the pass applies them."""
        steps = list(enumerate(self.layers))
        return steps[::-1] if inverse else steps  # type: ignore[return-value]

    def _run_layers(
        self,
        h: Tensor,
        cond: Tensor | None,
        *,
        inverse: bool,
        replay: ReplayState,
        anchors: dict[int, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Apply every layer (forward or inverse), summing log determinants.

        With ``anchors`` given and ``anchor_every`` set, the activation after every
        ``anchor_every``-th step (but the last) is stored in it, keyed by step count.
        """
        logdet = h.new_zeros(h.shape[0])
        steps = self._steps(inverse)
        with inside_chain(), replay.layers(), tiled(self.tile_size):
            for count, (index, layer) in enumerate(steps, start=1):
                with replay.layer(index), _named_errors(self, index, layer):
                    h, layer_logdet = layer.inverse(h, cond) if inverse else layer(h, cond)
                logdet = logdet + layer_logdet
                if anchors is not None and self._is_anchor(count, len(steps)):
                    anchors[count] = h
        return h, logdet

    def _is_anchor(self, count: int, total: int) -> bool:
        return self.anchor_every is not None and count < total and count % self.anchor_every == 0

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        """Reconstruct through every layer (used when this chain is nested in another)."""
        replay = ReplayState.capture(output.device, self._seeds_layers())
        return self._reconstruct_layers(
            output, grad_output, grad_logdet, cond, inverse=inverse, replay=replay, anchors={}
        )

    def _reconstruct_layers(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None,
        *,
        inverse: bool,
        replay: ReplayState,
        anchors: dict[int, Tensor],
    ) -> Reconstruction:
        """Walk the pass backwards: each layer rebuilds its input and back-propagates.

        Parameter gradients are gathered per parameter of this chain (shared parameters
        accumulate); condition gradients are summed over layers.
        """
        params = tuple(self.parameters())
        position = {id(p): k for k, p in enumerate(params)}
        grad_params: list[Tensor | None] = [None] * len(params)
        grad_cond: Tensor | None = None
        h, grad_h = output, grad_output
        steps = self._steps(inverse)
        with inside_chain(), replay.layers(), tiled(self.tile_size):
            for count in range(len(steps), 0, -1):
                index, layer = steps[count - 1]
                h = anchors.get(count, h)
                layer_params = tuple(layer.parameters())
                with (
                    replay.layer(index),
                    _named_errors(self, index, layer),
                    parameter_aliases(layer),
                ):
                    if self.micro_batches > 1:
                        result = reconstruct_in_slices(
                            layer,
                            h,
                            grad_h,
                            grad_logdet,
                            cond,
                            inverse=inverse,
                            slices=self.micro_batches,
                        )
                    else:
                        result = layer.reconstruct_vjp(
                            h, grad_h, grad_logdet, cond, inverse=inverse
                        )
                h, grad_h = result.input, result.grad_input
                if result.grad_cond is not None:
                    grad_cond = (
                        result.grad_cond if grad_cond is None else grad_cond + result.grad_cond
                    )
                for param, grad in zip(layer_params, result.grad_params, strict=True):
                    if grad is not None:
                        k = position[id(param)]
                        grad_params[k] = grad if grad_params[k] is None else grad_params[k] + grad
        return Reconstruction(h, grad_h, grad_cond, tuple(grad_params))


@contextmanager
def _named_errors(chain: Chain, index: int, layer: nn.Module) -> Iterator[None]:
    """Prefix input errors raised by a layer with its position in the chain."""
    try:
        yield
    except (ValueError, TypeError) as error:
        if type(error) not in (ValueError, TypeError):
            raise
        raise type(error)(f"Chain layer {index} ({type(layer).__name__}): {error}") from error


@contextmanager
def _rollback_data_init_on_error(chain: Chain) -> Iterator[None]:
    """Undo data-dependent initialisation (ActNorm) done by a forward pass that then failed,
    so that bad input leaves every parameter as it was."""
    pending = [
        m for m in chain.modules() if isinstance(m, InvertibleModule) and not m.is_initialized
    ]
    if not pending:
        yield
        return
    snapshots = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in pending]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for module, snapshot in zip(pending, snapshots, strict=True):
                module.load_state_dict(snapshot)
        raise
