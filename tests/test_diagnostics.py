"""Diagnostics: C2ST against sbibm's reference recipe, TARP, SBC and coverage plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hybridflow.sbi import c2st

KNOWN_C2ST = 0.56  # sbibm's recipe on _known_case(), computed once with _sbibm_c2st


def _sbibm_c2st(x: torch.Tensor, y: torch.Tensor, seed: int = 1, n_folds: int = 5) -> float:
    """sbibm 1.1's ``sbibm.metrics.c2st`` (z_score=True, noise_scale=None), transcribed."""
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    x_mean, x_std = torch.mean(x, dim=0), torch.std(x, dim=0)
    x, y = (x - x_mean) / x_std, (y - x_mean) / x_std
    ndim = x.shape[1]
    clf = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(10 * ndim, 10 * ndim),
        max_iter=10000,
        solver="adam",
        random_state=seed,
    )
    data = np.concatenate((x.numpy(), y.numpy()))
    target = np.concatenate((np.zeros((x.shape[0],)), np.ones((y.shape[0],))))
    shuffle = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    scores = cross_val_score(clf, data, target, cv=shuffle, scoring="accuracy")
    return float(np.asarray(np.mean(scores)).astype(np.float32))


def _known_case() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    p = torch.randn(300, 2, generator=g)
    q = torch.randn(300, 2, generator=g) * torch.tensor([1.0, 1.3]) + torch.tensor([0.3, 0.0])
    return p, q


def test_c2st_matches_sbibm_on_a_fixed_case() -> None:
    p, q = _known_case()
    ours = c2st(p, q)
    assert ours == pytest.approx(_sbibm_c2st(p, q), abs=1e-6)
    # the value computed once with sbibm's recipe (scikit-learn 1.9.1)
    assert ours == pytest.approx(KNOWN_C2ST, abs=0.01)
    assert abs(c2st(p, q, recipe="fast") - ours) < 0.1
    with pytest.raises(ValueError, match="recipe must be"):
        c2st(p, q, recipe="zuko")  # type: ignore[arg-type]


def _gaussian_posterior_samples(scale: float, n: int = 400, sims: int = 400):
    """Prior N(0, 1), x ~ N(theta, 1): posterior N(x / 2, 1/2). ``scale`` multiplies the
    posterior's standard deviation (1: exact, < 1 overconfident)."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(sims, 2, generator=g)
    x = theta + torch.randn(sims, 2, generator=g)
    std = scale * 0.5**0.5
    samples = x / 2 + std * torch.randn(n, sims, 2, generator=g)
    return samples, theta


def test_tarp_is_calibrated_for_the_exact_posterior_and_not_for_a_narrow_one() -> None:
    from hybridflow.sbi import tarp

    exact = tarp(*_gaussian_posterior_samples(1.0))
    # 400 simulations: the coverage's standard error is at most 0.025 per level
    assert exact.max_error < 0.09, exact.coverage
    assert exact.fractions.shape == (400,)
    narrow = tarp(*_gaussian_posterior_samples(0.5))
    assert narrow.max_error > 0.14  # TARP is less sensitive than HPD coverage: 0.19 here
    wide = tarp(*_gaussian_posterior_samples(2.0))
    assert (wide.coverage[5:15] > wide.levels[5:15] + 0.05).all()  # conservative: above
    with pytest.raises(ValueError, match=r"expected samples \(n, N, \*event\)"):
        tarp(torch.randn(10, 5, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="levels must lie"):
        tarp(torch.randn(10, 5, 2), torch.randn(5, 2), levels=[0.0, 0.5])


def test_tarp_of_a_trained_flow_runs_on_batches() -> None:
    from hybridflow.distributions import ConditionalFlow, coupling_flow
    from hybridflow.sbi import GaussianLinear, simulate, tarp_coverage

    task = GaussianLinear(2)
    data = simulate(task, 50, seed=0)
    flow = ConditionalFlow(coupling_flow(2, 2, depth=1, hidden=4), event_shape=(2,))
    result = tarp_coverage(flow, data.theta, data.x, num_posterior_samples=20, batch_size=16)
    assert result.coverage.shape == (19,) and result.fractions.shape == (50,)


def test_sbc_rank_figure_and_coverage_figure_draw_what_they_are_given(tmp_path) -> None:
    from hybridflow.sbi import coverage_figure, sbc_rank_figure

    g = torch.Generator().manual_seed(0)
    ranks = torch.randint(0, 101, (200, 2), generator=g)
    figure = sbc_rank_figure(ranks, 100, bins=10, names=["a", "b"])
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == ["a", "b"]
    for i, ax in enumerate(axes):
        heights = [bar.get_height() for bar in ax.containers[0]]
        expected, _ = np.histogram(ranks[:, i].numpy(), bins=np.linspace(-0.5, 100.5, 11))
        assert heights == expected.tolist()
    path = tmp_path / "sbc.png"
    figure.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    levels = torch.tensor([0.25, 0.5, 0.75])
    curves = {
        "HPD": torch.tensor([0.2, 0.45, 0.7], dtype=torch.float64),
        "TARP": torch.tensor([0.3, 0.5, 0.8], dtype=torch.float64),
    }
    figure = coverage_figure(levels, curves, title="two moons")
    (ax,) = figure.get_axes()
    lines = {line.get_label(): line.get_ydata().tolist() for line in ax.get_lines()}
    assert lines["HPD"] == [0.2, 0.45, 0.7] and lines["TARP"] == [0.3, 0.5, 0.8]
    assert lines["calibrated"] == [0, 1] and ax.get_title() == "two moons"
    figure.savefig(tmp_path / "coverage.pdf")
    assert (tmp_path / "coverage.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="ranks must be"):
        sbc_rank_figure(torch.zeros(5), 10)


def test_demo_picture_has_colour_bars_error_map_and_title(tmp_path, monkeypatch) -> None:
    import hybridflow.cli.figures as figures

    captured = {}
    real = figures.save_figure

    def keep(figure, path):
        captured["figure"] = figure
        return real(figure, path)

    monkeypatch.setattr(figures, "save_figure", keep)
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 1, 4, 4, generator=g)
    samples = truth + 0.1 * torch.randn(5, 2, 1, 4, 4, generator=g)
    path = figures.image_posterior(truth, samples, tmp_path / "p.png", truth, shown_samples=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure = captured["figure"]
    assert figure._suptitle.get_text() == "Posterior samples, mean and spread"
    labels = [ax.get_ylabel() for ax in figure.get_axes() if ax.get_ylabel()]
    assert labels[-3:] == ["intensity", "error", "posterior std"]  # the colour bars
    titled = {ax.get_title(): ax for ax in figure.get_axes() if ax.get_title()}
    shown = titled["|mean - truth|"].get_images()[0].get_array()
    np.testing.assert_allclose(shown, (samples.mean(0) - truth)[0, 0].abs().numpy(), rtol=1e-6)

    from hybridflow.sbi import NPEHistory

    history = NPEHistory(train_loss=[1.0, 0.5], validation_loss=[1.1, 0.6], best_epoch=2)
    figures.training_curve(history, tmp_path / "curve.png")
    (ax,) = captured["figure"].get_axes()
    assert "nats per simulation" in ax.get_ylabel() and "epoch" in ax.get_xlabel()
