"""`saesteer eval`: figures equal `train`'s on our SAEs, agree with SAELens's run_evals on a
SAELens-trained SAE, work for every SAE format, and refuse bad input before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import foreign_saes as fs
from saesteer.cli import main

HOOK = "blocks.2.hook_resid_post"
D = 128  # the toy model's d_model


@pytest.fixture(scope="module")
def toy_model(one_thread):
    from saesteer.models import load_model

    return load_model("toy", device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread) -> Path:
    """A toy cache and a training run on it (TopK + Matryoshka, CE evaluated on 4 contexts)."""
    d = tmp_path_factory.mktemp("evaltrain")
    assert main(["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "8192", "--shard-contexts", "8",
                 "--hooks", HOOK, "--out", str(d / "cache"), "--no-progress"]) == 0
    # a seed and a reader buffer that are not the defaults: eval must take them from saesteer.json
    assert main(["train", "--cache", str(d / "cache"), "--out", str(d / "run"), "--architecture", "topk,matryoshka",
                 "--d-sae", "128", "--k", "8", "--total-tokens", "4096", "--batch-size", "256", "--holdout-tokens", "700",
                 "--seed", "3", "--reader-buffer-rows", "1024", "--eval-ce-contexts", "4", "--eval-ce-batch-size", "2",
                 "--progress", "false", "--num-threads", "1"]) == 0
    return d


def test_eval_of_a_trained_sae_equals_what_train_reported(trained: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    out = tmp_path / "ev"
    saes_dir = trained / "run" / "saes"
    assert main(["eval", "--sae", f"t={saes_dir / 'topk_k8_f128'}", "--sae", f"m={saes_dir / 'matryoshka_batchtopk_k8_f128'}",
                 "--cache", str(trained / "cache"), "--ce-contexts", "4", "--ce-batch-size", "2", "--absorption", "false",
                 "--probing", "false", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "level width" in printed and "eval.html" in printed
    reported = json.loads((trained / "run" / "metrics.json").read_text())["saes"]
    doc = json.loads((out / "eval.json").read_text())
    assert doc["format"] == "saesteer.eval" and (out / "eval.html").stat().st_size > 100_000
    for ours, theirs in (("t", "topk_k8_f128"), ("m", "matryoshka_batchtopk_k8_f128")):
        got, want = doc["saes"][ours]["metrics"], reported[theirs]
        assert "rows its training held out" in doc["saes"][ours]["rows_source"]
        for key in ("explained_variance", "mse", "l0", "eval_dead_fraction", "dense_fraction", "eval_rows",
                    "ce_loss_clean", "ce_loss_spliced", "ce_loss_zero", "ce_loss_recovered", "kl_div"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (ours, key)
        assert got["eval_rows"] == 700
        if ours == "m":
            assert [lv["width"] for lv in got["levels"]] == [lv["width"] for lv in want["levels"]]
            for a, b in zip(got["levels"], want["levels"]):
                assert a["explained_variance"] == pytest.approx(b["explained_variance"], rel=1e-9)
        for key in ("cossim", "l2_ratio", "relative_reconstruction_bias", "l1"):
            assert isinstance(got[key], float)


@pytest.fixture(scope="module")
def nosplit(trained: Path, tmp_path_factory) -> Path:
    """A run on `trained`'s cache with no held-out split (--eval-split nosuch: its CE contexts came
    from the cache's last shards)."""
    run = tmp_path_factory.mktemp("nosplit") / "run"
    assert main(["train", "--cache", str(trained / "cache"), "--out", str(run), "--architecture", "topk",
                 "--d-sae", "128", "--k", "8", "--total-tokens", "2048", "--batch-size", "256", "--holdout-tokens", "512",
                 "--eval-split", "nosuch", "--eval-ce-contexts", "4", "--eval-ce-batch-size", "2", "--progress", "false",
                 "--num-threads", "1", "--sae-name", "sae"]) == 0
    assert json.loads((run / "saes/sae/saesteer.json").read_text())["data"]["ce_eval_data"]["trained_on"] is True
    return run


