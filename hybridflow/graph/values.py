"""The values flowing through a graph: calling a node, reading a port, and the checks that
name the node when a value does not fit (type, batch size, dtype, results, port indices)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from hybridflow.errors import InputError, InputTypeError
from hybridflow.graph.nodes import LOGDET, NodeKind, NodeSpec, Port

__all__ = [
    "call_node",
    "check_inputs",
    "check_reads",
    "check_sample",
    "node_errors",
    "node_outputs",
    "read_port",
]


def _check_tensor(value: object, spec: NodeSpec, port: Port, role: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise InputTypeError(
            f"its {role} {str(port)!r} is a {type(value).__name__}, expected a torch.Tensor",
            where=(f"Graph {spec.describe()}",),
        )
    return value


def check_inputs(spec: NodeSpec, args: list[Any], cond: Tensor | None, batch: int) -> None:
    """Type, batch and dtype checks that name the node (before it runs)."""
    module = spec.module
    place = f"Graph {spec.describe()}"
    if spec.kind in ("invertible", "operator"):
        for port, value in zip(spec.inputs, args, strict=True):
            _check_tensor(value, spec, port, "input")
    if spec.kind == "invertible":
        x = args[0]
        if not x.is_floating_point():
            raise InputTypeError(
                f"its input {str(spec.inputs[0])!r} is {x.dtype}, expected a floating-point tensor",
                where=(place,),
            )
        if cond is not None:
            _check_tensor(cond, spec, spec.cond, "condition")
            if cond.dim() == 0 or cond.shape[0] != x.shape[0]:
                raise InputError(
                    f"its condition {str(spec.cond)!r} has shape {tuple(cond.shape)} but its "
                    f"input {str(spec.inputs[0])!r} has batch size {x.shape[0]}; both must "
                    "share the batch dimension",
                    where=(place,),
                )
        if x.dim() == 0 or x.shape[0] != batch:
            raise InputError(
                f"its input {str(spec.inputs[0])!r} has shape {tuple(x.shape)}, expected the "
                f"batch size {batch} of the graph's inputs first",
                where=(place,),
            )
    if module is None or spec.kind == "operator":
        return
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    first = next((a for a in args if isinstance(a, Tensor) and a.is_floating_point()), None)
    if first is not None and dtypes and first.dtype not in dtypes:
        source = spec.inputs[args.index(first)]
        raise InputTypeError(
            f"its input {str(source)!r} is {first.dtype} but the parameters of its "
            f"{type(module).__name__} are {sorted(map(str, dtypes))}; convert the module or "
            "the data to one dtype",
            where=(place,),
        )


def node_outputs(spec: NodeSpec, result: Any, batch: int) -> dict[str, Tensor]:
    """The tensor ports a node's result fills, checked."""
    name = spec.name
    if spec.kind == "invertible":
        if (
            not isinstance(result, tuple)
            or len(result) != 2
            or not all(isinstance(t, Tensor) for t in result)
        ):
            raise TypeError(
                f"Graph {spec.describe()}: an invertible module must return (y, logdet), got "
                f"{type(result).__name__}"
            )
        y, logdet = result
        if logdet.shape != (y.shape[0],):
            raise ValueError(
                f"Graph {spec.describe()}: logdet has shape {tuple(logdet.shape)}, expected "
                f"({y.shape[0]},)"
            )
        return {name: y, f"{name}.{LOGDET}": logdet}
    if isinstance(result, Tensor):
        return {name: result}
    items = result if spec.kind == "autograd" and isinstance(result, tuple | list) else ()
    if items and all(isinstance(t, Tensor) for t in items):
        return {f"{name}.{i}": t for i, t in enumerate(items)}
    raise TypeError(
        f"Graph {spec.describe()}: must return a tensor"
        + (" or a tuple of tensors" if spec.kind == "autograd" else "")
        + f", got {type(result).__name__}"
    )


