"""Simulation-based inference: tasks, neural posterior estimation against known posteriors,
resumable training, reverse-KL training, metrics, bad input, the example and the benchmark."""

from __future__ import annotations

import math
import pickle
import runpy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

from hybridflow.distributions import ConditionalFlow, coupling_flow
from hybridflow.errors import FileFormatError
from hybridflow.operators import Convolution
from hybridflow.sbi import (
    SLCP,
    DigitsInverseProblem,
    GaussianLinear,
    LeakageWarning,
    LinearInverseProblem,
    NonFiniteSimulationWarning,
    NPEConfig,
    NPETrainer,
    ReverseKLConfig,
    ReverseKLTrainer,
    TwoMoons,
    c2st,
    check_simulations,
    expected_coverage,
    load_checkpoint,
    moment_errors,
    sample_posterior,
    save_checkpoint,
    sbc,
    simulate,
)
from hybridflow.summary import Standardize

ROOT = Path(__file__).resolve().parents[1]


def _posterior_checks(task, flow: ConditionalFlow):
    """For observations 0 and 1 of ``task``: the index, the observation, 4000 draws of the
    flow's posterior and their moment errors against the task's exact posterior."""
    for index in (0, 1):
        _, x_o = task.observation(index)
        with torch.no_grad():
            samples = flow(x_o).sample((4000,))
        mean, covariance = task.posterior_moments(x_o[None])
        yield index, x_o, samples, moment_errors(samples, mean[0], covariance)


def _vector_flow(task, data, depth: int = 3, hidden: int = 64, **kwargs) -> ConditionalFlow:
    d = math.prod(task.theta_shape)
    k = math.prod(task.x_shape)
    return ConditionalFlow(
        coupling_flow(d, k, depth=depth, hidden=hidden, **kwargs),
        Standardize.from_data(data.x),
        event_shape=task.theta_shape,
        observation_shape=task.x_shape,
    )


# -- tasks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [TwoMoons(), GaussianLinear(4), SLCP()], ids=lambda t: t.name)
def test_tasks_are_reproducible_and_shaped(task) -> None:
    theta, x = task.sample_joint(16, torch.Generator().manual_seed(3))
    again = task.sample_joint(16, torch.Generator().manual_seed(3))
    assert theta.shape == (16, *task.theta_shape) and x.shape == (16, *task.x_shape)
    assert torch.equal(theta, again[0]) and torch.equal(x, again[1])
    assert torch.isfinite(task.prior.log_prob(theta)).all()
    _, x_o = task.observation(2)
    assert torch.equal(x_o, task.observation(2)[1]) and not torch.equal(x_o, task.observation(3)[1])
    with pytest.raises(ValueError, match="parameters must have shape"):
        task.simulate(torch.zeros(3, 7))


def test_two_moons_reference_posterior_is_the_exact_posterior() -> None:
    """The rejection sampler against the posterior computed on a grid from the likelihood:
    p(x | theta) = p_moon(x - g(theta)), the moon point's density in polar coordinates,
    N(r; 0.1, 0.01^2) / (pi r) for angles in (-pi/2, pi/2)."""
    task = TwoMoons(torch.float64)
    _, x_o = task.observation(0)
    samples = task.reference_posterior(x_o, 200_000, torch.Generator().manual_seed(0))
    grid = torch.linspace(-1, 1, 801, dtype=torch.float64)
    theta = torch.cartesian_prod(grid, grid)
    u, v = theta.sum(1), theta[:, 1] - theta[:, 0]
    p = x_o - torch.stack([-u.abs() / math.sqrt(2), v / math.sqrt(2)], 1)
    radius = torch.hypot(p[:, 0] - 0.25, p[:, 1])
    density = torch.exp(-0.5 * ((radius - 0.1) / 0.01) ** 2) / radius * (p[:, 0] > 0.25)
    weights = density / density.sum()
    grid_mean = weights @ theta
    grid_second = (weights[:, None] * theta).T @ theta
    torch.testing.assert_close(samples.mean(0), grid_mean, atol=0.01, rtol=0)
    torch.testing.assert_close(samples.T @ samples / len(samples), grid_second, atol=0.01, rtol=0)
    assert (samples.abs() <= 1).all()


