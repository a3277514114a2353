"""A second user's path: a tiny GPT-2 (byte-level BPE) in a local directory and their text as an HF
`DatasetDict` written by `save_to_disk`, three splits, the text in a column named 'content'. Driven
through the CLI as the docs say: cache the validation split, train with CE measured on test, then eval
with nothing but --sae. Checks what only this path shows: the split read is the one asked for (a
save_to_disk folder's JSON bookkeeping files were read as documents), and eval re-reads the recorded
held-out text with the column training used."""

from __future__ import annotations

import json

import pytest

from helpers.real_cli import OFFLINE_ENV, saesteer
from helpers.tiny_hf import cached_hub_dataset

pytestmark = [pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def user(real_models, real_corpus, tmp_path_factory):
    import datasets

    work = tmp_path_factory.mktemp("user2")
    splits = {"train": real_corpus.train_docs, "validation": real_corpus.validation_docs, "test": real_corpus.test_docs}
    datasets.DatasetDict({name: datasets.Dataset.from_dict({"content": list(docs), "n": list(range(len(docs)))})
                          for name, docs in splits.items()}).save_to_disk(str(work / "dsdict"))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in OFFLINE_ENV.items():
            mp.setenv(k, v)
        saesteer("cache", "--model", real_models.path("gpt2"), "--dataset", work / "dsdict", "--split", "validation",
                 "--text-column", "content", "--context-length", 32, "--max-tokens", 6000,
                 "--out", work / "cache", "--no-progress").ok()
        saesteer("train", "--cache", work / "cache", "--out", work / "run", "--architecture", "topk", "--d-sae", 128,
                 "--k", 4, "--total-tokens", 2048, "--batch-size", 256, "--holdout-tokens", 512,
                 "--eval-split", "test", "--eval-ce-contexts", 4, "--eval-every-tokens", 0,
                 "--checkpoint-every-tokens", 0, "--no-progress", "--sae-name", "sae").ok()
        yield work, splits


def test_a_save_to_disk_dataset_dict_is_read_at_the_split_asked_for(user):
    work, splits = user
    man = json.loads((work / "cache" / "manifest.json").read_text())
    assert man["dataset"]["split"] == "validation"
    assert man["dataset_files"] == [str(work / "dsdict" / "validation" / "data-00000-of-00001.arrow")]
    from training.manifest import read_manifest
    from training.sources import text_config_from_manifest
    from training.text import DocumentSource

    docs = [d for chunk in DocumentSource(text_config_from_manifest(read_manifest(work / "cache"))).chunks() for d in chunk]
    assert docs == list(splits["validation"])
    prov = json.loads((work / "run/saes/sae/saesteer.json").read_text())["data"]
    assert prov["ce_eval_data"]["split"] == "test" and prov["ce_eval_data"]["overlap"]["in_training"] == 0


def test_eval_with_only_sae_reads_the_recorded_held_out_text_with_its_column(user, tmp_path):
    work, _ = user
    saesteer("eval", "--sae", work / "run/saes/sae", "--contexts", 4, "--ce-contexts", 2, "--absorption", "false",
             "--probing", "false", "--quiet", "--out", tmp_path).ok()
    data = json.loads((tmp_path / "eval.json").read_text())["data"]
    assert (data["dataset"], data["split"], data["context_length"]) == (str(work / "dsdict"), "test", 32)


def test_eval_on_the_training_split_of_the_same_data_is_refused(user):
    work, _ = user
    r = saesteer("eval", "--sae", work / "run/saes/sae", "--dataset", work / "dsdict", "--split", "validation",
                 "--contexts", 4, "--ce-contexts", 2, "--absorption", "false", "--probing", "false", "--quiet")
    assert r.rc != 0 and "is training text" in r.err and "--allow-eval-overlap" in r.err
    assert [line for line in r.err.splitlines() if line.startswith("Traceback")] == []


def test_held_out_text_without_the_caches_column_says_what_can_be_read(user, tmp_path):
    """An --eval-dataset without the column the cache's text was read from ('content'): the refusal
    said "Pass --text-column", which does not apply with --cache (given, the same refusal came back;
    now a --text-column other than the cache's is refused itself, naming both)."""
    work, splits = user
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": d}) + "\n" for d in splits["test"][:20]), encoding="utf-8")
    r = saesteer("train", "--cache", work / "cache", "--out", tmp_path / "run", "--architecture", "topk",
                 "--d-sae", 64, "--k", 4, "--total-tokens", 512, "--batch-size", 256, "--eval-dataset", other,
                 "--no-progress").no_traceback()
    assert r.rc == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "has no column 'content'" in r.err and "--text-column" not in r.err, r.err
    assert "the column the cache" in r.err and "give an --eval-dataset with its text in that column" in r.err and \
        f"--eval-split NAME: a split of {work / 'dsdict'} other than the cache's ('validation')" in r.err, r.err


@pytest.mark.parametrize("flags, said", [(["--text-column", "text"], "--text-column text (the cache's: content)"),
                                         (["--context-length", 16], "--context-length 16 (the cache's: 32)")])
def test_a_text_setting_other_than_the_caches_is_refused_naming_both(user, tmp_path, flags, said):
    """--cache trains on text as it was cached: a text flag that differs did nothing, silently."""
    work, _ = user
    r = saesteer("train", "--cache", work / "cache", "--out", tmp_path / "run", "--architecture", "topk",
                 "--d-sae", 64, "--k", 4, "--total-tokens", 512, "--batch-size", 256, *flags, "--no-progress")
    assert r.no_traceback().rc == 2 and r.err.startswith(f"error: {said}: the cache {work / 'cache'} holds"), r.err
    assert not (tmp_path / "run").exists()
    saesteer("train", "--cache", work / "cache", "--out", tmp_path / "same", "--architecture", "topk", "--d-sae", 64,
             "--k", 4, "--total-tokens", 512, "--batch-size", 256, "--eval-split", "test", "--eval-ce-contexts", 2,
             "--text-column", "content", "--context-length", 32, "--eval-every-tokens", 0,
             "--checkpoint-every-tokens", 0, "--no-progress").ok()


def test_the_printed_config_given_back_trains_on_the_cache(user, tmp_path):
    """`train --cache C --print-config > run.json`, then `train --config run.json`: the printed text
    section was the flags' defaults (context length 128, column 'text'), not the cache's, and given
    back it was refused as text settings other than the cache's. It prints the cache's text now."""
    work, _ = user
    flags = ("--architecture", "topk", "--d-sae", 64, "--k", 4, "--total-tokens", 512, "--batch-size", 256,
             "--holdout-tokens", 256, "--eval-split", "test", "--eval-ce-contexts", 2, "--eval-every-tokens", 0,
             "--checkpoint-every-tokens", 0, "--no-progress")
    printed = json.loads(saesteer("train", "--cache", work / "cache", *flags, "--print-config").ok().out)
    assert (printed["text"]["context_length"], printed["text"]["text_column"]) == (32, "content"), printed["text"]
    config = tmp_path / "run.json"
    config.write_text(json.dumps(printed))
    saesteer("train", "--config", config, "--out", tmp_path / "run").ok()
    r = saesteer("train", "--cache", work / "cache", *flags, "--print-config", "--context-length", 16).no_traceback()
    assert r.rc == 2 and "--context-length 16 (the cache's: 32)" in r.err and not r.out, r.text
    # one the file gives is said so (there is no --context-length in the command to leave out)
    config.write_text(json.dumps({**printed, "text": {**printed["text"], "context_length": 16}}))
    r = saesteer("train", "--config", config, "--out", tmp_path / "run16").no_traceback()
    assert r.rc == 2 and r.err.startswith(f"error: {config}'s text.context_length 16 (the cache's: 32): "), r.err


def test_a_txt_documents_setting_is_not_refused_for_a_cache_of_other_files(user, tmp_path):
    """--txt-documents (or a config file's text.txt_documents) says how local .txt files split into
    documents; the cache of other files ignored it and records none, and train --cache refused it as
    other than the cache's ("file")."""
    work, _ = user
    saesteer("train", "--cache", work / "cache", "--out", tmp_path / "run", "--architecture", "topk", "--d-sae", 64,
             "--k", 4, "--total-tokens", 512, "--batch-size", 256, "--holdout-tokens", 256, "--eval-split", "test",
             "--eval-ce-contexts", 2, "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--no-progress",
             "--txt-documents", "line").ok()


@pytest.fixture(scope="module")
def llama_hub(real_models, real_corpus, tmp_path_factory):
    """A tiny Llama known by its hub name in a local HF cache (offline), and a hub dataset snapshot
    (data/<split>-00000-of-00001.parquet) whose text is in 'content'."""
    import datasets
    from huggingface_hub import constants

    from helpers.foreign_saes import write_hf_snapshot

    work = tmp_path_factory.mktemp("llama-hub")
    model_dir = real_models.path("llama")
    write_hf_snapshot(work / "hub", "researcher/tiny-llama",
                      {p.name: p for p in model_dir.iterdir() if p.suffix in (".json", ".safetensors")}, revision="e" * 40)
    (work / "ds" / "data").mkdir(parents=True)
    for name, docs in (("train", real_corpus.train_docs), ("validation", real_corpus.validation_docs),
                       ("test", real_corpus.test_docs)):
        datasets.Dataset.from_dict({"content": list(docs)}).to_parquet(str(work / "ds/data" / f"{name}-00000-of-00001.parquet"))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in OFFLINE_ENV.items():
            mp.setenv(k, v)
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        mp.setattr(constants, "HF_HUB_CACHE", str(work / "hub"))
        yield work


def test_train_without_a_cache_records_how_it_read_the_text_and_eval_reads_it_so(llama_hub, tmp_path):
    """Activations straight from the model, text in 'content', 32-token contexts without BOS: eval with
    only --sae reads the recorded CE text (validation) with that column and packing, so its CE loss
    recovered is training's."""
    work = llama_hub
    saesteer("train", "--model", "researcher/tiny-llama", "--dataset", work / "ds", "--text-column", "content",
             "--hook", "blocks.1.hook_resid_post", "--context-length", 32, "--bos-policy", "none",
             "--out", tmp_path / "run", "--architecture", "topk", "--d-sae", 64, "--k", 4, "--total-tokens", 1024,
             "--batch-size", 256, "--holdout-tokens", 256, "--eval-ce-contexts", 4, "--eval-every-tokens", 0,
             "--checkpoint-every-tokens", 0, "--no-progress", "--sae-name", "sae").ok()
    prov = json.loads((tmp_path / "run/saes/sae/saesteer.json").read_text())
    assert prov["data"]["dataset_split"] == "train" and prov["data"]["ce_eval_data"]["split"] == "validation"
    assert prov["model_identity"]["revision"] == "e" * 40
    saesteer("eval", "--sae", tmp_path / "run/saes/sae", "--contexts", 4, "--ce-contexts", 4, "--absorption", "false",
             "--probing", "false", "--quiet", "--out", tmp_path / "eval").ok()
    doc = json.loads((tmp_path / "eval/eval.json").read_text())
    assert (doc["data"]["split"], doc["data"]["context_length"], doc["data"]["bos_policy"]) == ("validation", 32, "none")
    trained = json.loads((tmp_path / "run/metrics.json").read_text())["saes"]["sae"]
    evaluated = doc["saes"]["sae"]["metrics"]
    assert evaluated["ce_loss_clean"] == pytest.approx(trained["ce_loss_clean"], rel=1e-6)
    assert evaluated["ce_loss_recovered"] == pytest.approx(trained["ce_loss_recovered"], rel=1e-6)


def test_eval_reads_each_sae_s_text_as_that_sae_was_trained(llama_hub, real_corpus, tmp_path, monkeypatch):
    """Two SAEs trained straight from the model on different text: 'a' on the hub snapshot (column
    'content', 32-token contexts, no BOS), 'b' on another dataset (column 'body', 24-token contexts,
    BOS prepended). `eval --sae a --sae b --sae a2` (a2: a's folder again) reads each SAE's recorded CE
    text with that SAE's column and packing, so each one's CE figures are its training's; the text of
    a and a2 is read once. (Eval once read every SAE's text as the first SAE's training read it, and
    packed it with the defaults when their packing differed.) The probing set (its text in 'text') is
    read once, the same for every SAE (it was read per text, in each training's column: 'content'
    failed, and a and b were probed on differently cut texts)."""
    import datasets

    import evals.run
    import training.heldout

    work = llama_hub
    (tmp_path / "ds_b" / "data").mkdir(parents=True)
    for name, docs in (("train", real_corpus.train_docs), ("validation", real_corpus.test_docs)):
        datasets.Dataset.from_dict({"body": list(docs)}).to_parquet(str(tmp_path / "ds_b/data" / f"{name}-00000-of-00001.parquet"))
    common = ["--model", "researcher/tiny-llama", "--hook", "blocks.1.hook_resid_post", "--architecture", "topk",
              "--d-sae", 64, "--k", 4, "--total-tokens", 1024, "--batch-size", 256, "--holdout-tokens", 256,
              "--eval-ce-contexts", 4, "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--no-progress"]
    saesteer("train", *common, "--dataset", work / "ds", "--text-column", "content", "--context-length", 32,
             "--bos-policy", "none", "--out", tmp_path / "run_a", "--sae-name", "sae").ok()
    saesteer("train", *common, "--dataset", tmp_path / "ds_b", "--text-column", "body", "--context-length", 24,
             "--bos-policy", "prepend", "--out", tmp_path / "run_b", "--sae-name", "sae").ok()

    probe_file = tmp_path / "probe.jsonl"
    probe_file.write_text("".join(json.dumps({"text": d, "label": "ab"[i % 2]}) + "\n"
                                  for i, d in enumerate(real_corpus.test_docs[:12])))
    reads, probed = [], []
    real = training.heldout.heldout_contexts
    monkeypatch.setattr(training.heldout, "heldout_contexts",
                        lambda train, text, *a, **k: reads.append(text) or real(train, text, *a, **k))
    real_probing = evals.run.text_probing_data
    monkeypatch.setattr(evals.run, "text_probing_data",
                        lambda model, hooks, toks, *a: probed.append(toks) or real_probing(model, hooks, toks, *a))
    saesteer("eval", "--sae", f"a={tmp_path / 'run_a/saes/sae'}", "--sae", f"b={tmp_path / 'run_b/saes/sae'}",
             "--sae", f"a2={tmp_path / 'run_a/saes/sae'}", "--contexts", 4, "--ce-contexts", 4, "--absorption", "false",
             "--probing-dataset", probe_file, "--probing-min-positives", 4, "--probing-ks", 1, "--quiet",
             "--out", tmp_path / "eval").ok()
    doc = json.loads((tmp_path / "eval/eval.json").read_text())
    for name, run in (("a", "run_a"), ("b", "run_b"), ("a2", "run_a")):
        trained = json.loads((tmp_path / run / "metrics.json").read_text())["saes"]["sae"]
        evaluated = doc["saes"][name]["metrics"]
        assert evaluated["ce_loss_clean"] == pytest.approx(trained["ce_loss_clean"], rel=1e-6), name
        assert evaluated["ce_loss_recovered"] == pytest.approx(trained["ce_loss_recovered"], rel=1e-6), name
    how = {n: doc["saes"][n]["text"] for n in ("a", "b", "a2")}
    assert (how["a"]["dataset"], how["a"]["text_column"], how["a"]["context_length"], how["a"]["bos_policy"]) == \
           (str(work / "ds"), "content", 32, "none")
    assert (how["b"]["dataset"], how["b"]["text_column"], how["b"]["context_length"], how["b"]["bos_policy"]) == \
           (str(tmp_path / "ds_b"), "body", 24, "prepend")
    assert how["a2"] == how["a"] and how["a"]["split"] == how["b"]["split"] == "validation"
    assert [t["saes"] for t in doc["data"]["texts"]] == [["a", "a2"], ["b"]]
    assert sorted((t.dataset, t.text_column) for t in reads) == sorted([(str(tmp_path / "ds_b"), "body"),
                                                                        (str(work / "ds"), "content")])
    assert len(probed) == 1 and max(len(t) for t in probed[0]) == 24  # the shortest context any SAE is fed
    probing = {n: doc["saes"][n]["probing"] for n in ("a", "b", "a2")}
    assert probing["a"]["tasks"] == 2 and probing["a"]["model_accuracy"] == probing["b"]["model_accuracy"]


def test_eval_reads_the_dataset_configuration_training_read(llama_hub, real_corpus, tmp_path, monkeypatch):
    """A hub dataset with two configurations ('en', 'fr': different documents), trained on with
    --dataset-config fr: `eval` with only --sae reads the recorded CE text in that configuration (its
    CE figures are training's) and records it. (Eval once dropped the configuration: `datasets`
    refused to pick one of the two, and eval.json recorded dataset_config null.)"""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    docs = list(real_corpus.train_docs) + list(real_corpus.validation_docs) + list(real_corpus.test_docs)
    half = len(docs) // 2
    cached_hub_dataset(tmp_path / "datasets", "researcher/multi", {
        "en": {"train": docs[:half], "validation": docs[half:half + 40]},
        "fr": {"train": docs[half:], "validation": docs[:40]}})
    saesteer("train", "--model", "researcher/tiny-llama", "--dataset", "researcher/multi", "--dataset-config", "fr",
             "--text-column", "content", "--hook", "blocks.1.hook_resid_post", "--context-length", 32,
             "--out", tmp_path / "run", "--architecture", "topk", "--d-sae", 64, "--k", 4, "--total-tokens", 1024,
             "--batch-size", 256, "--holdout-tokens", 256, "--eval-ce-contexts", 4, "--eval-every-tokens", 0,
             "--checkpoint-every-tokens", 0, "--no-progress", "--sae-name", "sae").ok()
    saesteer("eval", "--sae", tmp_path / "run/saes/sae", "--contexts", 4, "--ce-contexts", 4, "--absorption", "false",
             "--probing", "false", "--quiet", "--out", tmp_path / "eval").ok()
    doc = json.loads((tmp_path / "eval/eval.json").read_text())
    assert (doc["data"]["dataset"], doc["data"]["dataset_config"], doc["data"]["split"]) == \
           ("researcher/multi", "fr", "validation")
    trained = json.loads((tmp_path / "run/metrics.json").read_text())["saes"]["sae"]
    evaluated = doc["saes"]["sae"]["metrics"]
    assert evaluated["ce_loss_clean"] == pytest.approx(trained["ce_loss_clean"], rel=1e-6)
    assert evaluated["ce_loss_recovered"] == pytest.approx(trained["ce_loss_recovered"], rel=1e-6)


def test_init_from_a_sparsify_sae_trains_on_the_hook_it_records(user, real_models, tmp_path):
    """A cache of two hook points and a sparsify hookpoint folder `layers.1` (blocks.1.hook_resid_post):
    --init-from without --hook fine-tunes on that hook (it was refused with 'pass hook=...', no flag)."""
    from helpers.foreign_saes import random_sparsify, write_sparsify

    work, _ = user
    model = real_models.path("gpt2")
    # sparsify trains on the HF tokenizer's output, which for GPT-2 starts with no BOS: so does the cache
    saesteer("cache", "--model", model, "--dataset", work / "dsdict", "--split", "test", "--text-column", "content",
             "--context-length", 32, "--max-tokens", 2048, "--hooks", "blocks.0.hook_resid_post,blocks.1.hook_resid_post",
             "--bos-policy", "none", "--out", tmp_path / "cache", "--no-progress").ok()
    state, cfg = random_sparsify(64, 64, 4)
    sae = write_sparsify(tmp_path / "sparsify/layers.1", state, cfg, run_config={"model": str(model)})
    saesteer("train", "--cache", tmp_path / "cache", "--init-from", sae, "--total-tokens", 512, "--batch-size", 128,
             "--holdout-tokens", 256, "--lr", 1e-4, "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0,
             "--model-eval", "false", "--no-progress", "--out", tmp_path / "ft", "--sae-name", "ft").ok()
    assert json.loads((tmp_path / "ft/saes/ft/cfg.json").read_text())["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    r = saesteer("train", "--cache", tmp_path / "cache", "--total-tokens", 512, "--out", tmp_path / "plain")
    assert r.rc != 0 and "--hook" in r.err and "hook=..." not in r.err


def test_a_gemma_scope_sae_steers_at_the_hook_its_store_was_built_at(user, tmp_path, monkeypatch):
    """params.npz records no hook: `features build --hook` gave it and the store keeps it, so steer
    with that --store needs no --hook again (it was refused: 'does not record its hook point')."""
    from helpers.foreign_saes import random_gemma_scope, write_gemma_scope

    work, _ = user
    sae = write_gemma_scope(tmp_path / "gs/params.npz", random_gemma_scope(64, 64))
    saesteer("features", "build", "--sae", sae, "--hook", "blocks.1.hook_resid_post", "--cache", work / "cache",
             "--out", tmp_path / "gs.db", "--no-progress").ok()
    from saes.formats import gemma_scope

    reads = []
    monkeypatch.setattr(gemma_scope, "load", lambda *a, _load=gemma_scope.load, **kw: reads.append(a) or _load(*a, **kw))
    r = saesteer("steer", "--sae", sae, "--store", tmp_path / "gs.db", "--latent", "3:add=4", "--prompt", "def f(",
                 "--max-new-tokens", 3, "--do-sample", "false", "--json").ok()
    assert json.loads(r.out)["results"][0]["prompt"] == "def f("
    assert len(reads) == 1  # the weights read once (they were read again to put the store's hook on them)
    r = saesteer("steer", "--sae", sae, "--store", tmp_path / "gs.db", "--hook", "blocks.0.hook_resid_post",
                 "--latent", "3:add=4", "--prompt", "def f(", "--max-new-tokens", 3)
    assert r.rc != 0 and "not built for this SAE" in r.err
