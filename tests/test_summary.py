"""Summary networks: shapes, permutation and padding invariance, sets of varying size, and
joint training with a flow."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hybridflow.distributions import ConditionalFlow, coupling_flow
from hybridflow.sbi import NPEConfig, NPETrainer
from hybridflow.summary import CNN, MLP, DeepSet, SetTransformer, Standardize, pad_sets

SET_NETWORKS = {
    "deepset-mean": lambda: DeepSet(3, 5, hidden=16, pooling="mean"),
    "deepset-sum": lambda: DeepSet(3, 5, hidden=16, pooling="sum"),
    "deepset-max": lambda: DeepSet(3, 5, hidden=16, pooling="max"),
    "set-transformer": lambda: SetTransformer(3, 5, hidden=16, heads=2, blocks=2, seeds=2),
}


def _set_net(name: str) -> nn.Module:
    torch.manual_seed(0)
    return SET_NETWORKS[name]().double().eval()


def test_mlp_shapes_and_errors() -> None:
    net = MLP((4, 2), 6, hidden=8, depth=1)
    assert net(torch.randn(3, 4, 2)).shape == (3, 6)
    assert net(torch.randn(3, 8)).shape == (3, 6)
    with pytest.raises(ValueError, match=r"8 entries per observation, got shape \(3, 7\)"):
        net(torch.randn(3, 7))
    with pytest.raises(ValueError, match="out_features"):
        MLP(3, 0)


def test_mlp_dropout_only_while_training() -> None:
    torch.manual_seed(0)
    plain, dropped = MLP(5, 3, hidden=32), MLP(5, 3, hidden=32, dropout=0.5)
    assert [type(m) for m in plain.net] == [nn.Linear, nn.GELU] * 2 + [nn.Linear]
    assert sum(isinstance(m, nn.Dropout) for m in dropped.net) == 2
    with torch.no_grad():  # the same weights: dropout adds no parameters
        for mine, theirs in zip(dropped.parameters(), plain.parameters(), strict=True):
            mine.copy_(theirs)
    x = torch.randn(4, 5)
    dropped.eval()
    torch.testing.assert_close(dropped(x), plain(x))
    dropped.train()
    assert not torch.allclose(dropped(x), plain(x))
    with pytest.raises(ValueError, match="dropout"):
        MLP(5, 3, dropout=1.0)


@pytest.mark.parametrize("spatial_dims, size", [(1, (20,)), (2, (12, 10))])
def test_cnn_vector_and_field(spatial_dims: int, size: tuple[int, ...]) -> None:
    vector = CNN(2, 7, spatial_dims=spatial_dims, hidden=8, depth=2)
    field = CNN(2, 3, spatial_dims=spatial_dims, hidden=8, depth=2, output="field")
    x = torch.randn(4, 2, *size)
    assert vector(x).shape == (4, 7)
    assert field(x).shape == (4, 3, *size)
    bigger = torch.randn(4, 2, *(2 * s for s in size))
    assert vector(bigger).shape == (4, 7)  # any input size: adaptive pooling
    with pytest.raises(ValueError, match="C=2"):
        vector(torch.randn(4, 3, *size))
    with pytest.raises(ValueError, match="got shape"):
        vector(torch.randn(4, 2))
    with pytest.raises(ValueError, match="output must be"):
        CNN(1, 2, output="map")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(SET_NETWORKS))
def test_sets_are_permutation_and_padding_invariant(name: str) -> None:
    net = _set_net(name)
    generator = torch.Generator().manual_seed(1)
    sizes = [4, 1, 6, 0]
    sets = [torch.randn(n, 3, generator=generator, dtype=torch.float64) for n in sizes]
    with torch.no_grad():
        reference = net(sets)
        assert reference.shape == (4, 5) and torch.isfinite(reference).all()
        shuffled = [s[torch.randperm(len(s), generator=generator)] for s in sets]
        torch.testing.assert_close(net(shuffled), reference)
        padded, mask = pad_sets(sets)
        torch.testing.assert_close(net(padded, mask), reference)
        # More padding, holding garbage (even NaN): ignored.
        wide = torch.cat([padded, torch.full((4, 3, 3), math.nan, dtype=torch.float64)], 1)
        wide_mask = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], 1)
        torch.testing.assert_close(net(wide, wide_mask), reference)
        for b, s in enumerate(sets):  # each set alone gives the same summary
            torch.testing.assert_close(net([s]), reference[b : b + 1])


@pytest.mark.parametrize("name", sorted(SET_NETWORKS))
def test_sets_give_finite_gradients_with_empty_sets(name: str) -> None:
    net = _set_net(name).train()
    sets = [torch.randn(2, 3, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.float64)]
    net(sets).sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_set_size_feature_distinguishes_repeated_sets() -> None:
    element = torch.randn(1, 3)
    once, twice = [element], [torch.cat([element, element])]
    torch.manual_seed(0)
    with_size = DeepSet(3, 4, hidden=8)
    without = DeepSet(3, 4, hidden=8, set_size=False)
    assert not torch.allclose(with_size(once), with_size(twice))
    torch.testing.assert_close(without(once), without(twice))


def test_set_input_errors() -> None:
    net = DeepSet(3, 4, hidden=8)
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        net(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="bool tensor"):
        net(x, torch.ones(2, 5))
    with pytest.raises(ValueError, match="bool tensor"):
        net(x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="not with a list"):
        net([x[0]], torch.ones(1, 5, dtype=torch.bool))
    bad = x.clone()
    bad[0, 1, 2] = math.inf
    with pytest.raises(ValueError, match="NaN/Inf"):
        net(bad)
    with pytest.raises(ValueError, match="set 1"):
        pad_sets([torch.randn(2, 3), torch.randn(2, 4)])
    with pytest.raises(ValueError, match="hidden=10 must be a multiple of heads=4"):
        SetTransformer(3, 4, hidden=10, heads=4)
    with pytest.raises(ValueError, match="pooling"):
        DeepSet(3, 4, pooling="median")  # type: ignore[arg-type]


def test_standardize() -> None:
    x = torch.randn(100, 3) * torch.tensor([1.0, 10.0, 0.1]) + 5
    z = Standardize.from_data(x)(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=1e-5, rtol=0)
    constant = Standardize.from_data(torch.ones(4, 2))(torch.ones(4, 2))
    assert torch.isfinite(constant).all()
    with pytest.raises(ValueError, match="N >= 2"):
        Standardize.from_data(torch.ones(1, 2))
    with pytest.raises(ValueError, match="NaN/Inf"):
        Standardize.from_data(torch.tensor([[1.0], [math.nan]]))


def test_set_summary_learns_how_posteriors_sharpen_with_set_size() -> None:
    r"""theta ~ N(0, I_2), x_1..x_n ~ N(theta, I_2) iid with n in 1..8: the posterior is
    N(sum x / (n + 1), I / (n + 1)). A set summary trained jointly with the flow (in invert
    mode) on padded sets with masks must recover how the posterior's width shrinks with n."""
    generator = torch.Generator().manual_seed(0)
    num = 5000
    theta = torch.randn(num, 2, generator=generator)
    sizes = torch.randint(1, 9, (num,), generator=generator)
    x = theta[:, None, :] + torch.randn(num, 8, 2, generator=generator)
    mask = torch.arange(8)[None, :] < sizes[:, None]
    x = torch.where(mask[..., None], x, torch.zeros(()))
    torch.manual_seed(0)
    flow = ConditionalFlow(
        coupling_flow(2, cond_features=8, depth=4, hidden=64),
        SetTransformer(2, 8, hidden=16, heads=2, blocks=1),
        event_shape=(2,),
    )
    config = NPEConfig(
        max_epochs=8, batch_size=64, learning_rate=3e-3, schedule="cosine", patience=None
    )
    NPETrainer(flow, config).fit(theta, (x, mask))
    probe = torch.randn(1, 8, 2, generator=generator)
    for n in (1, 8):
        probe_mask = torch.arange(8)[None, :] < n
        with torch.no_grad():
            samples = flow(probe, probe_mask).sample((4000,))[:, 0]
        expected_mean = probe[0, :n].sum(0) / (n + 1)
        expected_std = 1 / math.sqrt(n + 1)
        # 20% on the width (Monte Carlo: ~1%) and 0.35 posterior standard deviations on the
        # mean. A summary blind to n cannot pass both n = 1 (width 0.71) and n = 8 (0.33).
        torch.testing.assert_close(samples.std(0), torch.full((2,), expected_std), rtol=0.2, atol=0)
        assert float((samples.mean(0) - expected_mean).abs().max()) < 0.35 * expected_std


