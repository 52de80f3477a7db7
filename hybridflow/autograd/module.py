"""The invertible-module contract and the generic reconstructing rule."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from hybridflow.config import Configurable

__all__ = [
    "InvertibleModule",
    "Reconstruction",
    "invertible_children",
    "vjp_from_input",
    "vjp_wrt",
]


class Reconstruction(NamedTuple):
    """What :meth:`InvertibleModule.reconstruct_vjp` returns.

    Attributes:
        input: the rebuilt input of the pass (``x`` for the forward pass, ``y`` for the inverse).
        grad_input: the gradient of the loss with respect to ``input``.
        grad_cond: the gradient with respect to the condition, or ``None`` when there is no
            condition or it does not require grad.
        grad_params: one entry per tensor of ``module.parameters()``, in that order; ``None``
            where the parameter does not require grad or received no gradient.
    """

    input: Tensor
    grad_input: Tensor
    grad_cond: Tensor | None
    grad_params: tuple[Tensor | None, ...]


class InvertibleModule(nn.Module, Configurable):
    r"""Base class of every invertible block.

    Contract (every subclass MUST keep it):

    * ``forward(x, cond=None) -> (y, logdet)`` computes :math:`y = f(x; c)` and
      :math:`\log |\det \partial f / \partial x|` per sample, shape ``(B,)``.
    * ``inverse(y, cond=None) -> (x, logdet)`` computes :math:`x = f^{-1}(y; c)` and the log
      determinant *of the inverse map*, which is the negative of the forward's at that point.
    * A module that takes no condition accepts ``cond`` and ignores it (a chain passes its
      condition to every layer); one that takes a condition says so in
      :attr:`takes_condition`.
    * Both always return a pair, whatever the flags; neither mutates its inputs.
    * Shape mistakes (rank, channels, missing or mismatched condition) raise ``ValueError`` or
      ``TypeError`` naming the layer, before any state changes.

    Every subclass is :class:`~hybridflow.config.Configurable`: its constructor arguments are
    recorded so that a model saves as plain data (:func:`hybridflow.save`).

    A subclass MAY override :meth:`reconstruct_vjp` with a hand-written rule that shares work
    between inversion and the vector-Jacobian product (VJP); otherwise the generic rule below
    is used: invert under ``no_grad``, re-run the pass with grad, take the VJP. Rules never
    write ``.grad``: they return parameter gradients, and the chain hands them to autograd.
    """

    draws_random_numbers: bool = True
    """Whether this class's own code may draw from torch's random generators. Read from each
    class's own body only (:func:`~hybridflow.autograd.replay.draws_random_numbers`): a
    subclass whose forward and inverse draw none says ``draws_random_numbers = False`` itself,
    and invert mode then skips re-seeding it. Its submodules are judged on their own."""

    @property
    def takes_condition(self) -> bool:
        """Whether the module uses a condition; unconditional modules ignore ``cond``."""
        return False

    @property
    def is_initialized(self) -> bool:
        """False while a data-dependent initialisation (ActNorm's) waits for the first batch."""
        return True

    @property
    def uses_generic_rule(self) -> bool:
        """Whether reconstructing this module runs the generic rule anywhere (an inverse and a
        forward pass: about twice the work of a hand-written rule), for cost estimates.

        A module whose class keeps the base :meth:`reconstruct_vjp` does. One that overrides
        it and holds invertible submodules (a chain, a wrapper, a network) is taken to
        delegate to them, and answers from them; one with a hand-written rule and no
        invertible submodules does not. Override when neither describes the module.
        """
        if type(self).reconstruct_vjp is InvertibleModule.reconstruct_vjp:
            return True
        return any(child.uses_generic_rule for child in invertible_children(self))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement inverse")

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        r"""Rebuild a pass's input from its output and back-propagate through the pass.

        Args:
            output: what the pass returned: ``y`` for the forward pass (``inverse=False``),
                ``x`` for the inverse pass (``inverse=True``).
            grad_output: :math:`\partial L / \partial \text{output}`, same shape as ``output``.
            grad_logdet: :math:`\partial L / \partial \text{logdet}`, shape ``(B,)``.
            cond: the condition the pass saw; its gradient is computed when it requires grad.
            inverse: which pass to back-propagate through.

        Returns:
            A :class:`Reconstruction`. Gradients are computed for parameters that require grad.
        """
        run, undo = (self.inverse, self.forward) if inverse else (self.forward, self.inverse)
        # The undo pass must not consume random numbers: the re-run must draw exactly what
        # the original pass drew from the layer's (seeded) stream.
        devices = [output.device] if output.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            rebuilt, _ = undo(output, cond)
        rebuilt = rebuilt.detach().requires_grad_(True)
        with torch.enable_grad():
            out, logdet = run(rebuilt, cond)
        return vjp_wrt((out, logdet), (grad_output, grad_logdet), rebuilt, cond, self)


def invertible_children(module: nn.Module) -> Iterator[InvertibleModule]:
    """The outermost invertible modules inside ``module`` (looking through plain containers
    such as ``nn.ModuleList``), ``module`` itself left out."""
    for child in module.children():
        if isinstance(child, InvertibleModule):
            yield child
        else:
            yield from invertible_children(child)


def vjp_from_input(
    module: InvertibleModule,
    input: Tensor,
    grad_output: Tensor,
    grad_logdet: Tensor,
    cond: Tensor | None,
    *,
    inverse: bool,
) -> Reconstruction:
    """Back-propagate through one pass of ``module`` from its known ``input`` (an anchor):
    re-run the pass with grad and take the VJP, as plain autograd would; no inversion."""
    leaf = input.detach().requires_grad_(True)
    with torch.enable_grad():
        out, logdet = module.inverse(leaf, cond) if inverse else module(leaf, cond)
    return vjp_wrt((out, logdet), (grad_output, grad_logdet), leaf, cond, module)


def vjp_wrt(
    outputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor],
    input: Tensor | None,
    cond: Tensor | None,
    module: nn.Module,
) -> Reconstruction:
    """Vector-Jacobian product of ``outputs`` with respect to ``input``, ``cond`` and the
    trainable parameters of ``module``, packed as a :class:`Reconstruction`.

    ``input`` is the tensor (requiring grad) that ``outputs`` were computed from, or ``None``
    when only the condition and the parameters matter (then ``input`` and ``grad_input`` of the
    result are ``None``). Outputs that depend on nothing differentiable are skipped.
    """
    params = tuple(module.parameters())
    trainable = [i for i, p in enumerate(params) if p.requires_grad]
    wants_input = input is not None and input.requires_grad
    wants_cond = cond is not None and cond.requires_grad
    targets = [
        *([input] if wants_input else []),
        *([cond] if wants_cond else []),
        *(params[i] for i in trainable),
    ]
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if o.requires_grad]
    if pairs and targets:
        grads = list(
            torch.autograd.grad(
                [o for o, _ in pairs], targets, [g for _, g in pairs], allow_unused=True
            )
        )
    else:
        grads = [None] * len(targets)
    grad_input = grads.pop(0) if wants_input else None
    if input is not None and grad_input is None:
        grad_input = torch.zeros_like(input)
    grad_cond = grads.pop(0) if wants_cond else None
    grad_params: list[Tensor | None] = [None] * len(params)
    for i, grad in zip(trainable, grads, strict=True):
        grad_params[i] = grad
    return Reconstruction(
        None if input is None else input.detach(), grad_input, grad_cond, tuple(grad_params)
    )
