r"""``mode="auto"``: store the activations when they are small, rebuild them when they matter.

A chain in ``"auto"`` mode decides at each call (without grad too, so that it seeds its
layers' random streams as it would with grad; a chain nested in a pass without grad follows
that pass instead). It estimates what plain autograd (store mode) would keep for backward at
this call's batch :math:`B` as :math:`\text{fixed} + B \cdot \text{per sample}`, from the
storages autograd saves while the chain runs its layers in store mode on two small slices of
the batch (2 and 4 samples; the whole batch when it is smaller), parameters left out and each
storage counted once. It stores when the estimate is at most ``store_limit`` and inverts
otherwise. The probe runs once per input signature (the shapes after the batch, dtype,
device, direction, autocast, train or eval mode: dropout keeps its masks in training only;
the number of layers, so appending or removing layers measures again); a chain whose
parameters are frozen or thawed, or whose layers are swapped for others of the same count,
after its first call keeps the earlier estimate (an upper bound when they were frozen). It
keeps no activation (each is counted, then freed, so its peak is that of a pass without grad
on a few samples) and leaves no trace: the random state, the buffers and any pending
data-dependent initialisation (ActNorm) are put back afterwards.

Vector flows (a posterior over a few parameters) keep a few MiB and store, which saves the
reconstruction's extra compute; image networks keep hundreds of MiB or more and invert, which
keeps memory flat in depth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef

from hybridflow.autograd.module import InvertibleModule
from hybridflow.sizes import format_bytes, parse_bytes

__all__ = ["DEFAULT_STORE_LIMIT", "AutoMode", "ModeChoice", "StoreEstimate"]

DEFAULT_STORE_LIMIT = 64 * 2**20
"""In ``"auto"`` mode, store when plain autograd keeps at most this many bytes (64 MiB)."""

_PROBE_SIZES = (2, 4)

Run = Callable[[Tensor, "Tensor | None"], object]


@dataclass(frozen=True)
class StoreEstimate:
    """What plain autograd keeps for backward, as a function of the batch size.

    Attributes:
        fixed: bytes that do not grow with the batch (tensors derived from the parameters).
        per_sample: bytes each sample adds.
        probed: the batch sizes it was measured on.
    """

    fixed: float
    per_sample: float
    probed: tuple[int, ...]

    def at(self, batch: int) -> float:
        """The bytes kept at ``batch`` samples."""
        return self.fixed + self.per_sample * batch


@dataclass(frozen=True)
class ModeChoice:
    """What an ``"auto"`` chain chose for one call, and why.

    Attributes:
        mode: ``"store"`` or ``"invert"``.
        batch: the call's batch size.
        kept_bytes: what plain autograd would keep at that batch (the estimate).
        limit: ``store_limit`` in bytes.
        estimate: the :class:`StoreEstimate` it came from.
    """

    mode: Literal["store", "invert"]
    batch: int
    kept_bytes: float
    limit: float
    estimate: StoreEstimate

    def __str__(self) -> str:
        relation = "within" if self.mode == "store" else "over"
        sizes = "/".join(str(b) for b in self.estimate.probed)
        return (
            f"{self.mode!r}: plain autograd would keep about {format_bytes(self.kept_bytes)} at "
            f"batch {self.batch} ({format_bytes(self.estimate.fixed)} fixed + "
            f"{format_bytes(self.estimate.per_sample)} per sample, measured on {sizes} "
            f"samples), {relation} store_limit {format_bytes(self.limit)}"
        )


def _saved_bytes(run: Run, module: nn.Module, h: Tensor, cond: Tensor | None) -> int:
    """Bytes of the storages autograd would save while ``run(h, cond)`` runs (parameters left
    out, each storage once).

    Nothing is kept: the hook hands autograd a placeholder, so each activation is freed as in
    a pass without grad and the probe's own peak stays that of such a pass (a store-mode
    probe of a large image would need the very memory that inversion saves). A storage freed
    and another allocated at its address are told apart by a weak reference to the first.
    """
    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, StorageWeakRef] = {}
    total = 0

    def pack(tensor: Tensor) -> None:
        nonlocal total
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        if address in parameters:
            return None
        known = seen.get(address)
        if known is None or known.expired():
            seen[address] = StorageWeakRef(storage)
            total += storage.nbytes()
        return None

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, _never_unpacked):
        run(h, cond)
    return total


def _never_unpacked(_: None) -> Tensor:
    raise RuntimeError("auto mode's probe ran backward through its placeholders (a bug)")


@contextmanager
def _leaving_no_trace(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Put back the random state, the buffers (running statistics) and the state of layers
    still waiting for their data-dependent initialisation after the enclosed code."""
    pending = [
        m for m in module.modules() if isinstance(m, InvertibleModule) and not m.is_initialized
    ]
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in pending]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for buffer, value in buffers:
                buffer.copy_(value)
            for layer, state in zip(pending, states, strict=True):
                layer.load_state_dict(state)


