"""Memory of one training step of a saved-as-config posterior flow, per mode, in fresh processes.

The flow is passed as its plain-data config (:func:`hybridflow.config.get_config`) with every
``mode`` argument set to the mode measured, and the batch as a tensor file, so the child
process builds exactly the network the caller trains. Each child takes a warm-up step, then
measures one step of ``-log q(theta | x)`` with AdamW: the peak growth of its resident set
(:func:`~hybridflow.bench.probes.measure_peak`, where ``/proc`` can be read), and the bytes
that the forward pass leaves for backward (:func:`~hybridflow.bench.probes.saved_bytes`,
everywhere), in all and for the summary network alone.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hybridflow.autograd.chain import Mode
from hybridflow.bench import probes
from hybridflow.bench.probes import (
    MEMORY_ENV,
    measure_peak,
    peak_memory_unavailable,
    run_child,
    saved_storages,
)
from hybridflow.config import from_config
from hybridflow.distributions import FlowDistribution
from hybridflow.io import atomic_torch_save

__all__ = ["StepMemory", "main", "measure_step_memory", "with_mode"]

_CHILD = ["-m", "hybridflow.bench.step_memory"]


@dataclass(frozen=True)
class StepMemory:
    """One training step's memory in one mode.

    Attributes:
        mode: ``"invert"`` or ``"store"``.
        peak_bytes: peak growth of the resident set over the step, or ``None`` where it
            cannot be read (see ``note``).
        saved_bytes: bytes of the tensors kept for backward (each storage once).
        summary_saved_bytes: the part of ``saved_bytes`` that the summary network keeps
            (ordinary autograd in every mode).
        param_bytes: bytes of the parameters (their gradients take as much again).
        note: why ``peak_bytes`` is missing, else ``None``.
    """

    mode: str
    peak_bytes: int | None
    saved_bytes: int
    summary_saved_bytes: int
    param_bytes: int
    note: str | None

    @property
    def flow_saved_bytes(self) -> int:
        """Bytes kept for backward by the flow and the loss (all but the summary's)."""
        return self.saved_bytes - self.summary_saved_bytes


def with_mode(config: Any, mode: Mode) -> Any:
    """A copy of a module config with every ``mode`` argument (of chains and networks) set to
    ``mode``.

    Example:
        >>> config = {"class": "Glow", "arguments": {"mode": "invert", "depth": 2}}
        >>> with_mode(config, "store")["arguments"]
        {'mode': 'store', 'depth': 2}
    """
    if isinstance(config, list):
        return [with_mode(item, mode) for item in config]
    if not isinstance(config, dict):
        return config
    copied = {key: with_mode(value, mode) for key, value in config.items()}
    arguments = copied.get("arguments")
    if (
        set(copied) == {"class", "arguments"}
        and isinstance(arguments, dict)
        and arguments.get("mode") in ("invert", "store")
    ):
        arguments["mode"] = mode
    return copied


def _step(flow: nn.Module, optimizer: torch.optim.Optimizer, theta: Tensor, x: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = -flow(x).log_prob(theta).mean()
    loss.backward()
    optimizer.step()


def _child(config: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    flow = from_config(config["model"])
    batch = torch.load(config["batch"], weights_only=True)
    theta, x = batch["theta"], batch["x"]
    optimizer = torch.optim.AdamW(flow.parameters(), lr=1e-4)
    reason = peak_memory_unavailable()
    peak = None if reason is not None else measure_peak(lambda: _step(flow, optimizer, theta, x))
    summary, kept = _saved_split(flow, theta, x)
    params = sum(p.numel() * p.element_size() for p in flow.parameters())
    return asdict(StepMemory(config["mode"], peak, kept, summary, params, reason))


def _saved_split(flow: nn.Module, theta: Tensor, x: Tensor) -> tuple[int, int]:
    """Bytes the forward pass keeps for backward: in the summary network, and in all."""
    conditions: list[Tensor] = []
    by_summary = saved_storages(lambda: conditions.append(flow.condition(x)))
    by_rest = saved_storages(
        lambda: -FlowDistribution(flow.transform, flow.base(), conditions[0]).log_prob(theta)
    )
    summary = sum(by_summary.values())
    rest = sum(size for address, size in by_rest.items() if address not in by_summary)
    return summary, summary + rest


def measure_step_memory(
    model_config: dict[str, Any],
    theta: Tensor,
    x: Tensor,
    modes: tuple[Mode, ...] = ("invert", "store"),
    threads: int = 1,
    timeout: float = 600,
) -> list[StepMemory]:
    """Measure one training step of the flow ``model_config`` on the batch ``(theta, x)`` in
    each mode, each in a fresh process started with
    :data:`~hybridflow.bench.probes.MEMORY_ENV`.

    Args:
        model_config: :func:`hybridflow.config.get_config` of a conditional flow.
        theta: parameters ``(B, *theta_shape)``.
        x: observations ``(B, *x_shape)``.
        modes: the modes to measure.
        threads: torch threads in each child.
        timeout: seconds allowed per child.

    Raises:
        hybridflow.bench.probes.ChildError: a child failed.
    """
    with tempfile.TemporaryDirectory(prefix="hybridflow-step-") as folder:
        batch = Path(folder) / "batch.pt"
        atomic_torch_save({"theta": theta.detach().cpu(), "x": x.detach().cpu()}, batch)
        results = []
        for mode in modes:
            config = {
                "model": with_mode(model_config, mode),
                "batch": str(batch),
                "mode": mode,
                "threads": threads,
            }
            results.append(StepMemory(**run_child(_CHILD, config, MEMORY_ENV, timeout)))
    return results


def main(argv: list[str] | None = None) -> None:
    """The child's entry point: ``python -m hybridflow.bench.step_memory --child JSON``."""
    probes.child_main(_child, argv)


if __name__ == "__main__":
    main()