def _eval_cache_and_dataset_saes(trained: Path, nosplit: Path, tmp_path: Path, capsys, *flags: str) -> dict:
    """`eval` of `nosplit`'s SAE as c (CE contexts from the cache) and `trained`'s as t (CE on the
    validation split), with --cache; returns eval.json."""
    out = tmp_path / "ev"
    capsys.readouterr()
    assert main(["eval", "--sae", f"c={nosplit / 'saes/sae'}", "--sae", f"t={trained / 'run/saes/topk_k8_f128'}",
                 "--cache", str(trained / "cache"), "--ce-batch-size", "2", "--probing", "false", "--quiet",
                 "--out", str(out), *flags]) == 0, capsys.readouterr().err
    return json.loads((out / "eval.json").read_text())


def test_only_saes_whose_training_read_the_cache_for_ce_are_evaluated_on_the_caches_contexts(trained: Path, nosplit,
                                                                                             tmp_path, capsys) -> None:
    """An SAE trained on the cache with no held-out split and one whose training measured CE on the
    toy validation split, evaluated together with --cache: each is evaluated on the contexts its own
    training used (both CE figures equal training's), and each SAE's record says where its contexts
    came from. (Eval once fed every SAE the cache's contexts as soon as one SAE's training had used them.)"""
    run = nosplit
    doc = _eval_cache_and_dataset_saes(trained, nosplit, tmp_path, capsys, "--ce-contexts", "4", "--absorption", "false")
    for ours, metrics in (("c", run / "metrics.json"), ("t", trained / "run/metrics.json")):
        want = json.loads(metrics.read_text())["saes"]
        want = want["sae" if ours == "c" else "topk_k8_f128"]
        got = doc["saes"][ours]["metrics"]
        for key in ("ce_loss_clean", "ce_loss_spliced", "ce_loss_recovered", "kl_div"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (ours, key)
    c, t = doc["saes"]["c"]["text"], doc["saes"]["t"]["text"]
    assert (c["contexts_from"], c["split"]) == ("cache", "train") and c["overlap"][0]["checked"] is False
    assert (t["contexts_from"], t["split"]) == ("dataset", "validation") and t["overlap"][0]["checked"] is True
    assert [x["saes"] for x in doc["data"]["texts"]] == [["c"], ["t"]]


def test_eval_runs_the_model_only_where_its_activations_are_used(trained: Path, nosplit, toy_model, tmp_path,
                                                                 monkeypatch, capsys) -> None:
    """Two groups at one hook (the cache's contexts for `c`, the validation text for `t`), both with the
    cache's held-out rows: the model's activations are not collected over either group's contexts (the
    activation metrics read the rows, CE runs the model itself, probing reads a set of its own; each
    group once collected them for nothing), and absorption's word activations are read once for the
    hook, not once per group. The records still count each group's contexts and kept positions."""
    import evals.absorption
    import evals.activations

    collected, word_reads = [], []
    real_collect, real_words = evals.activations.collect, evals.absorption.word_activations

    def counting_collect(model, hooks, tokens, *a, **k):
        collected.append(tuple(tokens.shape))
        return real_collect(model, hooks, tokens, *a, **k)

    def counting_words(model, hook, *a, **k):
        word_reads.append(hook)
        return real_words(model, hook, *a, **k)

    monkeypatch.setattr(evals.activations, "collect", counting_collect)
    monkeypatch.setattr(evals.absorption, "word_activations", counting_words)
    doc = _eval_cache_and_dataset_saes(trained, nosplit, tmp_path, capsys, "--contexts", "6", "--ce-contexts", "2")
    assert collected == []
    assert word_reads == [HOOK]
    for name in ("c", "t"):
        assert doc["saes"][name]["absorption"]["letters"] > 0
    # c's record counts the positions of its contexts (training's last CE contexts first) as a collection would
    from training.sources import contexts_from_cache

    tokens = contexts_from_cache(trained / "cache", 6)
    tokens = torch.cat([tokens[-2:], tokens[:-2]])
    kept = real_collect(toy_model, [HOOK], tokens, doc["data"]["excluded_token_ids"])
    c = doc["saes"]["c"]["text"]
    assert (c["contexts_from"], c["contexts"], c["tokens"], c["ce_contexts"]) == ("cache", 6, int(kept.row_context.numel()), 2)
    assert kept.row_context.numel() < tokens.numel()  # BOS left out
    t = doc["saes"]["t"]["text"]
    assert (t["contexts_from"], t["contexts"], t["ce_contexts"]) == ("dataset", 6, 2) and 0 < t["tokens"] < 6 * t["context_length"]


# --------------------------------------------------------------------------------- SAELens's run_evals
class _TokenStore:
    """What run_evals reads of an ActivationsStore: fixed token batches."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens
        self.store_batch_size_prompts = tokens.shape[0]
        self.context_size = tokens.shape[1]

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        return self.tokens[:n]

    def reset_input_dataset(self) -> None:
        pass


@pytest.fixture(scope="module")
def sae_lens_trained(tmp_path_factory, toy_model) -> Path:
    """A TopK SAE trained by SAELens's own SAETrainer on toy activations, saved in its inference form."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from evals.activations import collect
    from training.sources import contexts_from_text
    from training.text import TextConfig

    tokens = contexts_from_text(TextConfig(dataset="toy", split="train", context_length=64), toy_model.tokenizer, 96)
    acts = collect(toy_model, [HOOK], tokens, (toy_model.tokenizer.bos_token_id,)).acts[HOOK]
    torch.manual_seed(0)
    sl = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=256, k=8))

    def batches():
        while True:
            yield from acts[torch.randperm(len(acts))].split(256)

    trainer = SAETrainer(SAETrainerConfig(total_training_samples=256 * 80, train_batch_size_samples=256, lr=3e-3,
                                          lr_end=3e-4), sl, batches())
    trained_sl = trainer.fit()
    trained_sl.cfg.metadata.hook_name = HOOK
    folder = tmp_path_factory.mktemp("sl") / "sae"
    trained_sl.save_inference_model(folder)
    return folder


