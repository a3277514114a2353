"""`saesteer eval` and hook points: an SAE at a TransformerBridge `hook_resid_mid` alias (evaluated
without the splice metrics, as `train` trains it), the model work repeated across groups of SAEs,
and which hook a transcoder's latents are probed at."""

from __future__ import annotations

import json

import pytest

from helpers.real_cli import saesteer
from helpers.forwards import count_forwards

pytestmark = [pytest.mark.usefixtures("one_thread")]

TRAIN = ("--architecture", "topk", "--d-sae", 64, "--k", 4, "--total-tokens", 2048, "--batch-size", 256,
         "--holdout-tokens", 256, "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--no-progress",
         "--eval-ce-contexts", 4)


@pytest.fixture(scope="module")
def gpt2_mid(real_models, real_corpus, tmp_path_factory):
    """A tiny GPT-2 (TransformerBridge) cache of resid_mid and resid_post, an SAE trained at each."""
    work = tmp_path_factory.mktemp("evalmid")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():
            mp.setenv(k, v)
        saesteer("cache", "--model", real_models.path("gpt2"), "--dataset", real_corpus.jsonl_dir, "--context-length", 32,
                 "--max-tokens", 2048, "--hooks", "blocks.1.hook_resid_mid,blocks.1.hook_resid_post",
                 "--out", work / "cache", "--no-progress").ok()
        for name, hook in (("mid", "blocks.1.hook_resid_mid"), ("post", "blocks.1.hook_resid_post")):
            r = saesteer("train", "--cache", work / "cache", "--hook", hook, "--out", work / f"run_{name}", *TRAIN,
                         "--sae-name", name).ok()
            if name == "mid":
                assert "note: no CE evaluation" in r.out and "ln2.hook_in" in r.out
        yield work


def test_eval_at_a_bridge_resid_mid_alias_leaves_out_the_splice_metrics_as_train_does(gpt2_mid, tmp_path):
    """eval raised at the CE splice (check_editable_hook refuses edits at the alias) although `train`
    trains the same SAE and leaves its CE evaluation out with a note: now eval reports the rest, and
    the same note, for that SAE, and the splice metrics of the SAE beside it."""
    r = saesteer("eval", "--sae", f"mid={gpt2_mid / 'run_mid/saes/mid'}", "--sae", f"post={gpt2_mid / 'run_post/saes/post'}",
                 "--cache", gpt2_mid / "cache", "--ce-contexts", 4, "--absorption", "false", "--probing", "false",
                 "--quiet", "--out", tmp_path / "ev").ok()
    assert "no CE loss recovered or KL" in r.out and "ln2.hook_in" in r.out
    doc = json.loads((tmp_path / "ev/eval.json").read_text())
    mid, post = doc["saes"]["mid"], doc["saes"]["post"]
    assert "ln2.hook_in" in mid["ce_skipped"] and "ce_skipped" not in post
    assert "ce_loss_recovered" not in mid["metrics"] and "ce_loss_recovered" in post["metrics"]
    # the activation metrics are train's own (the rows its training held out)
    trained = json.loads((gpt2_mid / "run_mid/metrics.json").read_text())["saes"]["mid"]
    for key in ("explained_variance", "mse", "l0"):
        assert mid["metrics"][key] == pytest.approx(trained[key], rel=1e-9)
    assert "ce_loss_recovered" not in trained


