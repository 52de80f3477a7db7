"""mode="auto": a chain stores when what plain autograd keeps is small and inverts otherwise,
with the gradients, random draws and state of the mode it chose, and says why."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import NoisyCoupling, flow_loss, glow_chain

import hybridflow as hf
from hybridflow.autograd import chains_in_mode
from hybridflow.autograd.auto_mode import DEFAULT_STORE_LIMIT
from hybridflow.config import from_config, get_config
from hybridflow.distributions import ConditionalFlow, coupling_flow
from hybridflow.layers import ActNorm, AffineCoupling
from hybridflow.summary import MLP

RECONSTRUCTING = "ReconstructingFunctionBackward"


def _gradients(chain, x, cond=None):
    for p in chain.parameters():
        p.grad = None
    x = x.clone().requires_grad_()
    flow_loss(*chain(x, cond)).backward()
    return [x.grad, *(p.grad for p in chain.parameters())]


def _runs_reconstructing(chain, x, cond=None) -> bool:
    y, _ = chain(x.clone().requires_grad_(), cond)
    return y.grad_fn.name() == RECONSTRUCTING


def test_a_vector_flow_stores_and_its_gradients_are_plain_autograds():
    chain = coupling_flow(3, 4, depth=3, hidden=16).double()
    assert chain.mode == "auto"  # coupling_flow's default
    x, cond = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 4, dtype=torch.float64)
    chain(x, cond)  # ActNorm's initialisation
    assert not _runs_reconstructing(chain, x, cond)
    choice = chain.mode_choice
    assert choice.mode == "store" and choice.batch == 64 and choice.limit == DEFAULT_STORE_LIMIT
    auto = _gradients(chain, x, cond)
    chain.mode = "store"
    for a, b in zip(auto, _gradients(chain, x, cond), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_over_the_limit_it_inverts_with_the_gradients_of_store_mode():
    chain = glow_chain(2, 3, "auto", spatial_dims=2, squeeze=True, store_limit=1024).double()
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    assert _runs_reconstructing(chain, x)
    assert chain.mode_choice.mode == "invert" and chain.mode_choice.kept_bytes > 1024
    auto = _gradients(chain, x)
    chain.mode = "store"
    for a, b in zip(auto, _gradients(chain, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_choice_follows_the_batch_and_the_estimate_is_measured_once():
    chain = glow_chain(2, 2, "auto", spatial_dims=0)
    chain(torch.randn(8, 2))
    estimate = chain.mode_choice.estimate
    assert estimate.per_sample > 0 and estimate.probed == (2, 4)
    # a limit between what 8 and 512 samples keep: store for the one, invert for the other
    limit = int(estimate.at(64))
    chain = glow_chain(2, 2, "auto", spatial_dims=0, store_limit=limit)
    assert not _runs_reconstructing(chain, torch.randn(8, 2))
    first = chain.mode_choice.estimate
    assert _runs_reconstructing(chain, torch.randn(512, 2))
    assert chain.mode_choice.estimate is first  # the same input signature: no new probe
    assert chain.mode_choice.kept_bytes == pytest.approx(first.at(512))
    assert chain.mode_choice.kept_bytes > limit
    chain.double()(torch.randn(8, 2, dtype=torch.float64))
    assert chain.mode_choice.estimate is not first  # another dtype: measured again


def test_train_and_eval_mode_are_estimated_apart():
    # dropout in the conditioner keeps its masks for backward in training only
    def subnet(n_in, n_out):
        return torch.nn.Sequential(
            torch.nn.Linear(n_in, 32), torch.nn.Dropout(0.5), torch.nn.Linear(32, n_out)
        )

    chain = hf.Chain(AffineCoupling(4, subnet=subnet), mode="auto")
    x = torch.randn(8, 4)
    chain(x)
    training = chain.mode_choice.estimate
    chain.eval()(x)
    evaluating = chain.mode_choice.estimate
    assert evaluating is not training and evaluating.per_sample < training.per_sample
    chain.train()(x)
    assert chain.mode_choice.estimate is training


def test_appending_layers_measures_again():
    chain = hf.Chain(AffineCoupling(4, hidden=8), mode="auto")
    x = torch.randn(8, 4)
    chain(x)
    one = chain.mode_choice.estimate
    chain.layers.append(AffineCoupling(4, hidden=8))
    chain(x)
    two = chain.mode_choice.estimate
    assert two is not one and two.per_sample > 1.5 * one.per_sample
    del chain.layers[1]
    chain(x)
    assert chain.mode_choice.estimate is one


@pytest.mark.parametrize(("limit", "chosen"), [("unlimited", "store"), (0, "invert")])
def test_the_probe_leaves_data_init_and_the_random_state_as_they_were(limit, chosen):
    """ActNorm initialises from the real batch and the generator advances as in the mode
    chosen: the probe's own runs leave no trace."""
    x = torch.randn(16, 3)
    chains = {
        "auto": glow_chain(3, 2, "auto", spatial_dims=0, perturb=0.0, store_limit=limit),
        chosen: glow_chain(3, 2, chosen, spatial_dims=0, perturb=0.0),
    }
    draws = {}
    for mode, chain in chains.items():
        torch.manual_seed(7)
        chain(x.clone().requires_grad_())
        draws[mode] = torch.randn(3)
    assert chains["auto"].mode_choice.mode == chosen
    torch.testing.assert_close(draws["auto"], draws[chosen], rtol=0, atol=0)
    for (k, a), b in zip(
        chains["auto"].state_dict().items(), chains[chosen].state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize(("limit", "chosen"), [(0, "invert"), ("unlimited", "store")])
def test_random_layers_draw_as_in_the_mode_chosen(limit, chosen):
    """Dropout in the conditioners: inverting, the chain seeds its layers and replays their
    draws while reconstructing (as invert mode); storing, it draws as plain autograd."""
    torch.manual_seed(0)
    layers = [NoisyCoupling(4) for _ in range(3)]
    reference = hf.Chain(*layers, mode=chosen).train().double()
    chain = hf.Chain(*layers, mode="auto", store_limit=limit).train().double()
    x = torch.randn(6, 4, dtype=torch.float64)
    results = []
    for model in (reference, chain):
        torch.manual_seed(3)
        # the gradients, and the generator's next draw (it advanced alike)
        results.append([*_gradients(model, x), torch.randn(2)])
    assert chain.mode_choice.mode == chosen
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    def loss(v):
        torch.manual_seed(42)
        return flow_loss(*chain(v))

    hf.testing.check_taylor(loss, x)  # the reconstructed gradient is the function's own


def test_nested_chains_store_when_the_outer_chain_stores():
    inner = hf.Chain(ActNorm(2), AffineCoupling(2, hidden=8), mode="invert")
    outer = hf.Chain(ActNorm(2), inner, mode="auto")
    y, _ = outer(torch.randn(8, 2, requires_grad=True))
    names = set()
    stack = [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None:
            names.add(node.name())
            stack.extend(n for n, _ in node.next_functions)
    assert RECONSTRUCTING not in names  # the estimate assumed the nested chain stores


def test_an_imposed_mode_wins_and_calls_without_grad_choose_too():
    chain = glow_chain(2, 2, "auto", spatial_dims=0, store_limit=0)
    x = torch.randn(8, 2)
    with chains_in_mode("store"):
        assert not _runs_reconstructing(chain, x)
    assert chain.mode_choice is None
    with torch.no_grad():  # seeded as it would be with grad: the same random draws
        chain(x)
    assert chain.mode_choice.mode == "invert"
    nested = glow_chain(2, 2, "auto", spatial_dims=0)
    outer = hf.Chain(ActNorm(2), nested, mode="invert")
    outer(x.clone().requires_grad_())
    assert nested.mode_choice is None  # reconstructed with the chain it is nested in


def test_vmap_runs_an_auto_flow_as_plain_autograd():
    chain = coupling_flow(2, 3, depth=2, hidden=8)
    x, cond = torch.randn(5, 4, 2), torch.randn(5, 4, 3)
    chain(x[0], cond[0])
    batched = torch.func.vmap(lambda a, c: chain(a, c)[1])(x, cond)
    looped = torch.stack([chain(a, c)[1] for a, c in zip(x, cond, strict=True)])
    torch.testing.assert_close(batched, looped)


def test_explain_says_what_was_chosen_and_why():
    chain = glow_chain(2, 2, "auto", spatial_dims=0, store_limit="1KiB")
    assert "no call yet" in chain.explain() and "1.00 KiB" in chain.explain()
    chain(torch.randn(64, 2, requires_grad=True))
    text = chain.explain()
    assert text.startswith("Chain of 6 layers: mode 'auto' chose 'invert'")
    assert "at batch 64" in text and "over store_limit 1.00 KiB" in text
    assert (
        glow_chain(2, 1, "store", spatial_dims=0).explain()
        == "Chain of 3 layers: mode 'store' (set)"
    )
    flow = ConditionalFlow(coupling_flow(2, 4, depth=1), MLP(6, 4), event_shape=(2,))
    flow(torch.randn(16, 6)).log_prob(torch.randn(16, 2)).sum().backward()
    assert flow.explain().startswith("Chain of 3 layers: mode 'auto' chose 'store'")
    glow = hf.networks.Glow(2, levels=1, depth=1, hidden=4, mode="auto")
    glow(torch.randn(2, 2, 4, 4, requires_grad=True))
    assert glow.explain().startswith("Glow: Chain of") and "chose 'store'" in glow.explain()
    network = hf.networks.Glow(2, levels=1, depth=1, hidden=4)
    assert network.explain().endswith("mode 'invert' (set)")


def test_store_limit_is_checked_and_kept_in_the_config():
    with pytest.raises(ValueError, match=r"Chain: store_limit: cannot read 'lots'"):
        hf.Chain(ActNorm(2), mode="auto", store_limit="lots")
    with pytest.raises(ValueError, match="mode"):
        hf.Chain(ActNorm(2), mode="automatic")
    chain = hf.Chain(ActNorm(2), mode="auto", store_limit="512MiB")
    rebuilt = from_config(json.loads(json.dumps(get_config(chain))))
    assert rebuilt.mode == "auto" and get_config(rebuilt)["arguments"]["store_limit"] == "512MiB"
    assert "store_limit" not in get_config(hf.Chain(ActNorm(2)))["arguments"]


@pytest.mark.parametrize("network", ["Glow", "HINT"])
def test_networks_pass_their_store_limit_to_every_chain(network):
    def build(**options):
        if network == "Glow":
            return hf.networks.Glow(2, levels=2, depth=1, hidden=4, mode="auto", **options)
        return hf.networks.HINT(4, depth=2, hidden=4, mode="auto", **options)

    x = torch.randn(4, 2, 8, 8) if network == "Glow" else torch.randn(4, 4)
    with pytest.raises(ValueError, match=f"{network}: store_limit: cannot read 'lots'"):
        build(store_limit="lots")
    small = build(store_limit=0)
    assert _runs_reconstructing(small, x)  # nothing fits in 0 bytes: invert
    assert "chose 'invert'" in small.explain()
    assert not _runs_reconstructing(build(store_limit="unlimited"), x)
    rebuilt = from_config(json.loads(json.dumps(get_config(small))))
    assert _runs_reconstructing(rebuilt, x)
    assert get_config(rebuilt)["arguments"]["store_limit"] == 0


def test_a_chain_that_chose_store_compiles_to_one_graph():
    torch._dynamo.reset()
    chain = coupling_flow(3, 4, depth=2, hidden=8)
    x, cond = torch.randn(64, 3), torch.randn(64, 4)

    def loss(a, b):
        return flow_loss(*chain(a, b))

    eager = loss(x, cond)  # ActNorm's initialisation and the probe run eagerly
    explanation = torch._dynamo.explain(loss)(x, cond)
    assert chain.mode_choice.mode == "store" and explanation.graph_break_count == 0
    torch.testing.assert_close(torch.compile(loss, backend="aot_eager")(x, cond), eager)
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["image", "vector"])
def test_the_estimate_matches_what_store_mode_saves(kind):
    """The probe's estimate at the real batch against the storages a store-mode call saves
    (``saved_bytes`` also counts saved views of parameters, which cost no memory: the
    estimate leaves them out, so it is below by at most the parameters' bytes)."""
    from hybridflow.bench.probes import saved_bytes

    if kind == "image":
        inputs = (torch.randn(12, 2, 16, 16),)
        chains = [glow_chain(2, 3, m, squeeze=True, hidden=16) for m in ("auto", "store")]
    else:
        inputs = (torch.randn(200, 5), torch.randn(200, 8))
        chains = [coupling_flow(5, 8, depth=3, mode=m) for m in ("auto", "store")]
    for chain in chains:
        chain(*inputs)
    measured = saved_bytes(lambda: chains[1](*inputs))
    parameters = sum(p.numel() * p.element_size() for p in chains[1].parameters())
    estimate = chains[0].mode_choice.kept_bytes
    assert measured - parameters <= estimate <= measured
    assert estimate > 0.5 * measured  # the activations are most of it


def test_the_probe_keeps_no_activation_alive():
    """The probe counts what autograd would save but hands it placeholders: a layer's output
    is freed once the next layer has used it (store mode keeps it for backward), so probing a
    large input needs no more memory than a pass without grad."""
    import weakref

    from hybridflow.layers import InvConv1x1

    def alive_after_two_layers(mode: str) -> list[bool]:
        torch.manual_seed(0)
        chain = hf.Chain(InvConv1x1(4), InvConv1x1(4), InvConv1x1(4), mode=mode)
        refs, seen = [], []
        chain[0].register_forward_hook(lambda m, i, out: refs.append(weakref.ref(out[0])))
        chain[2].register_forward_pre_hook(lambda m, i: seen.append(refs[-1]() is not None))
        chain(torch.randn(8, 4, requires_grad=True))
        return seen

    assert alive_after_two_layers("store") == [True]
    # auto: the probe's two runs (2 and 4 samples) free it, the call itself (store) keeps it
    assert alive_after_two_layers("auto") == [False, False, True]