def _slice(t: Tensor | None, n: int) -> Tensor | None:
    """The first ``n`` samples in a storage of their own (a view would count the whole batch)."""
    if t is None:
        return None
    return t[:n].detach().clone().requires_grad_(t.requires_grad)


@torch.compiler.disable  # saved-tensor hooks and a side run: eager (one break, at the first call)
def _probe(run: Run, module: nn.Module, h: Tensor, cond: Tensor | None) -> StoreEstimate:
    """Measure what plain autograd keeps on slices of 2 and 4 samples; fit fixed + per sample."""
    sizes = tuple(dict.fromkeys(min(n, h.shape[0]) for n in _PROBE_SIZES))
    with _leaving_no_trace(module, h.device):
        kept = [_saved_bytes(run, module, _slice(h, n), _slice(cond, n)) for n in sizes]
    if len(sizes) == 1:  # too small a batch to tell fixed from per-sample bytes
        return StoreEstimate(0.0, kept[0] / sizes[0], sizes)
    per_sample = max(0.0, (kept[1] - kept[0]) / (sizes[1] - sizes[0]))
    return StoreEstimate(max(0.0, kept[0] - per_sample * sizes[0]), per_sample, sizes)


class AutoMode:
    """The ``"auto"`` decision of one chain: its limit, its estimates, its last choice.

    Args:
        store_limit: store when plain autograd keeps at most this many bytes (an int, or a
            size such as ``"512MiB"``; ``"unlimited"``: always store).
        where: how messages name the chain.
    """

    def __init__(self, store_limit: int | float | str, where: str) -> None:
        self.store_limit = store_limit
        self.limit = parse_bytes(store_limit, f"{where}: store_limit")
        self._estimates: dict[tuple, StoreEstimate] = {}
        self.last: ModeChoice | None = None

    def estimate(
        self, run: Run, module: nn.Module, h: Tensor, cond: Tensor | None, inverse: bool
    ) -> StoreEstimate:
        """The (cached) estimate for inputs like ``h`` and ``cond``."""
        key = (
            tuple(h.shape[1:]),
            None if cond is None else tuple(cond.shape[1:]),
            h.dtype,
            h.device,
            inverse,
            torch.is_autocast_enabled(h.device.type),  # half-precision activations
            module.training,
            len(module.layers),  # layers appended or removed since: measured again
        )
        if key not in self._estimates:
            self._estimates[key] = _probe(run, module, h, cond)
        return self._estimates[key]

    def config_arguments(self) -> dict[str, object]:
        """``store_limit`` for the chain's config, when it is not the default."""
        return {} if self.store_limit == DEFAULT_STORE_LIMIT else {"store_limit": self.store_limit}

    def explain(self, head: str, auto: bool) -> str:
        """``head`` (the chain and its mode) followed by what ``"auto"`` chose last."""
        if not auto:
            return f"{head} (set)"
        if self.last is None:
            limit = format_bytes(self.limit)
            return f"{head}: no call yet; it will store within {limit}"
        return f"{head} chose {self.last}"

    def choose(
        self, run: Run, module: nn.Module, h: Tensor, cond: Tensor | None, inverse: bool
    ) -> ModeChoice:
        """Store or invert this call (see the module's docstring); kept as :attr:`last`."""
        estimate = self.estimate(run, module, h, cond, inverse)
        kept = estimate.at(h.shape[0])
        mode: Literal["store", "invert"] = "store" if kept <= self.limit else "invert"
        self.last = ModeChoice(mode, h.shape[0], kept, self.limit, estimate)
        return self.last