def test_eval_agrees_with_sae_lens_run_evals(sae_lens_trained: Path, toy_model) -> None:
    from sae_lens import SAE as SaeLensSAE
    from sae_lens.evals import EvalConfig as SLEvalConfig
    from sae_lens.evals import get_recons_loss, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    from evals.activations import collect
    from evals.reconstruction import activation_metrics, model_metrics_many
    from saes.formats import resolve_sae
    from training.sources import contexts_from_text
    from training.text import TextConfig

    ours = resolve_sae(sae_lens_trained).sae
    assert ours.cfg.metadata["hook_name"] == HOOK
    sl = SaeLensSAE.load_from_disk(sae_lens_trained)
    tokens = contexts_from_text(TextConfig(dataset="toy", split="validation", context_length=48),
                                toy_model.tokenizer, 12)
    bos = toy_model.tokenizer.bos_token_id
    store = _TokenStore(tokens)
    everything = dict(batch_size_prompts=len(tokens), n_eval_reconstruction_batches=1, n_eval_sparsity_variance_batches=1,
                      compute_kl=True, compute_ce_loss=True, compute_l2_norms=True, compute_sparsity_metrics=True,
                      compute_variance_metrics=True, compute_featurewise_density_statistics=True)
    # activation metrics with BOS left out (SAELens: exclude_special_tokens=[bos]; ours: exclude_bos)
    theirs, features = run_evals(sl, store, toy_model, ActivationScaler(), SLEvalConfig(**everything),
                                 exclude_special_tokens=[bos])
    got = activation_metrics(ours, collect(toy_model, [HOOK], tokens, (bos,)).acts[HOOK], dense_threshold=0.1)
    pairs = [("explained_variance", theirs["reconstruction_quality"]["explained_variance"]),
             ("mse", theirs["reconstruction_quality"]["mse"]), ("cossim", theirs["reconstruction_quality"]["cossim"]),
             ("l0", theirs["sparsity"]["l0"]), ("l1", theirs["sparsity"]["l1"]),
             ("l2_ratio", theirs["shrinkage"]["l2_ratio"]),
             ("relative_reconstruction_bias", theirs["shrinkage"]["relative_reconstruction_bias"])]
    for key, want in pairs:
        assert got[key] == pytest.approx(want, rel=2e-4, abs=1e-5), key
    density = torch.tensor(features["feature_density"])
    assert got["eval_dead_fraction"] == pytest.approx(float((density == 0).double().mean()))
    assert got["dense_fraction"] == pytest.approx(float((density > 0.1).double().mean()))
    assert 0 < got["eval_dead_fraction"] < 1 or 0 < got["l0"]
    # CE and KL with every position spliced (SAELens: exclude_special_tokens=False; ours: keep no token)
    theirs_ce, _ = run_evals(sl, store, toy_model, ActivationScaler(), SLEvalConfig(**everything),
                             exclude_special_tokens=False)
    ce = model_metrics_many(toy_model, {"sae": (ours, HOOK)}, tokens, keep_token_ids=(), batch_size=len(tokens))["sae"]
    perf = theirs_ce["model_performance_preservation"]
    for key, want in (("ce_loss_clean", perf["ce_loss_without_sae"]), ("ce_loss_spliced", perf["ce_loss_with_sae"]),
                      ("ce_loss_zero", perf["ce_loss_with_ablation"]), ("ce_loss_recovered", perf["ce_loss_score"])):
        assert ce[key] == pytest.approx(want, rel=1e-4), key
    # KL: SAELens averages over every position, ours over positions that predict a next token (all but the
    # last); the per-position values from run_evals's own get_recons_loss, without the last, agree
    per_position = get_recons_loss(sl, toy_model, ActivationScaler(), tokens, compute_kl=True, compute_ce_loss=False)
    assert ce["kl_div"] == pytest.approx(float(per_position["kl_div_with_sae"][:, :-1].mean()), rel=1e-3)
    assert ce["kl_div"] > 0


