"""The base of the networks: one chain of layers behind checks at its entry."""

from __future__ import annotations

from typing import Any, get_args

import torch
from torch import Tensor

from hybridflow.arguments import one_of
from hybridflow.autograd import Chain, InvertibleModule, Mode, Reconstruction
from hybridflow.autograd.auto_mode import DEFAULT_STORE_LIMIT
from hybridflow.autograd.checks import check_condition, check_input
from hybridflow.sizes import parse_bytes

__all__ = ["Network"]


class Network(InvertibleModule):
    r"""An invertible network: the chain :attr:`flow` of layers it built, run behind checks.

    A subclass builds its layers with :meth:`_chain` (so that :attr:`mode` reaches every chain
    it made) and stores the outermost chain as ``self.flow``. ``forward`` and ``inverse``
    check the input and the condition (:meth:`_check`, which a subclass may extend) and run
    the flow; the reconstructing rule, used when the network is nested in a chain, is the
    flow's. The condition reaches the flow only when the network takes one.

    Args:
        num_features: channels (or features of vectors) of the input.
        cond_features: channels of the condition; 0 for an unconditional network.
        spatial_dims: 0 for vectors, 1/2/3 for sequences, images, volumes.
        mode: the initial :attr:`mode` of the chains.
        store_limit: the bound of every chain's ``"auto"`` mode (see :class:`~hybridflow.Chain`).
    """

    draws_random_numbers = False

    flow: Chain

    def __init__(
        self,
        num_features: int,
        cond_features: int,
        spatial_dims: int,
        mode: Mode,
        store_limit: int | float | str = DEFAULT_STORE_LIMIT,
    ):
        super().__init__()
        self.num_features = num_features
        self.cond_features = cond_features
        self.spatial_dims = spatial_dims
        self._mode: Mode = one_of(mode, "mode", type(self).__name__, get_args(Mode))
        parse_bytes(store_limit, f"{type(self).__name__}: store_limit")  # before any chain
        self._store_limit = store_limit
        self._chains: list[Chain] = []  # not submodules: each is registered where it nests

    def _chain(self, *layers: InvertibleModule, **options: Any) -> Chain:
        """A chain of ``layers`` in the network's mode, which :attr:`mode` later updates."""
        chain = Chain(*layers, mode=self._mode, store_limit=self._store_limit, **options)
        self._chains.append(chain)
        return chain

    @property
    def mode(self) -> Mode:
        """``"invert"`` (memory flat in depth), ``"store"`` (plain autograd) or ``"auto"``
        (store when small, see :class:`~hybridflow.Chain`): the mode of :attr:`flow`. Setting
        it sets every chain the network built, so it never goes stale."""
        return self.flow.mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        one_of(mode, "mode", type(self).__name__, get_args(Mode))
        self._mode = mode
        for chain in self._chains:
            chain.mode = mode

    def explain(self) -> str:
        """The network's mode, and what ``"auto"`` chose last (:meth:`Chain.explain`)."""
        return f"{type(self).__name__}: {self.flow.explain()}"

    @property
    def takes_condition(self) -> bool:
        return self.cond_features > 0

    @property
    def is_initialized(self) -> bool:
        return all(
            m.is_initialized
            for m in self.flow.modules()
            if isinstance(m, InvertibleModule) and not isinstance(m, Chain)
        )

    def config_arguments(self) -> dict[str, Any]:
        return {**super().config_arguments(), "mode": self.mode}

    def _check(self, x: Tensor, cond: object, where: str) -> Tensor | None:
        """Validate the input and the condition; return the condition the flow should see."""
        check_input(x, where, self.num_features, self.spatial_dims, self)
        check_condition(cond, x, where, self.cond_features)
        return cond if self.cond_features else None  # type: ignore[return-value]

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(z, logdet)``: the latent (shape of ``x``) and the log determinant ``(B,)``."""
        return self.flow(x, self._check(x, cond, type(self).__name__))

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x, logdet)``: the input and the log determinant of the inverse map."""
        return self.flow.inverse(z, self._check(z, cond, f"{type(self).__name__}.inverse"))

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        """The flow's reconstructing rule."""
        cond = cond if self.cond_features else None
        return self.flow.reconstruct_vjp(output, grad_output, grad_logdet, cond, inverse=inverse)

    @torch.no_grad()
    def sample(
        self,
        shape: tuple[int, ...],
        cond: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``x = f^{-1}(t z)``, ``z ~ N(0, I)`` of the given input ``shape``.

        Args:
            shape: the shape of the samples, as of an input ``(B, C, *S)``.
            cond: the condition, as for :meth:`forward`.
            temperature: the standard deviation ``t`` of the latent.
            generator: optional random generator.
        """
        param = next(self.parameters())
        z = torch.randn(shape, generator=generator, dtype=param.dtype).to(param.device)
        return self.inverse(temperature * z, cond)[0]