def test_standardize_is_built_from_a_shape_fitted_and_saved(tmp_path) -> None:
    import hybridflow as hf
    from hybridflow.summary import Sequential

    x = torch.randn(50, 3) * 4 + 2
    scaler = Standardize((3,))
    torch.testing.assert_close(scaler(x), x)  # identity until fitted
    assert scaler.fit(x) is scaler
    torch.testing.assert_close(scaler.mean, x.mean(0))
    # the documented NPE recipe (docs/sbi.md) saves and loads, statistics included
    flow = ConditionalFlow(
        coupling_flow(2, 4, depth=1, hidden=8),
        Sequential(Standardize.from_data(x), MLP(3, 4, hidden=8)),
        event_shape=(2,),
        observation_shape=(3,),
    )
    hf.save(flow, tmp_path / "npe.pt")
    loaded, _ = hf.load(tmp_path / "npe.pt")
    torch.testing.assert_close(loaded.summary[0].std, x.std(0))
    theta = torch.randn(5, 2)
    torch.testing.assert_close(loaded(x[:5]).log_prob(theta), flow(x[:5]).log_prob(theta))
    with pytest.raises(ValueError, match=r"shape \(2,\) do not match"):
        Standardize((3,)).fit(torch.randn(4, 2))
    with pytest.raises(TypeError, match="shape of one observation"):
        Standardize(torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="nn.Modules"):
        Sequential(lambda v: v)  # type: ignore[arg-type]