# ------------------------------------------------------------------------------- any format, downstream
@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict[str, Path]:
    """One SAE of each other format, sized for the toy model's residual stream."""
    d = tmp_path_factory.mktemp("foreign")
    state, cfg = fs.random_sparsify(D, 96, k=6)
    with torch.no_grad():
        state["encoder.weight"] = state["encoder.weight"] * 0.2
    sp = fs.write_sparsify(d / "sparsify" / "layers.2", state, cfg, run_config={"model": "toyworld-tiny"})
    dl_state = fs.random_dictionary_learning("JumpReluAutoEncoder", D, 80, seed=1)
    dl = fs.write_dictionary_learning(d / "dl" / "trainer_0", "JumpReluAutoEncoder", dl_state,
                                      submodule_name="resid_post_layer_2", lm_name="toyworld-tiny")
    gs = fs.write_gemma_scope(d / "gs" / "params.npz", fs.random_gemma_scope(D, 64, seed=2))
    return {"sparsify": sp, "dictionary_learning": dl, "gemma_scope": gs}


def _labelled_texts(path: Path, per_topic: int = 30) -> Path:
    from toyworld.grammar import generate_document

    rows = []
    for topic in ("ocean", "forest"):
        for i in range(per_topic):
            doc = generate_document(f"{topic}-{i}", topic=topic)
            rows.append({"text": " ".join(doc.words[:40]), "label": topic})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_eval_any_format_side_by_side(foreign, tmp_path: Path, capsys, one_thread) -> None:
    out = tmp_path / "ev"
    probe_file = _labelled_texts(tmp_path / "labelled.jsonl")
    args = ["eval", "--sae", f"sp={foreign['sparsify']}", "--sae", f"dl={foreign['dictionary_learning']}",
            "--sae", f"gs={foreign['gemma_scope']}", "--model", "toy", "--hook", HOOK, "--contexts", "8",
            "--ce-contexts", "2", "--probing-dataset", str(probe_file), "--probing-min-positives", "10",
            "--probing-ks", "1,4", "--quiet", "--out", str(out)]
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err
    doc = json.loads((out / "eval.json").read_text())
    assert list(doc["saes"]) == ["sp", "dl", "gs"]
    formats = {n: doc["saes"][n]["format"] for n in doc["saes"]}
    assert formats == {"sp": "sparsify", "dl": "dictionary_learning", "gs": "gemma_scope"}
    for name, entry in doc["saes"].items():
        m = entry["metrics"]
        assert entry["hook_name"] == HOOK
        assert m["eval_rows"] > 0 and m["l0"] > 0 and -1 < m["cossim"] <= 1 and m["l2_ratio"] > 0
        assert m["ce_loss_zero"] > m["ce_loss_clean"]
        assert entry["absorption"]["letters"] > 0 and entry["absorption"]["per_letter"]
        probing = entry["probing"]
        assert probing["tasks"] == 2 and probing["model_accuracy"] > 0.9  # topics are easy from the activations
        assert set(probing["sae_accuracy"]) == {"1", "4"}
    assert doc["saes"]["sp"]["k"] == 6 and doc["saes"]["gs"]["source"]["format"] == "gemma_scope"
    html = (out / "eval.html").read_text()
    assert "absorption" in html and "sparse probing" in html