# --------------------------------------------------------------------------------- the toy model
H_IN, H_OUT, H_RES = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", "blocks.2.hook_resid_post"
TOY_TRAIN = ("--d-sae", 64, "--k", 4, "--total-tokens", 2048, "--batch-size", 256, "--holdout-tokens", 512,
             "--eval-ce-contexts", 2, "--eval-ce-batch-size", 2, "--no-progress", "--num-threads", 1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy cache of three hooks; an SAE 'sae' at H_RES and a transcoder 'tc' (H_IN -> H_OUT) trained on it."""
    d = tmp_path_factory.mktemp("evaltoy")
    saesteer("cache", "--model", "toy", "--dataset", "toy", "--max-tokens", 6144, "--shard-contexts", 8,
             "--hooks", f"{H_IN},{H_OUT},{H_RES}", "--out", d / "cache", "--no-progress").ok()
    saesteer("train", "--cache", d / "cache", "--out", d / "run", "--hook", H_RES, "--architecture", "topk",
             "--sae-name", "sae", *TOY_TRAIN).ok()
    saesteer("train", "--cache", d / "cache", "--out", d / "tcrun", "--hook", H_IN, "--target-hook", H_OUT,
             "--architecture", "topk", "--sae-name", "tc", *TOY_TRAIN).ok()
    return d


def _eval_toy(toy, out, *flags):
    saesteer("eval", "--sae", f"sae={toy / 'run/saes/sae'}", "--sae", f"tc={toy / 'tcrun/saes/tc'}", "--model", "toy",
             "--contexts", 8, "--ce-contexts", 2, "--ce-batch-size", 2, "--quiet", "--out", out, *flags).ok()
    return json.loads((out / "eval.json").read_text())


def test_the_toy_probing_set_is_not_collected_again_over_a_groups_contexts(toy, tmp_path, monkeypatch):
    """On the toy model without --cache the probing set (the toy validation split, packed as the SAEs
    read it) is the group's held-out text: the model ran over the same contexts at the same hooks
    twice. Now once, and eval.json is the same as with every collection run on its own."""
    import evals.activations
    import training.runner

    forwards = []
    real_run = training.runner.ActivationRunner._run_tl

    def counting_run(self, tokens):
        forwards.append(tuple(tokens.shape))
        return real_run(self, tokens)

    monkeypatch.setattr(training.runner.ActivationRunner, "_run_tl", counting_run)
    doc = _eval_toy(toy, tmp_path / "once", "--absorption", "false")
    held_out = [s for s in forwards if s == (8, 128)]  # 8 held-out contexts of 128 tokens, one batch
    assert len(held_out) == 1, forwards
    assert doc["saes"]["sae"]["probing"]["tasks"] > 0 and doc["saes"]["tc"]["probing"]["tasks"] > 0

    class EachOnItsOwn(evals.activations.Collector):  # every call runs the model, as before
        def __call__(self, hooks, tokens, excluded=()):
            return evals.activations.collect(self.model, hooks, tokens, excluded, self.batch_size)

    monkeypatch.setattr(evals.activations, "Collector", EachOnItsOwn)
    forwards.clear()
    assert _eval_toy(toy, tmp_path / "twice", "--absorption", "false") == doc
    assert len([s for s in forwards if s == (8, 128)]) == 2


def test_a_transcoders_latents_are_probed_at_its_input_hook(toy, tmp_path, monkeypatch):
    """The probing set was read at the transcoders' target hooks too (never used: the model run to
    the target's layer and its activations kept for nothing). Now at the hooks the latents are
    computed from only; the transcoder's figures are sparse probing of its latents on its input hook's
    activations (the target's would give others). Absorption, which compares decoder rows with a
    probe direction of the input's space, is left out for the transcoder with the reason."""
    import evals.run
    import toyworld
    from evals.activations import collect
    from evals.probing import balanced_tasks, sparse_probing
    from evals.run import token_labels
    from saes.formats import resolve_sae
    from saesteer.models import load_model
    from training.sources import contexts_from_text
    from training.text import TextConfig

    asked = []
    real = evals.run.token_probing_data

    def spy(heldout, hooks):
        asked.append(list(hooks))
        return real(heldout, hooks)

    monkeypatch.setattr(evals.run, "token_probing_data", spy)
    doc = _eval_toy(toy, tmp_path / "ev", "--absorption-min-words", 1)
    assert asked == [sorted([H_IN, H_RES])]
    tc = doc["saes"]["tc"]
    assert tc["hook_name"] == H_IN and tc["hook_name_out"] == H_OUT
    assert "not defined for a transcoder" in tc["absorption"]["skipped"]
    assert doc["saes"]["sae"]["absorption"]["letters"] > 0
    # the figures, recomputed on the input hook's activations of the same probing set
    model = load_model("toy", device="cpu")
    sae = resolve_sae(str(toy / "tcrun/saes/tc")).sae
    tokens = contexts_from_text(TextConfig(dataset="toy", split="validation", context_length=128), model.tokenizer, 8)
    held = collect(model, [H_IN, H_OUT], tokens, (model.tokenizer.bos_token_id,))
    tasks = balanced_tasks(token_labels(held, toyworld.concept_masks(held.tokens, list(toyworld.CONCEPTS))),
                           max_per_class=400, min_positives=20, seed=0)
    for hook, same in ((H_IN, True), (H_OUT, False)):
        got = sparse_probing(sae, real(held, [hook])[hook], tasks, [1, 2, 5, 10])
        assert (got["sae_accuracy"] == tc["probing"]["sae_accuracy"]) is same, hook


def test_saes_reading_the_caches_contexts_are_one_group_whatever_their_text_records():
    """The contexts of SAEs whose training took its CE contexts from --cache come from the cache, not
    from their text record: two such SAEs whose records differ (here the packing) were two groups, each
    reading the cache's contexts again. SAEs reading held-out text still group by that text."""
    from saesteer.commands.eval import _group_by_text
    from training.text import TextConfig

    a, b = TextConfig(dataset="toy", context_length=64), TextConfig(dataset="toy", context_length=128)
    groups = _group_by_text({"c1": a, "c2": b, "t1": a, "t2": b, "t3": a}, {"c1", "c2"})
    assert [(names, from_cache) for _, names, from_cache in groups] == [(["c1", "c2"], True), (["t1", "t3"], False),
                                                                        (["t2"], False)]


def test_the_ce_evaluation_of_several_saes_runs_the_clean_pass_once(monkeypatch):
    """Each SAE's CE loss recovered ran its own clean pass (and its own zero-ablated pass) over the
    same contexts: 3 forward passes per SAE and batch. Now one clean pass per batch, one zero-ablated
    pass per replaced hook, one spliced pass per SAE, and the figures equal one call per SAE exactly."""
    import torch

    from saesteer.models import load_model
    from training.evaluate import Splice, splice_metrics, splice_metrics_many

    model = load_model("toy", device="cpu")
    tokens = torch.randint(3, model.cfg.d_vocab, (4, 16), generator=torch.Generator().manual_seed(0))
    bos = model.tokenizer.bos_token_id
    tokens[:, 0] = bos
    g = torch.Generator().manual_seed(1)
    W_mlp = torch.randn(model.cfg.d_model, model.cfg.d_model, generator=g) * 0.1
    splices = [Splice(lambda x: x * 0.9, H_RES), Splice(lambda x: x + 0.05, H_RES),
               Splice(lambda x: x @ W_mlp, H_OUT, H_IN)]  # a transcoder: reads H_IN, replaces H_OUT
    calls = count_forwards(monkeypatch, model)
    many = splice_metrics_many(model, splices, tokens, keep_token_ids=(bos,), batch_size=2)
    assert calls.count((2, 16)) == 2 * (1 + 3 + 2)  # 2 batches x (clean + 3 spliced + 2 zero-ablated hooks)
    calls.clear()
    one_by_one = [splice_metrics(model, s.reconstruct, s.hook_name, tokens, keep_token_ids=(bos,), batch_size=2,
                                 input_hook=s.input_hook) for s in splices]
    assert calls.count((2, 16)) == 2 * 3 * 3
    assert many == one_by_one
    assert many[0].ce_loss_spliced != many[1].ce_loss_spliced and many[0].ce_loss_zero == many[1].ce_loss_zero


# ------------------------------------------------------------------------ the activations collector
@pytest.fixture(scope="module")
def gpt2(real_models):
    from saesteer.models import load_model

    return load_model(str(real_models.path("gpt2")), device="cpu")


def _contexts(seed: int):
    import torch

    return torch.randint(3, 200, (2, 8), generator=torch.Generator().manual_seed(seed))


def test_the_collector_frees_a_groups_activations_once_the_next_groups_are_read(gpt2, monkeypatch):
    """It kept every group's activations for the whole eval; now only the latest collection, which the
    probing set read right after the first group can reuse."""
    import weakref

    import training.runner
    from evals.activations import Collector

    forwards = []
    real_run = training.runner.ActivationRunner._run_tl
    monkeypatch.setattr(training.runner.ActivationRunner, "_run_tl",
                        lambda self, tokens: forwards.append(tokens.shape) or real_run(self, tokens))
    collected = Collector(gpt2)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    first = collected(hooks, _contexts(0))
    again = collected(hooks[1:], _contexts(0))  # the same contexts: answered from the collection
    assert len(forwards) == 1 and again.acts[hooks[1]] is first.acts[hooks[1]]
    gone = [weakref.ref(a) for a in first.acts.values()]
    del first, again
    collected(hooks, _contexts(1))  # the next group
    assert len(forwards) == 2
    assert all(r() is None for r in gone)


def test_the_collector_reuses_a_collection_only_with_the_same_opt_in_flags_on(gpt2):
    """A collection at hook_resid_post and attn.hook_result ran with use_attn_result on (another forward
    path); a later call at hook_resid_post alone was answered from it, with values that differ in the
    last float bits from a collection there. Now it reads the model again."""
    import torch

    from evals.activations import Collector, collect

    hook, opt_in = "blocks.1.hook_resid_post", "blocks.0.attn.hook_result"
    collected = Collector(gpt2)
    with_flag = collected([hook, opt_in], _contexts(0))
    alone = collected([hook], _contexts(0))
    assert alone.acts[hook] is not with_flag.acts[hook]
    assert torch.equal(alone.acts[hook], collect(gpt2, [hook], _contexts(0)).acts[hook])
    assert not torch.equal(alone.acts[hook], with_flag.acts[hook])  # the flag changes the values here