def test_linear_gaussian_posterior_is_stationary_for_the_log_joint() -> None:
    """The closed-form posterior mean must zero the gradient of log p(x | theta) + log p(theta),
    computed through the blur operator's hand-written adjoint; the covariance must be minus
    the inverse Hessian."""
    kernel = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    task = LinearInverseProblem(
        Convolution(kernel, in_shape=(6,), boundary="zero"), 1.0, 0.2, torch.float64
    )
    _, x_o = task.observation(0)
    mean, covariance = task.posterior_moments(x_o[None])
    theta = mean.clone().requires_grad_(True)
    log_joint = task.log_likelihood(theta, x_o[None]) + task.log_prior(theta)
    (grad,) = torch.autograd.grad(log_joint.sum(), theta)
    assert float(grad.abs().max()) < 1e-9
    hessian = torch.autograd.functional.hessian(
        lambda t: (task.log_likelihood(t[None], x_o[None]) + task.log_prior(t[None])).sum(), mean[0]
    )
    torch.testing.assert_close(-torch.linalg.inv(hessian), covariance)
    gl = GaussianLinear(3, torch.float64)
    m, c = gl.posterior_moments(torch.ones(2, 3, dtype=torch.float64))
    torch.testing.assert_close(m, torch.full((2, 3), 0.5, dtype=torch.float64))
    torch.testing.assert_close(c, 0.05 * torch.eye(3, dtype=torch.float64))


def test_slcp_likelihood_and_reference() -> None:
    task = SLCP(torch.float64)
    theta, x = task.sample_joint(4, torch.Generator().manual_seed(0))
    expected = []
    for t, obs in zip(theta, x, strict=True):
        s1, s2, rho = t[2] ** 2, t[3] ** 2, torch.tanh(t[4])
        cov = torch.stack(
            [torch.stack([s1**2, rho * s1 * s2]), torch.stack([rho * s1 * s2, s2**2])]
        )
        cov = cov + 1e-6 * torch.eye(2, dtype=torch.float64)
        expected.append(MultivariateNormal(t[:2], cov).log_prob(obs.reshape(4, 2)).sum())
    torch.testing.assert_close(task.log_likelihood(theta, x), torch.stack(expected))
    truth, x_o = task.observation(0)
    samples = task.reference_posterior(x_o, 2000, torch.Generator().manual_seed(0), chains=200)
    assert samples.shape == (2000, 5) and (samples.abs() <= 3).all()
    # Sign symmetry of theta_3 and theta_4: the four modes have equal mass.
    assert abs(float((samples[:, 2] > 0).double().mean()) - 0.5) < 0.05
    # The posterior concentrates the mean parameters near the truth (4 draws, scale |theta_3|^2).
    assert float((samples[:, :2].mean(0) - truth[:2]).abs().max()) < 1.5


def test_digits_task() -> None:
    for kind in ("deblur", "inpaint"):
        task = DigitsInverseProblem(kind)
        theta, x = task.sample_joint(8, torch.Generator().manual_seed(0))
        assert theta.shape == x.shape == (8, 1, 8, 8)
        assert (theta > 0).all() and (theta < 1).all()
        assert torch.isfinite(task.prior.log_prob(theta)).all()
        truth, _ = task.observation(0)
        assert torch.equal(truth, task.observation(0)[0])
    assert (x.flatten(1)[:, ~task.mask.flatten()] == 0).all()  # inpainting: missing pixels
    with pytest.raises(ValueError, match="kind must be"):
        DigitsInverseProblem("denoise")  # type: ignore[arg-type]


# -- neural posterior estimation against known posteriors ---------------------------------


def test_npe_gaussian_linear_matches_the_analytic_posterior() -> None:
    r"""10-D Gaussian linear task, posterior N(x / 2, 0.05 I).

    Tolerances: for two Gaussians of equal covariance whose means differ by delta posterior
    standard deviations, the best classifier's accuracy is Phi(delta / 2); a mean error of 0.4
    standard deviations alone gives a C2ST of 0.58, consistent with the required C2ST < 0.6.
    A relative error of 15% in a marginal width, and 20% (Frobenius) in the covariance, are of
    the same size. Monte Carlo error of 4000 samples is far below (~0.04 and ~0.02)."""
    torch.manual_seed(0)
    task = GaussianLinear(10)
    data = simulate(task, 40_000, seed=0)
    flow = ConditionalFlow(
        coupling_flow(10, 10, depth=3, hidden=64, coupling="affine"),  # the default was affine
        event_shape=(10,),
        observation_shape=(10,),
    )
    config = NPEConfig(max_epochs=6, batch_size=512, learning_rate=2e-3, schedule="cosine")
    history = NPETrainer(flow, config).fit(data.theta, data.x)
    assert history.validation_loss[-1] < history.validation_loss[0]
    for index, x_o, samples, errors in _posterior_checks(task, flow):
        assert errors.mean_error < 0.4, errors
        assert errors.std_error < 0.15, errors
        assert errors.covariance_error < 0.2, errors
        reference = task.reference_posterior(x_o, 2000, torch.Generator().manual_seed(index))
        assert c2st(reference, samples[:2000], recipe="fast") < 0.6


