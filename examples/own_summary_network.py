"""Your own summary network: train it jointly with a conditional flow, save it, load it back.

The observations are sets of ``n`` noisy draws around an unknown 2-D location ``theta``
(``x_i = theta + 0.5 eps_i``); the posterior of ``theta`` depends on them only through their
mean, which a permutation-invariant summary (here: the mean and spread of the draws, then a
small MLP) can learn. The summary network is an ordinary ``nn.Module``; it trains jointly with
the flow, which runs in ``"invert"`` mode. Making it ``hybridflow.config.Configurable``
records its constructor arguments, so ``hybridflow.save`` can write the whole posterior
(flow + summary) as config and weights, and ``hybridflow.load`` rebuilds it, as
``hybridflow sample --model`` does.

Run: ``python examples/own_summary_network.py`` (seconds).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

import hybridflow as hf
from hybridflow.config import Configurable
from hybridflow.distributions import ConditionalFlow, coupling_flow
from hybridflow.sbi import NPEConfig, NPETrainer

__all__ = ["SetStatistics", "main", "simulate"]


class SetStatistics(nn.Module, Configurable):
    """A set ``(B, n, D)`` to a summary ``(B, out_features)``: the mean and the log standard
    deviation of its elements, then an MLP. Invariant to the order of the elements.

    Args:
        features: size ``D`` of one element.
        out_features: size of the summary (the flow's ``cond_features``).
        hidden: width of the MLP.
    """

    def __init__(self, features: int, out_features: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * features, hidden), nn.GELU(), nn.Linear(hidden, out_features)
        )

    def forward(self, x: Tensor) -> Tensor:
        stats = torch.cat([x.mean(1), x.std(1).clamp_min(1e-6).log()], dim=1)
        return self.net(stats)


def simulate(num: int, draws: int, seed: int) -> tuple[Tensor, Tensor]:
    """``num`` pairs: ``theta ~ N(0, I_2)`` and ``draws`` noisy copies of it."""
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(num, 2, generator=generator)
    x = theta[:, None, :] + 0.5 * torch.randn(num, draws, 2, generator=generator)
    return theta, x


def main(
    simulations: int = 4000, draws: int = 10, epochs: int = 20, seed: int = 0, verbose: bool = True
) -> dict[str, float]:
    """Train, save, load, sample; returns the errors of the posterior mean and standard
    deviation against the exact ones (the posterior is Gaussian: mean ``n xbar / (n + 0.25)``,
    standard deviation ``0.5 / sqrt(n + 0.25)``)."""
    torch.manual_seed(seed)
    theta, x = simulate(simulations, draws, seed)
    flow = ConditionalFlow(
        coupling_flow(2, 8, depth=3, hidden=32),  # an "invert" chain
        SetStatistics(2, 8),
        event_shape=(2,),
        observation_shape=(None, 2),  # any number of draws of 2 features
    )
    config = NPEConfig(max_epochs=epochs, batch_size=128, learning_rate=2e-3, seed=seed)
    history = NPETrainer(flow, config).fit(theta, x)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "posterior.pt"
        hf.save(flow, path, metadata={"draws": draws})
        loaded, metadata = hf.load(path)  # SetStatistics was imported: it can be rebuilt
    assert isinstance(loaded.summary, SetStatistics) and metadata == {"draws": draws}

    theta_o, x_o = simulate(1, draws, seed + 1)
    with torch.no_grad():
        samples = loaded(x_o).sample((4000,))[:, 0]
    n = draws
    exact_mean = n * x_o[0].mean(0) / (n + 0.25)
    exact_std = 0.5 / (n + 0.25) ** 0.5
    result = {
        "final_validation_loss": history.validation_loss[-1],
        "mean_error": float((samples.mean(0) - exact_mean).abs().max()),
        "std_error": float((samples.std(0) - exact_std).abs().max()),
        "exact_std": exact_std,
    }
    if verbose:
        print(
            f"posterior mean off by {result['mean_error']:.3f}, standard deviation by "
            f"{result['std_error']:.3f} (exact standard deviation {exact_std:.3f}); "
            f"true theta {theta_o[0].tolist()}"
        )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=4000, help="simulated (theta, x) pairs")
    parser.add_argument("--draws", type=int, default=10, help="draws n in each observed set")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs")
    parser.add_argument("--seed", type=int, default=0)
    main(**vars(parser.parse_args()))  # each option is the keyword of main it names
