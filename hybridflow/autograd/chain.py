"""``Chain``: invertible modules composed, run with stored or reconstructed activations."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import get_args

import torch
from torch import Tensor, nn

from hybridflow.arguments import boolean, integer, one_of
from hybridflow.autograd.auto_mode import DEFAULT_STORE_LIMIT, AutoMode, ModeChoice
from hybridflow.autograd.checks import check_entry, inside_chain, is_inside_chain
from hybridflow.autograd.checks import named_layer_errors as _named_errors
from hybridflow.autograd.data_init import all_initialized, rollback_data_init_on_error
from hybridflow.autograd.drift import DriftGuard, DriftPolicy, DriftReport
from hybridflow.autograd.function import ReconstructingFunction, Slices, eagerly
from hybridflow.autograd.microbatch import check_acts_per_sample
from hybridflow.autograd.modes import Mode, active_mode, chains_in_mode
from hybridflow.autograd.module import InvertibleModule, Reconstruction
from hybridflow.autograd.reconstruct import reconstruct_steps
from hybridflow.autograd.record import PassRecord, at_layer
from hybridflow.autograd.replay import ReplayState, is_replaying
from hybridflow.autograd.running_stats import check_no_hidden_state
from hybridflow.autograd.tiling import TileSize, check_tile_size, check_tileable, tiled
from hybridflow.autograd.validation import data_checks, torch_func_active
from hybridflow.errors import ArgumentTypeError, InputError

__all__ = ["DEFAULT_DRIFT_EVERY", "Chain", "Mode"]

DEFAULT_DRIFT_EVERY = 16
"""Check one differentiable call in this many by default (the first always)."""


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
            :func:`~hybridflow.autograd.chains_in_mode` runs chains in another mode for a
            block of calls, without changing this attribute. ``"auto"`` stores when what
            plain autograd keeps is at most ``store_limit`` and inverts otherwise, per call
            (:mod:`hybridflow.autograd.auto_mode`; :meth:`explain` says what it chose);
            nested chains store with it.
        store_limit: that bound for ``"auto"``: bytes, or a size such as ``"512MiB"``.
        anchor_every: in ``"invert"`` mode, also keep the activation after every ``m``-th layer,
            and restart the reconstruction from it. This bounds the float32 drift that inversion
            accumulates over depth, at the memory of ``len(self) // m`` activations.
        micro_batches: in ``"invert"`` mode, run the forward pass and each layer's
            reconstruction on this many slices of the batch, one after another. Invertible
            layers act on each sample alone, so the gradients are the same, and the working
            set of one layer (its conditioner's activations) shrinks by this factor: it is
            what dominates peak memory once activations are no longer stored. The forward
            pass runs on the whole batch when the chain keeps anchors (``anchor_every``) and
            while a layer waits for its data-dependent initialisation (ActNorm). Refused,
            with an error naming the module, for chains holding BatchNorm or Dropout in
            training mode.
        preserve_rng_state: in ``"invert"`` mode, give each layer a reproducible random stream
            (seeded once per call), so that random layers (dropout in a conditioner) draw the
            same numbers when re-run during backward; costs one integer per call. A chain whose
            layers draw none (:func:`~hybridflow.autograd.draws_random_numbers`) is not seeded.
            ``"store"`` mode draws exactly as ``nn.Sequential``.
        on_drift: in ``"invert"`` mode, what the drift guard does when a rebuilt layer input
            is further from the forward pass's than ``drift_tolerance``
            (:mod:`hybridflow.autograd.drift`): ``"warn"`` (once, naming the layer),
            ``"raise"`` (:class:`~hybridflow.errors.ReconstructionError` before any gradient
            is returned) or ``"repair"`` (keep anchor activations from the next call on).
            Non-finite rebuilt values always raise. The last measurement is
            :attr:`drift_report`.
        drift_tolerance: relative error ``||h' - h|| / ||h||`` allowed per rebuilt layer
            input; ``None``: 1e-5 for float32, 1e-9 for float64, 5e-2 for half precisions.
        drift_every: check one differentiable call in this many (the first always; ``1``:
            every call; ``0``: none, NaN/Inf are still caught). A checked call keeps
            ``9`` numbers per sample and layer (the whole sample when it has at most 8) and
            costs a projection of each activation in both passes.
        name: the chain's name in messages (errors, drift warnings); default
            ``"Chain of N layers"``.
        validate: run the data-dependent entry checks (NaN/Inf in the input and condition):
            ``None`` follows :class:`hybridflow.set_validation` (on by default); pass
            ``False`` for speed, e.g. under ``torch.compile`` or ``torch.func`` transforms
            (where they are skipped anyway). Metadata checks (type, empty batch, dtype and
            device against the parameters, a missing condition) always run, once, at the
            chain's entry, and name the layer: ``Chain layer 0 (ActNorm): input is
            torch.float64 but the parameters are torch.float32; ...``.
        tile_size: run the layers that can (couplings with convolutional conditioners) tile
            by tile over the spatial dimensions, cores of this edge (one int, or one per
            dimension) plus a halo of the conditioner's receptive field, whenever they run
            without grad (the forward of ``"invert"`` mode, sampling) and while
            reconstructing: the results are the same, and the working set scales with the
            tile, not the image (:mod:`hybridflow.autograd.tiling`). ``None`` (default)
            keeps an enclosing chain's setting. Refused, naming the part, for conditioners
            whose receptive field is unbounded or that couple positions (GroupNorm).

    Raises:
        hybridflow.errors.ModifiedError: in backward, when a parameter or buffer of the
            chain, its output or its condition changed in place after the forward pass (as
            autograd refuses a modified saved tensor).

    Example:
        >>> import torch, hybridflow as hf
        >>> chain = hf.Chain(hf.layers.ActNorm(4), hf.layers.InvConv1x1(4), mode="invert")
        >>> x = torch.randn(8, 4)
        >>> y, logdet = chain(x)
        >>> torch.allclose(chain.inverse(y)[0], x, atol=1e-5)
        True
    """

    draws_random_numbers = False

    def __init__(
        self,
        *modules: InvertibleModule,
        mode: Mode = "invert",
        anchor_every: int | None = None,
        micro_batches: int = 1,
        preserve_rng_state: bool = True,
        on_drift: DriftPolicy = "warn",
        drift_tolerance: float | None = None,
        drift_every: int = DEFAULT_DRIFT_EVERY,
        name: str | None = None,
        validate: bool | None = None,
        tile_size: TileSize | None = None,
        store_limit: int | float | str = DEFAULT_STORE_LIMIT,
    ) -> None:
        super().__init__()
        for i, module in enumerate(modules):
            if not isinstance(module, InvertibleModule):
                raise ArgumentTypeError(
                    f"modules: item {i} is a {type(module).__name__}, not an InvertibleModule; "
                    "non-invertible modules belong outside the chain (or in a coupling's "
                    "conditioner)",
                    argument="modules",
                    where=("Chain",),
                )
        one_of(mode, "mode", "Chain", get_args(Mode))
        integer(anchor_every, "anchor_every", "Chain", minimum=1, optional=True)
        integer(micro_batches, "micro_batches", "Chain", minimum=1)
        boolean(preserve_rng_state, "preserve_rng_state", "Chain")
        if validate is not None:
            boolean(validate, "validate", "Chain")
        self.validate = validate
        self.layers = nn.ModuleList(modules)
        self.mode: Mode = mode
        self.anchor_every = anchor_every
        self.micro_batches = micro_batches
        self.preserve_rng_state = preserve_rng_state
        if name is not None and not isinstance(name, str):
            raise ArgumentTypeError(
                f"name must be a string or None, got {name!r}", argument="name", where=("Chain",)
            )
        self.name = name
        self._drift_guard = DriftGuard(on_drift, drift_tolerance, drift_every, "Chain")
        self.tile_size = check_tile_size(tile_size, "Chain")
        if self.tile_size is not None:
            check_tileable(self, "Chain")
        self._auto = AutoMode(store_limit, "Chain")
        self._inverting = False

    @property
    def drift_report(self) -> DriftReport | None:
        """What the drift guard measured on the last checked backward (``None`` before)."""
        return self._drift_guard.report

    def config_arguments(self) -> dict[str, object]:
        return {
            "modules": list(self.layers),
            "mode": self.mode,
            "anchor_every": self.anchor_every,
            "micro_batches": self.micro_batches,
            "preserve_rng_state": self.preserve_rng_state,
            "on_drift": self._drift_guard.on_drift,
            "drift_tolerance": self._drift_guard.tolerance,
            "drift_every": self._drift_guard.every,
            "name": self.name,
            **({} if self.validate is None else {"validate": self.validate}),
            "tile_size": self.tile_size,
            **self._auto.config_arguments(),
        }

    @property
    def mode_choice(self) -> ModeChoice | None:
        """What ``"auto"`` mode chose for its last call (``None`` before the first)."""
        return self._auto.last

    def explain(self) -> str:
        """Which mode the chain runs in, and for ``"auto"`` what it chose last and why.

        Example:
            >>> import torch, hybridflow as hf
            >>> chain = hf.Chain(hf.layers.ActNorm(2), mode="auto")
            >>> _ = chain(torch.randn(8, 2, requires_grad=True))
            >>> print(chain.explain())  # doctest: +ELLIPSIS
            Chain of 1 layers: mode 'auto' chose 'store': plain autograd would keep about ...
        """
        return self._auto.explain(f"{self.describe()}: mode {self.mode!r}", self.mode == "auto")

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> InvertibleModule:
        return self.layers[index]  # type: ignore[return-value]

    def __iter__(self) -> Iterator[InvertibleModule]:
        return iter(self.layers)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        anchors = f", anchor_every={self.anchor_every}" if self.anchor_every else ""
        slices = f", micro_batches={self.micro_batches}" if self.micro_batches > 1 else ""
        guard = self._drift_guard
        drift = "" if guard.on_drift == "warn" else f", on_drift={guard.on_drift!r}"
        tiles = f", tile_size={self.tile_size}" if self.tile_size is not None else ""
        return f"mode={self.mode!r}{anchors}{slices}{tiles}{drift}"

    @property
    def drift_guard(self) -> DriftGuard:
        """The drift guard's settings and state (what the reconstructing Function asks)."""
        return self._drift_guard

    @property
    def active_mode(self) -> Mode:
        """The mode the chain runs in now: :attr:`mode`, unless
        :func:`~hybridflow.autograd.chains_in_mode` imposes another (``"auto"`` chooses at
        each call)."""
        return active_mode(self.mode)

    def describe(self) -> str:
        """The chain's name in messages."""
        return self.name if self.name is not None else f"Chain of {len(self)} layers"

    def pass_record(self, x: Tensor) -> PassRecord | None:
        """What the reconstructing Function records in this call (:meth:`DriftGuard.pass_record`)."""
        return self._drift_guard.pass_record(x.shape[0], self.anchor_every, len(self.layers))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if is_inside_chain():  # the outermost chain undoes a failed initialisation
            return self._pass(x, cond, inverse=False)
        if torch.compiler.is_compiling() and not all_initialized(self):
            return eagerly(self.forward, x, cond)  # ActNorm's data-dependent start
        with rollback_data_init_on_error(self):
            return self._pass(x, cond, inverse=False)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._pass(y, cond, inverse=True)

    @property
    def takes_condition(self) -> bool:
        return any(layer.takes_condition for layer in self)

    def _pass(self, h: Tensor, cond: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        if not is_inside_chain():  # the outermost chain checks its entry, once
            steps = self._steps(inverse)
            check_entry(h, cond, steps, finite=data_checks(self.validate), inverse=inverse)
            if cond is not None and not self.takes_condition:
                raise InputError(
                    "got a condition but none of its layers takes one (build couplings "
                    "with cond_features > 0)",
                    where=("Chain",),
                )
        differentiable = torch.is_grad_enabled() and (
            h.requires_grad
            or (cond is not None and cond.requires_grad)
            or any(p.requires_grad for p in self.parameters())
        )
        # An invert-mode chain seeds its layers whether or not it records a graph, so its
        # random numbers do not depend on the grad mode; so does a chain nested in a
        # reconstructing pass (Chain.reconstruct_vjp re-runs it that way). A store-mode chain
        # draws exactly as nn.Sequential does. An "auto" chain chooses for every call of its
        # own (not for one nested in a pass that is not differentiable: that pass decides).
        mode = self.active_mode
        chosen = mode == "auto" and len(self.layers) > 0 and not torch_func_active()
        if chosen and (differentiable or not is_inside_chain()):
            mode = self._choose(h, cond, inverse).mode
        seeded = self.preserve_rng_state and (mode == "invert" or is_replaying())
        if mode == "invert" and differentiable and len(self.layers) > 0:
            if torch_func_active():
                # torch.func transforms (vmap, grad, jacrev, jacfwd) refuse a Function without
                # setup_context; the chain then runs as plain autograd (store mode), without
                # seeding (random draws under vmap must come from the transform).
                seeded = is_replaying()
            else:
                self._inverting = True  # what seeded_layers() says while the Function runs
                try:
                    return ReconstructingFunction.apply(
                        self, inverse, self._slices(), h, cond, *self.parameters()
                    )
                finally:
                    self._inverting = False
        replay = ReplayState.capture(h.device, self.layers if seeded else ())
        with chains_in_mode("store") if self.mode == "auto" and mode == "store" else nullcontext():
            return self.run_layers(h, cond, inverse=inverse, replay=replay)

    def _choose(self, h: Tensor, cond: Tensor | None, inverse: bool) -> ModeChoice:
        """``"auto"`` mode's choice for this call (:class:`AutoMode`)."""

        def store_run(x: Tensor, c: Tensor | None) -> object:
            with chains_in_mode("store"):
                replay = ReplayState.capture(x.device)
                return self.run_layers(x, c, inverse=inverse, replay=replay)

        return self._auto.choose(store_run, self, h, cond, inverse)

    def _slices(self) -> Slices:
        """How the reconstructing Function slices this call's batch (``micro_batches``)."""
        k = self.micro_batches
        if k == 1:
            return Slices()
        check_acts_per_sample(self, "Chain")
        whole = self.anchor_every is not None or not all_initialized(self)
        return Slices(forward=1 if whole else k, backward=k)

    def seeded_layers(self) -> Sequence[nn.Module]:
        """The layers whose random streams this pass seeds (see ``preserve_rng_state``)."""
        inverting = self.active_mode == "invert" or self._inverting
        return self.layers if self.preserve_rng_state and (inverting or is_replaying()) else ()

    def _steps(self, inverse: bool) -> list[tuple[int, InvertibleModule]]:
        """Layers in the order the pass applies them."""
        steps = list(enumerate(self.layers))
        return steps[::-1] if inverse else steps  # type: ignore[return-value]

    def run_layers(
        self,
        h: Tensor,
        cond: Tensor | None,
        *,
        inverse: bool,
        replay: ReplayState,
    ) -> tuple[Tensor, Tensor]:
        """Apply every layer (forward or inverse), summing log determinants.

        Under an active :class:`~hybridflow.autograd.drift.PassRecord` (a checked or anchored
        invert-mode pass), each layer's input is fingerprinted and, where asked, kept.
        """
        logdet = h.new_zeros(h.shape[0])
        with inside_chain(), replay.layers(), tiled(self.tile_size):
            for index, layer in self._steps(inverse):
                with at_layer(index, layer) as record:
                    if record is not None and not record.checking:
                        # a nested chain's first layer fingerprints the same tensor
                        record.record_input(h, fingerprint=not isinstance(layer, Chain))
                    watch = (
                        None
                        if record is None
                        else record.watched_buffers(layer, isinstance(layer, Chain))
                    )
                    with replay.layer(index), _named_errors(index, layer):
                        h, layer_logdet = layer.inverse(h, cond) if inverse else layer(h, cond)
                    if watch is not None:
                        check_no_hidden_state(layer, watch, " > ".join(record.labels))
                logdet = logdet + layer_logdet
        return h, logdet

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
        replay: ReplayState | None = None,
        slices: int | None = None,
    ) -> Reconstruction:
        """Reconstruct through every layer, in reverse
        (:func:`~hybridflow.autograd.reconstruct.reconstruct_steps`).

        A chain nested in another is reconstructed this way; the reconstructing Function
        passes the ``replay`` state of its forward pass (default: captured now) and the
        ``slices`` of the batch each layer runs on (default: ``micro_batches``).
        """
        if replay is None:
            replay = ReplayState.capture(output.device, self.seeded_layers())
        return reconstruct_steps(
            self._steps(inverse),
            tuple(self.parameters()),
            (output, grad_output, grad_logdet, cond),
            inverse=inverse,
            replay=replay,
            slices=self.micro_batches if slices is None else slices,
            tile_size=self.tile_size,
        )
