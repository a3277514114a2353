"""Review of the notebook work (helper rvnb): what a notebook user still met after it.

- `SweepConfig(strengths=np.linspace(0, 4, 5))` (or torch.linspace), the first thing a notebook
  writes, failed with NumPy's "truth value of an array is ambiguous"; and a tensor latent id in
  `sweep` (`acts.argmax()`) missed its typical max (a tensor is a dict key by identity).
- `diff_of_means` inside a `steer` block read the steered model's activations: a steering vector
  for the unsteered model computed from edited means, without a sound (`contrast_features`, its
  SAE counterpart, was already refused there).
- `label --budget` stopped with "Re-run with a larger --budget to continue", as if the budget were
  cumulative: it holds for each run, so a re-run with the same budget continues (and may spend it
  again); a user raising 2usd to 3usd to "add one dollar" could spend three more.
- A `sae_lens.SAE` object saying `normalize_activations="expected_average_only_in"` (never folded:
  SAELens folds and sets "none" when it has the factor) was read as the identity, as SAELens itself
  runs it after warning; the folder and registry loaders refuse the same SAE. Refused here too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import steering
from helpers.steering_fixtures import PROMPTS, random_sae, tiny_model
from steering import SteeringError, steer


@pytest.mark.parametrize("strengths", [np.linspace(0, 4, 3), torch.linspace(0, 4, 3), [np.float32(2), torch.tensor(4.0)]])
def test_sweep_strengths_from_numpy_or_torch(strengths) -> None:
    cfg = steering.SweepConfig(strengths=strengths, unit="raw")
    assert cfg.strengths == [0.0, 2.0, 4.0][-len(cfg.strengths):] and all(type(s) is float for s in cfg.strengths)


def test_sweep_config_still_refuses_what_is_not_a_strength() -> None:
    with pytest.raises(SteeringError, match="finite numbers"):
        steering.SweepConfig(strengths=[torch.tensor([1.0, 2.0])])
    with pytest.raises(SteeringError, match="finite numbers"):
        steering.SweepConfig(strengths=np.array([1.0, np.nan]))
    with pytest.raises(SteeringError, match="empty"):
        steering.SweepConfig(strengths=np.array([]))


@pytest.fixture(scope="module")
def model_and_sae():
    model = tiny_model()
    return model, random_sae(model, "jumprelu", d_sae=128)


def test_a_tensor_latent_in_sweep_finds_its_typical_max(model_and_sae) -> None:
    from steering import SampleScores

    model, sae = model_and_sae

    def scorer(prompts, texts):
        return [SampleScores(concept=0.5) for _ in texts]

    acts = torch.zeros(128)
    acts[5] = 3.0
    res = steering.sweep(model, sae, acts.argmax(), PROMPTS[:1], scorer,
                         steering.SweepConfig(strengths=np.linspace(0, 1, 2), unit="max_act"),
                         typical_max={5: 2.0}, gen_config=steering.GenerationConfig(max_new_tokens=3, seed=0))
    assert res.latent == 5 and type(res.latent) is int and res.label == "sae/5:add", res.label
    assert res.typical_max == 2.0


def test_diff_of_means_inside_a_steer_block_is_refused(model_and_sae) -> None:
    model, sae = model_and_sae
    hook = "blocks.1.hook_resid_post"
    with steer(model, sae, ["3:clamp=40"]):
        with pytest.raises(SteeringError, match=r"steering.diff_of_means needs the model unsteered.*3:clamp=40"):
            steering.diff_of_means(model, hook, PROMPTS[:2], PROMPTS[2:4])
    vec = steering.diff_of_means(model, hook, PROMPTS[:2], PROMPTS[2:4])  # after the block: the model's own
    assert vec.vector.shape == (model.cfg.d_model,) and vec.norm > 0


def test_an_unfolded_sae_lens_object_is_refused_and_folded_it_converts() -> None:
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    from saes.interop import as_sae
    from saes.io import SAEFormatError

    torch.manual_seed(0)
    sl = StandardSAE(StandardSAEConfig(d_in=16, d_sae=32, normalize_activations="expected_average_only_in"))
    with torch.no_grad():
        sl.b_enc.normal_(0, 0.1)
        sl.b_dec.normal_(0, 0.1)
    x = torch.randn(5, 16) * 7
    scaled = sl.encode(x * 0.5)  # how it was trained: inputs times its factor
    with pytest.raises(SAEFormatError, match=r"sae_lens StandardSAE: normalize_activations=expected_average_only_in"
                                             r".*fold_activation_norm_scaling_factor"):
        as_sae(sl)
    sl.fold_activation_norm_scaling_factor(0.5)  # what the message says; SAELens then says "none"
    ours = as_sae(sl)
    torch.testing.assert_close(ours.encode(x), scaled, rtol=1e-5, atol=1e-5)


def test_label_budget_holds_per_run_and_the_stop_message_says_so(tmp_path, capsys) -> None:
    """The same --budget again continues the run (each run has its own), as the message now says."""
    from helpers.judge_server import JudgeServer, fake_llm_answer
    from helpers.label_store import build_trigger_store
    from saesteer.cli import main

    store, _ = build_trigger_store(tmp_path / "t.db")
    with JudgeServer(fake_llm_answer) as srv:
        def label() -> int:
            return main(["label", "--store", str(store), "--judge-model", "fake-judge", "--judge-base-url", srv.url,
                         "--no-progress", "--scorers", "detection", "--embed-backend", "none",
                         "--judge-concurrency", "1", "--budget", "6000tokens"])

        assert label() == 3
        first = capsys.readouterr().out
        n1 = len(srv.records)
        assert label() in (0, 3)  # the same budget again: more latents labelled, none asked twice
        keys = [r.key for r in srv.records]
        assert len(keys) > n1 and len(keys) == len(set(keys))
    assert "holds for each run" in first and "larger --budget" not in first, first


def test_sync_calls_after_an_await_leave_the_kernels_client_alone(tmp_path) -> None:
    """A cell awaiting the judge (the kernel loop's client made), then `complete_sync` (a worker
    thread's loop): the worker replaced the kernel's client, and the SDK closed the dropped one from
    the worker's loop and thread (`python -X dev`: 'Non-thread-safe operation invoked on an event
    loop other than the current one', 'Task exception was never retrieved'). Each loop now keeps
    its own client."""
    import asyncio

    from autointerp import JudgeConfig, make_judge
    from helpers.judge_server import JudgeServer

    with JudgeServer(lambda body: "a whale, café, 東京") as srv:
        judge = make_judge(JudgeConfig(model="fake-judge", base_url=srv.url, api_key="k"),
                           cache_path=tmp_path / "cache.sqlite")
        ask = [{"role": "user", "content": "Le café? 東京?"}]

        async def cell():
            first = await judge.complete([{"role": "user", "content": "one"}])
            kernel_client = judge.backend._client.get()
            again = judge.complete_sync(ask)
            twice = judge.complete_sync(ask)  # the second: from the cache file, used from the worker thread
            after = await judge.complete([{"role": "user", "content": "two"}])
            assert judge.backend._client.get() is kernel_client
            await judge.aclose()
            return first, again, twice, after

        first, again, twice, after = asyncio.run(cell())
    assert [c.text for c in (first, again, twice, after)] == ["a whale, café, 東京"] * 4
    assert (again.cached, twice.cached) == (0, 1)


def test_compare_methods_takes_topk_indices_and_refuses_a_fractional_latent(model_and_sae) -> None:
    """`latents=acts.topk(2).indices` (tensors: dict keys by identity, so a repeated latent stayed
    twice) and `latents=[3.7]` (cut to latent 3 without a word) from a notebook."""
    from steering.evaluate import OfflineScorer

    model, sae = model_and_sae
    scorer = OfflineScorer(lambda text: text.count("sea") / 4, lambda text: (1, 1))
    run = dict(prompts=PROMPTS[:1], gen_config=steering.GenerationConfig(max_new_tokens=3, seed=0),
               with_perplexity=False, typical_max=lambda latent: 2.0)
    with pytest.raises(SteeringError, match=r"latents must be latent ids \(integers\), got 3.7"):
        steering.compare_methods(model, sae, scorer, latents=[3.7], **run)
    card = steering.compare_methods(model, sae, scorer, latents=torch.tensor([5, 5]), **run)
    assert card.settings["candidates"] == [5] and type(card.settings["candidates"][0]) is int, card.settings


def test_an_interrupted_labelling_cell_keeps_the_answers_it_received(tmp_path) -> None:
    """Jupyter's interrupt during `label_latents` (the worker-thread path): every answer received
    before it is in the response cache, so the next run asks none of them again; the worker ends."""
    import threading

    from autointerp import FeatureStoreLabels, JudgeConfig, LabelConfig, label_latents, make_judge
    from helpers.judge_server import JudgeServer, fake_llm_answer
    from helpers.label_store import build_trigger_store
    from helpers.notebook_kernel import run_as_cell, sigint_on_request

    store, _ = build_trigger_store(tmp_path / "t.db")
    answer = sigint_on_request(4, fake_llm_answer)

    def judge():
        return make_judge(JudgeConfig(model="fake-judge", base_url=srv.url, api_key="k", concurrency=1),
                          cache_path=tmp_path / "judge-cache.sqlite")

    def cell(j):
        with FeatureStoreLabels.open(store) as labels:
            return label_latents(labels, j, LabelConfig(), progress=False)

    with JudgeServer(answer) as srv:
        with pytest.raises(KeyboardInterrupt):
            run_as_cell(lambda: cell(judge()))
        first = [r.key for r in srv.records]
        assert answer.sent.is_set() and 4 <= len(first) < 48, first
        assert not [t for t in threading.enumerate() if t.name.startswith("label_latents")]
        report = run_as_cell(lambda: cell(judge()))  # the next cell (a fresh judge: the cache file is what carries over)
        again = [r.key for r in srv.records[len(first):]]
    answered_before = first[:3]  # concurrency 1: the three before the one the interrupt came in were read
    assert not set(answered_before) & set(again), (answered_before, again)
    assert report.labelled + report.skipped == report.requested and report.usage["cached_calls"] >= 3, report


def test_two_concurrent_labelling_runs_on_one_judge_are_refused(tmp_path) -> None:
    """`await asyncio.gather(label_latents_async(a, judge, ...), label_latents_async(b, judge, ...))`
    in a cell: both runs shared one budget (the 1M-token run stopped by the other's 3,000, nothing
    labelled) and the first to end left the other's budget on the judge for good (every later run
    capped by it). The second is refused, saying what to do; the judge is as it was after."""
    import asyncio

    from autointerp import FeatureStoreLabels, JudgeConfig, LabelConfig, make_judge
    from autointerp.runner import label_latents_async
    from helpers.judge_server import JudgeServer, fake_llm_answer
    from helpers.label_store import build_trigger_store

    a, _ = build_trigger_store(tmp_path / "a.db")
    b, _ = build_trigger_store(tmp_path / "b.db")
    with JudgeServer(fake_llm_answer) as srv:
        judge = make_judge(JudgeConfig(model="fake-judge", base_url=srv.url, api_key="k"), cache_path=None)

        async def run(path, budget):
            with FeatureStoreLabels.open(path) as labels:
                return await label_latents_async(labels, judge, LabelConfig(budget=budget, scorers=("detection",)),
                                                 progress=False)

        async def cell():
            return await asyncio.gather(run(a, "3000tokens"), run(b, "1000000tokens"), return_exceptions=True)

        first, second = asyncio.run(cell())
        assert isinstance(second, RuntimeError) and "already in a labelling run" in str(second), second
        assert first.stopped == "budget" and judge.ledger.budget is None, (first, judge.ledger.budget)
        after = asyncio.run(run(b, "1000000tokens"))  # the next cell: its own budget, nothing left over
        assert after.stopped is None and after.labelled == after.requested, after


def test_features_on_text_inside_a_steer_block_reads_the_model_as_steered(model_and_sae) -> None:
    """Left allowed on purpose (see features_on_text's docstring): a clamp shows its value there."""
    from features.text import features_on_text

    model, sae = model_and_sae
    text = "The whale swam past the ship; le café était fermé."
    plain = features_on_text(model, sae, text).acts_SF[:, 3]
    with steer(model, sae, ["3:clamp=40"]):
        steered = features_on_text(model, sae, text).acts_SF[:, 3]
    assert not torch.allclose(plain, steered)
    torch.testing.assert_close(steered, torch.full_like(steered, 40.0), rtol=1e-4, atol=1e-3)


def test_label_config_budget_as_a_bare_number_says_what_to_write() -> None:
    """`LabelConfig(budget=2)` from Python raised re's "expected string or bytes-like object"."""
    from autointerp import LabelConfig
    from autointerp.accounting import Budget

    with pytest.raises(ValueError, match=r"LabelConfig.budget is an amount with its unit, '2usd'.*got 2: a bare number"):
        LabelConfig(budget=2)
    assert LabelConfig(budget=Budget(5000, "tokens")).budget_value() == Budget(5000, "tokens")
    assert LabelConfig(budget="200k tokens").budget_value() == Budget(200000, "tokens")


def test_compare_config_takes_numpy_strengths_and_positions() -> None:
    """CompareConfig(sae_strengths=np.linspace(...)) failed as SweepConfig did; np.int64 token indices
    were refused ("token indices must be integers")."""
    cfg = steering.CompareConfig(sae_strengths=np.linspace(0.5, 2, 3), vector_strengths=torch.linspace(1, 2, 2),
                                 positions=[np.int64(0), torch.tensor(2)])
    assert cfg.sae_strengths == [0.5, 1.25, 2.0] and cfg.vector_strengths == [1.0, 2.0]
    assert cfg.positions == [0, 2] and all(type(p) is int for p in cfg.positions)
    assert steering.FeatureEdit(3, "add", 1.0, positions=[np.int64(1)]).positions == (1,)
    with pytest.raises(SteeringError, match="sae_strengths must be finite numbers, got nan"):
        steering.CompareConfig(sae_strengths=[float("nan")])