def test_npe_two_moons_c2st() -> None:
    torch.manual_seed(0)
    task = TwoMoons()
    data = simulate(task, 10_000, seed=0)
    flow = _vector_flow(task, data, depth=4, coupling="spline")
    config = NPEConfig(max_epochs=10, batch_size=256, learning_rate=2e-3, schedule="cosine")
    NPETrainer(flow, config).fit(data.theta, data.x)
    for index in (0, 1):
        _, x_o = task.observation(index)
        samples = sample_posterior(flow, x_o, 2000, prior=task.prior)
        assert (samples.abs() <= 1).all()
        reference = task.reference_posterior(x_o, 2000, torch.Generator().manual_seed(index))
        assert c2st(reference, samples, recipe="fast") < 0.7


# -- checkpoints and resuming --------------------------------------------------------------


def _small_setup(seed: int = 0) -> tuple[ConditionalFlow, object]:
    task = GaussianLinear(2)
    data = simulate(task, 600, seed=1)
    torch.manual_seed(seed)
    return _vector_flow(task, data, depth=2, hidden=16), data


def _config(**kwargs) -> NPEConfig:
    settings = dict(
        max_epochs=6, batch_size=64, schedule="plateau", schedule_patience=1, patience=3
    )
    settings.update(kwargs)
    return NPEConfig(**settings)


def test_resumed_training_equals_uninterrupted_training(tmp_path: Path) -> None:
    flow_a, data = _small_setup()
    history_a = NPETrainer(flow_a, _config(), checkpoint=tmp_path / "a.pt").fit(data.theta, data.x)

    class Interrupt(Exception):
        pass

    def stop_at_three(record) -> None:
        if record.epoch == 3:
            raise Interrupt

    flow_b, _ = _small_setup()
    with pytest.raises(Interrupt):
        NPETrainer(flow_b, _config(), checkpoint=tmp_path / "b.pt").fit(
            data.theta, data.x, on_epoch_end=stop_at_three
        )
    assert load_checkpoint(tmp_path / "b.pt")["history"]["train_loss"].__len__() == 3
    flow_c, _ = _small_setup(seed=123)  # other initial parameters: the checkpoint wins
    history_c = NPETrainer(flow_c, _config(), checkpoint=tmp_path / "b.pt").fit(
        data.theta, data.x, resume=True
    )
    assert history_c.train_loss == history_a.train_loss
    assert history_c.validation_loss == history_a.validation_loss
    assert history_c.best_epoch == history_a.best_epoch
    for (name, a), (_, c) in zip(
        flow_a.state_dict().items(), flow_c.state_dict().items(), strict=True
    ):
        assert torch.equal(a, c), name


def test_resume_refuses_other_settings_or_data(tmp_path: Path) -> None:
    flow, data = _small_setup()
    path = tmp_path / "run.pt"
    NPETrainer(flow, _config(max_epochs=2), checkpoint=path).fit(data.theta, data.x)
    with pytest.raises(ValueError, match="learning_rate"):
        NPETrainer(flow, _config(max_epochs=2, learning_rate=1e-2), checkpoint=path).fit(
            data.theta, data.x, resume=True
        )
    with pytest.raises(ValueError, match="another data set"):
        NPETrainer(flow, _config(max_epochs=2), checkpoint=path).fit(
            data.theta[:-1], data.x[:-1], resume=True
        )
    with pytest.raises(ValueError, match="checkpoint path"):
        NPETrainer(flow, _config()).fit(data.theta, data.x, resume=True)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "weights": torch.arange(3.0)}, path)
    before = path.read_bytes()

    def broken_save(obj, file, *args, **kwargs) -> None:
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left


class _Pickled:
    pass


