"""An image inverse problem: deblurring or inpainting handwritten digits (scikit-learn's set)."""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Uniform,
)

from hybridflow.arguments import number
from hybridflow.operators import Convolution, LinearOperator, Mask
from hybridflow.sbi.tasks.base import Task

__all__ = ["DigitsInverseProblem", "DigitsKind", "load_digits"]

DigitsKind = Literal["deblur", "inpaint"]
"""The forward operator of :class:`DigitsInverseProblem`."""

_LEVELS = 17  # the digits' pixels are integers 0..16
_HELD_OUT = 297  # the last images (of 1797) never enter the prior


def load_digits() -> Tensor:
    """scikit-learn's 1797 handwritten digits as integer levels ``(1797, 8, 8)`` in 0..16.

    The data ship with scikit-learn (no download). Needs the optional dependency
    ``scikit-learn``.
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "DigitsInverseProblem needs scikit-learn: pip install 'hybridflow[sbi]'"
        ) from error
    return torch.as_tensor(_load().images, dtype=torch.float64)


def _gaussian_kernel(std: float, dtype: torch.dtype) -> Tensor:
    radius = max(1, math.ceil(2 * std))
    offsets = torch.arange(-radius, radius + 1, dtype=dtype)
    profile = torch.exp(-(offsets**2) / (2 * std**2))
    kernel = profile[:, None] * profile[None, :]
    return kernel / kernel.sum()


class DigitsInverseProblem(Task):
    r"""Recover an 8x8 handwritten digit :math:`\theta` from a blurred or masked noisy image:
    :math:`x = A\theta + \sigma\varepsilon`.

    **Prior.** The empirical distribution of scikit-learn's digits, dequantised: an image is
    drawn uniformly from the first 1500 digits and each level :math:`k \in \{0..16\}` becomes
    :math:`(k + u) / 17`, :math:`u \sim U(0, 1)`, so :math:`\theta \in (0, 1)^{1 \times 8
    \times 8}` has a density (a mixture of 1500 boxes, :attr:`prior`). The last 297 digits are
    held out: :meth:`observation` draws its ground truths from them, so reference
    observations are images the prior never saw.

    **Operator.** ``"deblur"``: a Gaussian blur of standard deviation ``blur_std`` pixels
    with zero boundary (:class:`~hybridflow.operators.Convolution`). ``"inpaint"``: a fixed
    random mask keeping a fraction ``keep`` of the pixels
    (:class:`~hybridflow.operators.Mask`); the noise is masked too, so missing pixels read 0.

    Args:
        kind: ``"deblur"`` or ``"inpaint"`` (see :data:`DigitsKind`).
        noise_std: :math:`\sigma`, in units of the image range :math:`(0, 1)`.
        blur_std: width of the blur (``"deblur"``).
        keep: fraction of observed pixels (``"inpaint"``).
        mask_seed: seed of the inpainting mask.
        dtype: floating-point type.

    Example:
        >>> import torch
        >>> from hybridflow.sbi import DigitsInverseProblem
        >>> task = DigitsInverseProblem("deblur")
        >>> theta, x = task.sample_joint(2, torch.Generator().manual_seed(0))
        >>> tuple(theta.shape), tuple(x.shape)
        ((2, 1, 8, 8), (2, 1, 8, 8))
    """

    name = "digits"

    def __init__(
        self,
        kind: DigitsKind = "deblur",
        noise_std: float = 0.05,
        blur_std: float = 1.0,
        keep: float = 0.5,
        mask_seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(dtype)
        if kind not in get_args(DigitsKind):
            raise ValueError(
                f"DigitsInverseProblem: kind must be one of {get_args(DigitsKind)}, got {kind!r}"
            )
        for name, value in (("noise_std", noise_std), ("blur_std", blur_std)):
            number(value, name, "DigitsInverseProblem", minimum=0, open_low=True)
        number(keep, "keep", "DigitsInverseProblem", minimum=0, maximum=1, open_low=True)
        self.kind: DigitsKind = kind
        self.noise_std = float(noise_std)
        levels = load_digits().to(dtype).unsqueeze(1)  # (1797, 1, 8, 8)
        self._train = levels[:-_HELD_OUT]
        self._held_out = levels[-_HELD_OUT:]
        if kind == "deblur":
            self.mask: Tensor | None = None
            self.operator: LinearOperator = Convolution(
                _gaussian_kernel(blur_std, dtype), in_shape=(1, 8, 8), boundary="zero"
            )
        else:
            generator = torch.Generator().manual_seed(mask_seed)
            self.mask = torch.rand(8, 8, generator=generator) < keep
            self.operator = Mask(self.mask, in_shape=(1, 8, 8))

    @property
    def theta_shape(self) -> tuple[int, ...]:
        return (1, 8, 8)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (1, 8, 8)

    @property
    def prior(self) -> Distribution:
        """The dequantised empirical prior: a uniform mixture of 1500 boxes of side 1/17."""
        low = self._train / _LEVELS
        boxes = Independent(Uniform(low, low + 1 / _LEVELS, validate_args=False), 3)
        weights = Categorical(logits=torch.zeros(len(low), dtype=self.dtype))
        return MixtureSameFamily(weights, boxes, validate_args=False)

    def _dequantise(self, levels: Tensor, generator: torch.Generator | None) -> Tensor:
        u = torch.rand(levels.shape, generator=generator, dtype=self.dtype)
        return (levels + u) / _LEVELS

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        index = torch.randint(len(self._train), (num,), generator=generator)
        return self._dequantise(self._train[index], generator)

    def _simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = self.noise_std * torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
        with torch.no_grad():
            if self.kind == "inpaint":
                return self.operator(theta + noise.to(theta))
            return self.operator(theta) + noise.to(theta)

    def observation(self, index: int = 0) -> tuple[Tensor, Tensor]:
        """Reference observation ``index``: a held-out digit (``index`` modulo 297) and its
        simulated measurement, both ``(1, 8, 8)``; the same for the same index."""
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"DigitsInverseProblem: index must be an int >= 0, got {index!r}")
        generator = torch.Generator().manual_seed(index)
        theta = self._dequantise(
            self._held_out[index % _HELD_OUT : index % _HELD_OUT + 1], generator
        )
        return theta[0], self.simulate(theta, generator)[0]