def test_eval_refuses_bad_input_before_any_work(foreign, tmp_path: Path, capsys) -> None:
    import saes

    narrow = saes.create_sae("topk", 16, 32, k=4, metadata={"hook_name": HOOK})
    saes.save_sae(narrow, tmp_path / "narrow")
    assert main(["eval", "--sae", str(tmp_path / "narrow"), "--model", "toy", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "d_in=16" in err and f"{HOOK} of this model has width 128" in err and not (tmp_path / "o").exists()
    assert main(["eval", "--sae", str(foreign["gemma_scope"]), "--model", "toy"]) == 2
    assert "does not record its hook point; pass --hook" in capsys.readouterr().err
    assert main(["eval", "--sae", str(foreign["sparsify"]), "--model", "toy", "--hook", "blocks.1.hook_resid_post"]) == 2
    assert "--hook says blocks.1.hook_resid_post" in capsys.readouterr().err
    assert main(["eval", "--sae", str(foreign["gemma_scope"]), "--model", "toy", "--hook", "blocks.9.hook_resid_post"]) == 2
    assert "unknown hook point 'blocks.9.hook_resid_post'" in capsys.readouterr().err


def test_features_steer_and_serve_work_on_a_foreign_sae(foreign, tmp_path: Path, capsys, one_thread) -> None:
    """A sparsify SAE goes through features build (the store records its spec), top-on-text and
    serve (re-resolved from the store), and steer."""
    cache = tmp_path / "cache"
    assert main(["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "2048", "--shard-contexts", "8",
                 "--hooks", HOOK, "--out", str(cache), "--no-progress"]) == 0
    store = tmp_path / "f.db"
    assert main(["features", "build", "--sae", str(foreign["sparsify"]), "--cache", str(cache), "--out", str(store),
                 "--no-progress", "--top-k", "4", "--n-quantile", "4"]) == 0
    from features import FeatureStore

    with FeatureStore.open(store) as st:
        assert st.meta["sae"]["path"] == str(foreign["sparsify"].resolve())
        assert st.meta["sae"]["hook_name"] == HOOK
    capsys.readouterr()
    assert main(["features", "top-on-text", str(store), "the sailor sees a big whale ."]) == 0
    assert "strongest over the text" in capsys.readouterr().out
    assert main(["steer", "--sae", str(foreign["dictionary_learning"]), "--model", "toy", "--prompt", "the sailor",
                 "--latent", "0:add=2", "--max-new-tokens", "4", "--seed", "0"]) == 0, capsys.readouterr().err
    from saesteer.models import load_model
    from saesteer.web.launch import open_entries

    entries = open_entries([store], model=load_model("toy", device="cpu"))
    assert entries[0].engine is not None  # the store's recorded spec re-resolved to the same SAE (fingerprint)


def _registry_cache(tmp_path: Path) -> Path:
    """An HF cache holding a SAELens SAE of the toy model at someone/toy-saes, folder l2 (commit 'a' * 40)."""
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    sl = StandardSAE(StandardSAEConfig(d_in=D, d_sae=64))
    with torch.no_grad():
        for p in sl.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    sl.cfg.metadata.hook_name = HOOK
    sl.cfg.metadata.model_name = "toy"
    sl.save_model(tmp_path / "made")
    cache = tmp_path / "hub"
    fs.write_hf_snapshot(cache, "someone/toy-saes", {"l2/cfg.json": tmp_path / "made" / "cfg.json",
                                                      "l2/sae_weights.safetensors": tmp_path / "made" / "sae_weights.safetensors"})
    return cache


REGISTRY_EVAL = ["eval", "--sae", "sae_lens:someone/toy-saes/l2", "--model", "toy", "--contexts", "4", "--ce-contexts",
                 "2", "--absorption", "false", "--probing", "false", "--quiet"]


def test_registry_sae_from_a_fake_hub_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    """`--sae sae_lens:ORG/REPO/FOLDER` resolved by sae_lens through huggingface_hub from an HF cache,
    offline, in this process (the fresh-process run with HF_HUB_CACHE: the slow test below)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(_registry_cache(tmp_path)))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main([*REGISTRY_EVAL, "--no-progress", "--out", str(tmp_path / "ev")]) == 0
    entry = json.loads((tmp_path / "ev" / "eval.json").read_text())["saes"]["sae"]
    assert entry["spec"] == "sae_lens:someone/toy-saes/l2" and entry["format"] == "sae_lens_registry"
    assert entry["source"]["revision"] == "a" * 40 and entry["metrics"]["eval_rows"] > 0
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    capsys.readouterr()
    assert main([*REGISTRY_EVAL, "--no-progress", "--out", str(tmp_path / "ev2")]) == 2
    err = capsys.readouterr().err
    assert "not in the HF cache" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err


@pytest.mark.slow
def test_registry_sae_from_a_fake_hub_cache_through_the_cli(tmp_path: Path) -> None:
    """`--sae sae_lens:ORG/REPO/FOLDER` resolved by sae_lens through huggingface_hub from an HF cache
    (HF_HUB_CACHE), with the network off, in a fresh process as a user would run it (two processes:
    ~8 CPU s each, most of it importing; slow)."""
    cache = _registry_cache(tmp_path)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "saesteer", *REGISTRY_EVAL, "--out", str(tmp_path / "ev")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "ev" / "eval.json").read_text())
    entry = doc["saes"]["sae"]
    assert entry["spec"] == "sae_lens:someone/toy-saes/l2" and entry["format"] == "sae_lens_registry"
    assert entry["source"]["revision"] == "a" * 40 and entry["metrics"]["eval_rows"] > 0
    # without the cache the same command fails with the fix in one line
    res = subprocess.run(cmd, env={**env, "HF_HUB_CACHE": str(tmp_path / "empty")}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2 and "not in the HF cache" in res.stderr and "Traceback" not in res.stderr


def test_eval_packs_text_as_the_sae_cfg_records_unless_a_flag_says_otherwise():
    """An SAE from another library records its training contexts in cfg.json (`context_size`,
    `prepend_bos`): eval feeds it the same, unless --context-length / --bos-policy are given. (SAEs
    trained with different packing are each packed as trained: tests/test_user_paths2.py.)"""
    import argparse
    from types import SimpleNamespace

    from saesteer.commands.eval import _packed_as_trained
    from training.sources import training_text_of
    from training.text import TextConfig

    def sae(**meta):
        return SimpleNamespace(provenance={}, sae=SimpleNamespace(cfg=SimpleNamespace(metadata=meta)))

    said = []
    text = TextConfig(dataset="toy")  # the flag defaults: 128 tokens, BOS prepended
    got = _packed_as_trained(argparse.Namespace(), text, sae(context_size=32, prepend_bos=False), said.append, None)
    assert (got.context_length, got.bos_policy) == (32, "none")
    assert "--context-length 32" in said[-1] and "--bos-policy none" in said[-1]
    given = argparse.Namespace(context_length=128)
    got = _packed_as_trained(given, text, sae(context_size=32, prepend_bos=False), said.append, None)
    assert (got.context_length, got.bos_policy) == (128, "none")
    # a cache recorded by our training but since moved away: cfg.json's packing, not the defaults
    moved = sae(context_size=32, prepend_bos=False)
    moved.provenance = {"data": {"cache": "/nonexistent/cache", "dataset": "toy"}}
    got = _packed_as_trained(argparse.Namespace(), text, moved, said.append, training_text_of(moved.provenance["data"]))
    assert (got.context_length, got.bos_policy) == (32, "none")
    # ... trained on BOS policy "doc" (cfg.json: prepend_bos=false): its saesteer.json's policy, not "none"
    doc = sae(context_size=32, prepend_bos=False)
    doc.provenance = {"tool": "saesteer", "data": {"cache": "/nonexistent/cache", "dataset": "toy", "bos_policy": "doc"}}
    got = _packed_as_trained(argparse.Namespace(), text, doc, said.append, training_text_of(doc.provenance["data"]))
    assert (got.context_length, got.bos_policy) == (32, "doc") and "--bos-policy doc" in said[-1]


def test_an_sae_that_names_no_model_is_evaluated_with_the_caches_model(foreign, trained, tmp_path, capsys,
                                                                       one_thread) -> None:
    """--cache records the model its activations came from: an SAE whose files name none (Gemma
    Scope's params.npz; SAELens's model_name is in TransformerLens's terms) needs no --model then,
    as `features build` needs none."""
    out = tmp_path / "ev"
    capsys.readouterr()
    assert main(["eval", "--sae", str(foreign["gemma_scope"]), "--hook", HOOK, "--cache", str(trained / "cache"),
                 "--contexts", "4", "--ce-contexts", "2", "--absorption", "false", "--probing", "false", "--quiet",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / "eval.json").read_text())["model"].startswith("toy:")


def test_an_sae_of_another_library_without_a_model_record_quotes_the_model_its_files_name(foreign, capsys) -> None:
    """Another library's files name the model in that library's terms (sparsify's run config: a
    name we never load unasked): with nothing recorded and no --model, the one-line refusal quotes it."""
    capsys.readouterr()
    assert main(["eval", "--sae", str(foreign["sparsify"]), "--contexts", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "does not record which model" in err and "'toyworld-tiny'" in err and "--model" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_a_cache_packed_with_another_bos_than_the_sae_was_trained_with_is_refused(trained, tmp_path, capsys) -> None:
    """--cache rows of contexts that start with BOS hold other activations at every position than an
    SAE trained without one reads: refused naming both sides and the flag, as `features build` does
    (the one rule: saes.bos.check_cache_bos), before any work (no eval.json)."""
    import shutil

    sae = tmp_path / "nobos"
    shutil.copytree(trained / "run" / "saes" / "topk_k8_f128", sae)
    cfg = json.loads((sae / "cfg.json").read_text())
    assert cfg["metadata"]["prepend_bos"] is True  # the toy cache prepends BOS
    cfg["metadata"]["prepend_bos"] = False
    (sae / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "ev"
    capsys.readouterr()
    assert main(["eval", "--sae", str(sae), "--cache", str(trained / "cache"), "--contexts", "4", "--ce-contexts", "2",
                 "--absorption", "false", "--probing", "false", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "prepend_bos=False" in err and "was packed with `saesteer cache --bos-policy` 'prepend'" in err, err
    assert "`saesteer cache --bos-policy` 'none' or 'doc'" in err and "Traceback" not in err, err
    assert not (out / "eval.json").exists()


def test_a_cache_packed_with_another_bos_policy_than_our_sae_records_is_refused(trained, tmp_path, capsys) -> None:
    """An SAE trained here records its data's BOS policy exactly: one trained with BOS at document
    starts ('doc') on --cache rows packed without any ('none') is refused, naming the SAE, both
    policies and the flag, though cfg.json's prepend_bos (False) fits both."""
    import shutil

    sae = tmp_path / "doc"
    shutil.copytree(trained / "run" / "saes" / "topk_k8_f128", sae)
    for name, edit in (("cfg.json", lambda d: d["metadata"].update(prepend_bos=False)),
                       ("saesteer.json", lambda d: d["data"].update(bos_policy="doc", prepend_bos=False))):
        doc = json.loads((sae / name).read_text())
        edit(doc)
        (sae / name).write_text(json.dumps(doc))
    cache = tmp_path / "nobos"
    assert main(["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "1024", "--hooks", HOOK,
                 "--bos-policy", "none", "--out", str(cache), "--no-progress"]) == 0
    out = tmp_path / "ev"
    capsys.readouterr()
    assert main(["eval", "--sae", f"doc={sae}", "--cache", str(cache), "--contexts", "4", "--ce-contexts", "2",
                 "--absorption", "false", "--probing", "false", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "SAE doc was trained on contexts packed with BOS policy 'doc' (its saesteer.json)" in err, err
    assert f"the cache {cache} was packed with `saesteer cache --bos-policy` 'none'" in err, err
    assert "build a cache with `saesteer cache --bos-policy` 'doc'" in err and "Traceback" not in err, err
    assert not (out / "eval.json").exists()


def test_eval_with_cache_reads_its_manifest_once(trained, tmp_path, monkeypatch, capsys) -> None:
    """The model's record, the held-out rows and the SAE's training text all come from --cache's
    manifest, read once (it was read five times: the model, the rows, and the training text three
    times). The shard reader opening the cache reads its own, as any reader does."""
    import training.manifest
    import training.sources

    cache = (trained / "cache").resolve()
    reads: list[str] = []

    def counting(real):
        def read(path, *a, **kw):
            if Path(path).resolve() == cache:
                reads.append(str(path))
            return real(path, *a, **kw)
        return read

    monkeypatch.setattr(training.manifest, "read_manifest", counting(training.manifest.read_manifest))
    monkeypatch.setattr(training.sources, "read_manifest", counting(training.sources.read_manifest))
    capsys.readouterr()
    assert main(["eval", "--sae", str(trained / "run" / "saes" / "topk_k8_f128"), "--cache", str(trained / "cache"),
                 "--contexts", "4", "--ce-contexts", "2", "--ce-batch-size", "2", "--absorption", "false",
                 "--probing", "false", "--quiet", "--out", str(tmp_path / "ev")]) == 0, capsys.readouterr().err
    assert len(reads) == 1, reads