def test_checkpoints_never_unpickle_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"object": _Pickled()}, path)
    with pytest.raises(FileFormatError, match="evil.pt is refused") as info:
        load_checkpoint(path)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)  # torch refused it first
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def test_reverse_kl_resumes_exactly(tmp_path: Path) -> None:
    task = LinearInverseProblem(Convolution(torch.tensor([0.3, 0.4, 0.3]), in_shape=(4,)), 1.0, 0.3)
    config = ReverseKLConfig(steps=12, batch_size=8, num_samples=2, checkpoint_every=4)

    def flow() -> ConditionalFlow:
        torch.manual_seed(0)
        return ConditionalFlow(coupling_flow(4, 4, depth=2, hidden=8), event_shape=(4,))

    full = flow()
    history = ReverseKLTrainer(full, task, config, checkpoint=tmp_path / "a.pt").fit()

    def stop(step: int, loss: float) -> None:
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ReverseKLTrainer(flow(), task, config, checkpoint=tmp_path / "b.pt").fit(on_step_end=stop)
    resumed = flow()
    again = ReverseKLTrainer(resumed, task, config, checkpoint=tmp_path / "b.pt").fit(resume=True)
    assert again.loss == history.loss
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


# -- physics-based (reverse-KL) training ---------------------------------------------------


def test_reverse_kl_learns_a_deblurring_posterior() -> None:
    """Amortized over observations of a blurred 6-sample signal, trained only from the
    likelihood through the operator's adjoint; compared with the closed-form posterior."""
    torch.manual_seed(0)
    kernel = torch.tensor([0.25, 0.5, 0.25])
    task = LinearInverseProblem(Convolution(kernel, in_shape=(6,), boundary="zero"), 1.0, 0.3)
    flow = ConditionalFlow(
        coupling_flow(6, 6, depth=3, hidden=64), event_shape=(6,), observation_shape=(6,)
    )
    config = ReverseKLConfig(steps=600, batch_size=64, num_samples=4, learning_rate=2e-3)
    history = ReverseKLTrainer(flow, task, config).fit()
    assert sum(history.loss[-50:]) / 50 < sum(history.loss[:50]) / 50
    for _, _, _, errors in _posterior_checks(task, flow):
        # Reverse KL fits a Gaussian posterior from the likelihood alone; tolerances as in the
        # NPE test (a 0.4-standard-deviation mean error alone means a C2ST of 0.58).
        assert errors.mean_error < 0.4, errors
        assert errors.std_error < 0.2, errors


def test_reverse_kl_refuses_tasks_without_likelihood() -> None:
    flow = ConditionalFlow(coupling_flow(2, 2, depth=1, hidden=4), event_shape=(2,))
    with pytest.raises(ValueError, match="no differentiable likelihood"):
        ReverseKLTrainer(flow, TwoMoons())
    task = GaussianLinear(2)
    with pytest.raises(ValueError, match=r"observations must have shape \(B, 2\)"):
        ReverseKLTrainer(flow, task).fit(torch.zeros(3, 5))


# -- bad input -------------------------------------------------------------------------------


def test_nonfinite_simulations_are_dropped_with_a_count_or_refused() -> None:
    theta = torch.randn(10, 2)
    x = torch.randn(10, 3)
    x[2, 1] = math.nan
    theta[7, 0] = math.inf
    with pytest.warns(NonFiniteSimulationWarning, match="dropped 2 of 10"):
        data = check_simulations(theta, x)
    assert len(data) == 8 and data.dropped == 2 and torch.isfinite(data.x).all()
    with pytest.raises(ValueError, match="2 of 10 simulations have NaN/Inf"):
        check_simulations(theta, x, nonfinite="raise")
    with pytest.raises(ValueError, match="all 1 simulations"):
        check_simulations(theta[2:3], x[2:3])
    flow, _ = _small_setup()
    bad_x = torch.randn(64, 2)
    bad_x[5] = math.nan
    with pytest.warns(NonFiniteSimulationWarning, match="dropped 1 of 64"):
        history = NPETrainer(flow, _config(max_epochs=1)).fit(torch.randn(64, 2), bad_x)
    assert history.dropped == 1
    with pytest.raises(ValueError, match="NaN/Inf"):
        NPETrainer(flow, _config(max_epochs=1, nonfinite="raise")).fit(torch.randn(64, 2), bad_x)