def check_sample(specs: Mapping[str, NodeSpec], sample: Mapping[str, Tensor]) -> int:
    """Check that ``sample`` holds one batched tensor per graph input; return the batch size."""
    if not isinstance(sample, Mapping):
        raise TypeError(
            f"Graph.build: sample must map input names to tensors, got {type(sample).__name__}"
        )
    names = [n for n, s in specs.items() if s.kind == "input"]
    for name in names:
        if name not in sample:
            raise ValueError(f"Graph input {name!r}: missing from the sample")
        value = sample[name]
        if not isinstance(value, Tensor) or value.dim() == 0:
            what = type(value).__name__ if not isinstance(value, Tensor) else "a scalar tensor"
            raise TypeError(
                f"Graph input {name!r}: the sample must be a tensor with a batch dimension, "
                f"got {what}"
            )
    unknown = sorted(set(sample) - set(names))
    if unknown:
        raise ValueError(f"Graph.build: the sample has {unknown}, which are not inputs ({names})")
    return int(sample[names[0]].shape[0])


def check_reads(
    spec: NodeSpec,
    produced: Mapping[str, Tensor],
    specs: Mapping[str, NodeSpec],
    outputs: Mapping[str, Port],
) -> None:
    """Every port read from this node must exist; a tuple reaches only autograd nodes."""
    readers: list[tuple[str, NodeKind | None, Port]] = [
        (f"Graph {s.describe()}", s.kind, p)
        for s in specs.values()
        for p in s.reads
        if p.node == spec.name
    ]
    readers += [(f"Graph output {n!r}", None, p) for n, p in outputs.items() if p.node == spec.name]
    is_tuple = spec.kind == "autograd" and spec.name not in produced
    for where, kind, port in readers:
        if port.index is not None and port.index != LOGDET and str(port) not in produced:
            returned = f"{len(produced)} items" if is_tuple else "a single tensor"
            raise ValueError(
                f"{where}: reads {str(port)!r}, but {spec.describe()} returned {returned}"
            )
        if port.index is None and is_tuple and kind != "autograd":
            raise TypeError(
                f"{where}: reads {str(port)!r}, a tuple of {len(produced)} tensors; read one "
                f"item ('{spec.name}.0', ...)"
            )


@contextmanager
def node_errors(spec: NodeSpec, during: str) -> Iterator[None]:
    """Locate input errors of a node's module at the node; re-raise what torch or the module
    raised otherwise as an input error naming the node.

    :class:`~hybridflow.errors.InputError`/:class:`~hybridflow.errors.InputTypeError` get the
    node prepended to their ``where``. A plain ``ValueError``, ``TypeError`` or
    ``RuntimeError`` (torch's mismatched matmul or convolution shapes, say) becomes an
    ``InputError`` (``InputTypeError`` for a ``TypeError``) whose ``__cause__`` is the
    original: the values reaching the node do not fit it; ``during`` ("failed on the
    sample") introduces torch's text. Subclasses (out of memory,
    reconstruction errors, argument errors) pass unchanged.
    """
    place = f"Graph {spec.describe()}"
    try:
        yield
    except (InputError, InputTypeError) as error:
        error.located(place)
        raise
    except (ValueError, TypeError, RuntimeError) as error:
        if type(error) not in (ValueError, TypeError, RuntimeError):
            raise
        kind = InputTypeError if type(error) is TypeError else InputError
        detail = f"{during}: {error}" if type(error) is RuntimeError else str(error)
        raise kind(detail, where=(place,)) from error


def read_port(values: Mapping[str, Any], tuples: Mapping[str, tuple[str, ...]], port: Port) -> Any:
    """The value of ``port``: a tensor, or the tuple of an autograd node's items."""
    key = str(port)
    if key in values:
        return values[key]
    if port.index is None and port.node in tuples:
        return tuple(values[item] for item in tuples[port.node])
    raise KeyError(key)


def call_node(spec: NodeSpec, args: Sequence[Any], cond: Tensor | None) -> Any:
    """Apply a node to its input values (an invertible node to ``args[0]`` and ``cond``)."""
    if spec.target is None:
        raise TypeError(f"Graph {spec.describe()}: has nothing to call")
    if spec.kind == "invertible":
        return spec.target(args[0], cond)
    return spec.target(*args)
