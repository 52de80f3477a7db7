"""``Inverse``: an invertible module used in the opposite direction."""

from __future__ import annotations

from torch import Tensor

from hybridflow.autograd import InvertibleModule, Reconstruction
from hybridflow.layers.wrapper import Wrapper

__all__ = ["Inverse"]


class Inverse(Wrapper):
    r"""The inverse of a module as a module: :math:`g = f^{-1}`.

    ``forward`` runs ``module.inverse`` and ``inverse`` runs ``module.forward``; the log
    determinants follow (the forward of :math:`g` returns
    :math:`\log|\det \partial f^{-1} / \partial y|`). The reconstructing rule is the wrapped
    module's, for the other pass, so a hand-written rule keeps paying. Parameters are the wrapped
    module's (shared, not copied). A typical use is an unsqueeze:
    ``Inverse(Squeeze())`` maps ``(B, 4C, H/2, W/2)`` back to ``(B, C, H, W)``.

    Args:
        module: the invertible module to reverse.

    Example:
        >>> import torch
        >>> from hybridflow.layers import Inverse, Squeeze
        >>> y, _ = Inverse(Squeeze())(torch.randn(2, 12, 4, 4))
        >>> tuple(y.shape)
        (2, 3, 8, 8)
    """

    draws_random_numbers = False

    inner_name = "module"

    def __init__(self, module: InvertibleModule) -> None:
        super().__init__(module)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.module.inverse(x, cond)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.module(y, cond)

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        """The wrapped module's rule for the opposite pass."""
        return self.module.reconstruct_vjp(
            output, grad_output, grad_logdet, cond, inverse=not inverse
        )