def test_empty_and_mismatched_data_sets_are_refused() -> None:
    flow, _ = _small_setup()
    trainer = NPETrainer(flow, _config(max_epochs=1))
    with pytest.raises(ValueError, match="empty"):
        trainer.fit(torch.zeros(0, 2), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="theta has 5 rows"):
        trainer.fit(torch.zeros(5, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="leave none for training"):
        trainer.fit(torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="num_simulations"):
        simulate(GaussianLinear(2), 0)
    with pytest.raises(ValueError, match="batch_size"):
        NPEConfig(batch_size=0)
    with pytest.raises(ValueError, match="validation_fraction"):
        NPEConfig(validation_fraction=1.0)


def test_observations_of_the_wrong_shape_are_refused() -> None:
    flow, _ = _small_setup()
    with pytest.raises(
        ValueError, match=r"observation of shape \(3,\) does not match observation_shape \(2,\)"
    ):
        flow(torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        sample_posterior(flow, torch.zeros(4, 3), 10)
    with pytest.raises(ValueError, match="one observation"):
        sample_posterior(flow, torch.zeros(4, 2), 10)
    with pytest.raises(ValueError, match="x_o must have shape"):
        TwoMoons().reference_posterior(torch.zeros(3), 10)


def test_sample_posterior_warns_about_leakage() -> None:
    torch.manual_seed(0)
    task = TwoMoons()
    flow = ConditionalFlow(coupling_flow(2, 2, depth=1, hidden=4), event_shape=(2,))
    narrow = torch.distributions.Independent(
        torch.distributions.Uniform(torch.full((2,), -0.3), torch.full((2,), 0.3)), 1
    )
    with pytest.warns(LeakageWarning, match="inside the prior"):
        samples = sample_posterior(flow, task.observation(0)[1][None], 500, prior=narrow)
    assert (samples.abs() <= 0.3).all()


# -- metrics ---------------------------------------------------------------------------------


def test_c2st_detects_differences() -> None:
    g = torch.Generator().manual_seed(0)
    same = c2st(torch.randn(1000, 3, generator=g), torch.randn(1000, 3, generator=g), recipe="fast")
    shifted = c2st(
        torch.randn(1000, 3, generator=g), torch.randn(1000, 3, generator=g) + 1.5, recipe="fast"
    )
    assert same < 0.56
    assert shifted > 0.8
    with pytest.raises(ValueError, match="must match"):
        c2st(torch.randn(10, 2), torch.randn(10, 3))


class _GaussianPosterior(nn.Module):
    """The exact posterior of GaussianLinear, its width scaled by ``scale``."""

    def __init__(self, task: GaussianLinear, scale: float) -> None:
        super().__init__()
        self.task, self.scale = task, scale

    def forward(self, x):
        mean, covariance = self.task.posterior_moments(x)
        return MultivariateNormal(mean.float(), (self.scale**2 * covariance).float())


def test_sbc_and_coverage_tell_calibrated_from_overconfident() -> None:
    task = GaussianLinear(3)
    data = simulate(task, 500, seed=4)
    torch.manual_seed(0)
    exact = _GaussianPosterior(task, 1.0)
    calibrated = sbc(exact, data.theta, data.x, 50)
    assert calibrated.ranks.shape == (500, 3) and int(calibrated.ranks.max()) <= 50
    assert calibrated.min_pvalue > 0.01
    assert expected_coverage(exact, data.theta, data.x, 100).max_error < 0.08
    overconfident = _GaussianPosterior(task, 0.5)
    assert sbc(overconfident, data.theta, data.x, 50).min_pvalue < 1e-6
    coverage = expected_coverage(overconfident, data.theta, data.x, 100)
    assert coverage.max_error > 0.25 and (coverage.coverage <= coverage.levels + 0.02).all()


def test_sbc_of_the_exact_ten_dimensional_posterior_rejects_at_most_its_level() -> None:
    """At the benchmark's size (Gaussian linear's 10 dimensions, 1000 pairs, 100 draws, KS
    with Bonferroni), the exact posterior's ranks are rejected at the 5% level in at most 5%
    of the pair sets (Bonferroni: fewer), so a rejected flow is not the test's doing."""
    task = GaussianLinear()
    exact = _GaussianPosterior(task, 1.0)
    torch.manual_seed(0)
    pvalues = [
        sbc(exact, data.theta, data.x, 100, seed=seed).min_pvalue
        for seed, data in ((s, simulate(task, 1000, seed=2000 + s)) for s in range(12))
    ]
    assert sum(p < 0.05 for p in pvalues) <= 2, pvalues
    shifted = _ShiftedPosterior(task, 0.2)  # a bias of a fifth of the posterior's width
    data = simulate(task, 1000, seed=1999)
    assert sbc(shifted, data.theta, data.x, 100).min_pvalue < 1e-3


class _ShiftedPosterior(_GaussianPosterior):
    """The exact posterior of GaussianLinear, its mean moved by ``shift`` posterior widths."""

    def __init__(self, task: GaussianLinear, shift: float) -> None:
        super().__init__(task, 1.0)
        self.shift = shift

    def forward(self, x):
        mean, covariance = self.task.posterior_moments(x)
        mean = mean + self.shift * covariance.diagonal().sqrt()
        return MultivariateNormal(mean.float(), covariance.float())


# -- the example, the benchmark, the doc page, the sbi package ----------------------------


def test_image_example_trains_a_conditional_glow_and_writes_pngs(tmp_path: Path) -> None:
    example = runpy.run_path(str(ROOT / "examples" / "sbi_image_posterior.py"), run_name="example")
    flow = example["build_flow"](2, 1, 8, 4, 0)
    assert flow.transform.mode == "invert"
    result = example["main"](
        tmp_path / "out",
        simulations=600,
        epochs=2,
        depth=1,
        hidden=16,
        observations=2,
        posterior_samples=16,
        sbc_pairs=20,
        sbc_samples=10,
        verbose=False,
    )
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["posterior_mean.png", "posterior_std.png", "sbc_ranks.png"]
    for path in result["files"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = result["history"]
    assert history.validation_loss[-1] < history.validation_loss[0]
    assert 0.0 <= result["sbc_min_pvalue"] <= 1.0
    assert 0.0 <= result["coverage_max_error"] <= 1.0


def test_benchmark_script_runs_small(tmp_path: Path) -> None:
    bench = runpy.run_path(str(ROOT / "benchmarks" / "sbi_c2st.py"), run_name="bench")
    rows = bench["main"](
        [
            "--tasks", "two_moons", "--simulations", "300", "--epochs", "1",
            "--observations", "1", "--samples", "300", "--out", str(tmp_path / "c2st.csv"),
        ]
    )  # fmt: skip
    assert len(rows) == 1 and 0.5 <= rows[0]["c2st"] <= 1.0
    assert (tmp_path / "c2st.csv").read_text().startswith("task,")


def test_doc_page_examples_run() -> None:
    text = (ROOT / "docs" / "sbi.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/sbi.md", "exec"), namespace)


class _NullTracker:
    """sbi's Tracker protocol, recording nothing (sbi's default writes TensorBoard logs)."""

    log_dir = None

    def log_metric(self, name, value, step=None) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_params(self, params) -> None:
        pass

    def add_figure(self, name, figure, step=None) -> None:
        pass

    def flush(self) -> None:
        pass


@pytest.mark.filterwarnings("ignore:Maximum number of epochs:UserWarning")
def test_sbi_package_adapter() -> None:
    pytest.importorskip("sbi", reason="the sbi package is an optional dependency")
    from sbi.inference import NPE
    from sbi.utils import BoxUniform

    from hybridflow.sbi import sbi_density_estimator

    torch.manual_seed(0)
    task = GaussianLinear(2)
    data = simulate(task, 500, seed=0)
    prior = BoxUniform(-3 * torch.ones(2), 3 * torch.ones(2))
    inference = NPE(
        prior,
        density_estimator=sbi_density_estimator(depth=2, hidden=16),
        tracker=_NullTracker(),
        show_progress_bars=False,
    )
    estimator = inference.append_simulations(data.theta, data.x).train(
        max_num_epochs=30, show_train_summary=False
    )
    assert estimator.loss(data.theta[:5], data.x[:5]).shape == (5,)
    posterior = inference.build_posterior(estimator)
    _, x_o = task.observation(0)
    samples = posterior.sample((50,), x=x_o, show_progress_bars=False)
    assert samples.shape == (50, 2)
    assert torch.isfinite(posterior.log_prob(samples, x=x_o)).all()


def test_a_trained_flow_is_left_in_eval_mode_so_dropout_does_not_blur_its_samples():
    from hybridflow.summary import MLP

    torch.manual_seed(0)
    flow = ConditionalFlow(
        coupling_flow(2, 4, depth=1, hidden=8), MLP(3, 4, dropout=0.5), event_shape=(2,)
    )
    theta, x = torch.randn(64, 2), torch.randn(64, 3)
    NPETrainer(flow, NPEConfig(max_epochs=1, batch_size=32, progress=False)).fit(theta, x)
    assert not flow.training and not any(m.training for m in flow.modules())
    with torch.no_grad():
        first, second = (flow(x[:4]).log_prob(theta[:4]) for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # no dropout mask drawn
