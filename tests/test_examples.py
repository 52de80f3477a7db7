"""Every script in examples/ runs in a test; the shipped configs and the docs' code run too."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

from hybridflow.cli.recipe import build_flow, build_task, load_recipe
from hybridflow.sbi import simulate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# Each example and the test file that runs it (by calling its main or running the script).
RUN_BY = {
    "ddp_train.py": "test_ddp.py",
    "invertible_block_template.py": "test_template.py",
    "memory_budget.py": "test_examples.py",
    "own_summary_network.py": "test_examples.py",
    "physics_reverse_kl.py": "test_operators.py",
    "sbi_image_posterior.py": "test_sbi.py",
}


@pytest.fixture
def one_thread():
    """Small models train faster on one thread (and do not fight other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _example(name: str) -> dict:
    return runpy.run_path(str(EXAMPLES / name), run_name="example")


def test_every_example_is_run_by_a_test() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == sorted(RUN_BY), "add the new example to RUN_BY and to a test"
    for script, test in RUN_BY.items():
        source = (ROOT / "tests" / test).read_text()
        assert script.removesuffix(".py") in source, f"{test} does not run examples/{script}"


def test_memory_budget_example_orders_the_settings() -> None:
    # 64 px, 8 steps: store keeps 8.6 MB against 0.2 MB, far above the allocator's page-sized
    # noise in a fresh process's peak (at 16 px the two peaks were 0.26 and 0.14 MB, and flipped
    # under load)
    rows = _example("memory_budget.py")["main"](depth=8, size=64, batch=4, hidden=8, verbose=False)
    kept = {row["setting"]: row["saved_bytes"] for row in rows}
    assert kept["store"] > 10 * kept["invert"]
    assert kept["invert"] < kept["invert, anchor_every=4"] < kept["store"]
    assert kept["invert, micro_batches=4"] == kept["invert"]  # slices change backward only
    if sys.platform.startswith("linux"):
        peaks = {row["setting"]: row["peak_bytes"] for row in rows}
        assert all(peak > 0 for peak in peaks.values())
        assert peaks["store"] > peaks["invert"]


def test_own_summary_network_example_learns_the_exact_posterior(one_thread) -> None:
    result = _example("own_summary_network.py")["main"](verbose=False)
    exact = result["exact_std"]
    assert result["mean_error"] < exact
    assert result["std_error"] < 0.3 * exact


@pytest.mark.parametrize(
    "config", sorted(p.name for p in (EXAMPLES / "configs").iterdir()), ids=str
)
def test_shipped_configs_build_a_working_flow(config) -> None:
    if config.endswith((".yaml", ".yml")):
        pytest.importorskip("yaml", reason="YAML configs need PyYAML (the docs extra has it)")
    recipe = load_recipe(EXAMPLES / "configs" / config)
    task = build_task(recipe)
    flow = build_flow(recipe, task)
    members = getattr(flow, "members", [flow])  # a FlowEnsemble where the config asks for one
    assert len(members) == recipe["flow"]["ensemble"]
    assert all(m.transform.mode == recipe["flow"]["mode"] for m in members)
    data = simulate(task, 8, seed=0)
    log_q = flow(data.x).log_prob(data.theta)
    assert log_q.shape == (8,) and log_q.isfinite().all()
    log_q.mean().backward()
    assert all(p.grad is not None for p in flow.parameters() if p.requires_grad)


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


DOC_PAGES = [
    "errors.md",
    "getting-started.md",
    *(f"howto/{p.name}" for p in (ROOT / "docs/howto").glob("*.md")),
]


@pytest.mark.parametrize("page", sorted(DOC_PAGES))
def test_doc_page_code_runs(page, one_thread) -> None:
    blocks = _python_blocks(ROOT / "docs" / page)
    assert blocks, f"docs/{page} shows no python code"
    namespace: dict = {}
    torch.manual_seed(0)
    for block in blocks:
        if "--8<--" in block:  # an included example: it runs in its own test (RUN_BY)
            included = re.search(r'--8<-- "examples/([^"]+)"', block)
            assert included and included.group(1) in RUN_BY, block
            continue
        exec(compile(block, f"docs/{page}", "exec"), namespace)
