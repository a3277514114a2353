"""`saesteer train --holdout-cache DIR`: the held-out rows (activation scale, b_dec's start, held-out EV
and dead latents) from a separate cache of other text, as the demo trains (`train(holdout=...)`), so
that no pass over the training cache holds them; recorded in the SAE's data as the demo records it.
A held-out cache that is not the training cache's kind (model, hook, width, tokenizer, BOS policy)
or that reads the training text is refused, naming both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.real_cli import saesteer

pytestmark = pytest.mark.usefixtures("one_thread", "offline_env")
HOOK = "blocks.1.hook_resid_post"


def _cache(out, *flags, split="train", tokens=4096, hooks=HOOK, model="toy"):
    return saesteer("cache", "--model", model, "--dataset", "toy", "--split", split, "--max-tokens", tokens,
                    "--hooks", hooks, "--out", out, "--no-progress", *flags).ok()


def _train_argv(cache, out, *flags):
    """`saesteer train` on `cache` (flags given later win) without --holdout-cache."""
    return ("train", "--cache", cache, "--out", out, "--architecture", "topk", "--d-sae", 64, "--k", 4,
            "--total-tokens", 2048, "--batch-size", 128, "--holdout-tokens", 2000, "--eval-every-tokens", 0,
            "--checkpoint-every-tokens", 0, "--model-eval", "false", "--sae-name", "sae", "--no-progress", *flags)


def _train(cache, held, out, *flags):
    return saesteer(*_train_argv(cache, out, "--holdout-cache", held, *flags))


@pytest.fixture(scope="module")
def caches(tmp_path_factory, one_thread):
    d = tmp_path_factory.mktemp("holdoutcache")
    _cache(d / "train")
    _cache(d / "val", split="validation", tokens=512)
    return d


def test_the_held_out_rows_come_from_the_holdout_cache_and_are_recorded(caches, tmp_path):
    from training.manifest import read_manifest

    held_rows = read_manifest(caches / "val").total_rows
    r = _train(caches / "train", caches / "val", tmp_path / "run").ok()
    assert f"holds {held_rows:,} rows, fewer than --holdout-tokens 2,000" in r.text
    m = json.loads((tmp_path / "run/metrics.json").read_text())
    assert m["holdout_rows"] == held_rows  # all of the held-out cache, not 2,000 rows of the training stream
    for data in (m["data"], json.loads((tmp_path / "run/saes/sae/saesteer.json").read_text())["data"]):
        assert data["holdout_cache"] == str((caches / "val").resolve()) and data["holdout_trained_on"] is False
    assert "trained on too" not in r.text


@pytest.mark.parametrize("case", ["itself", "same-split", "bos", "hook", "model"])
def test_a_holdout_cache_of_another_kind_or_of_the_training_text_is_refused(caches, tmp_path, case):
    held = tmp_path / "held"
    if case == "itself":
        held = caches / "train"
    elif case == "same-split":
        _cache(held, tokens=512)
    elif case == "bos":
        _cache(held, "--bos-policy", "none", split="validation", tokens=512)
    elif case == "hook":
        _cache(held, split="validation", tokens=512, hooks="blocks.0.hook_resid_post")
    else:
        from helpers.tiny_hf import save_tiny_gpt2

        other = save_tiny_gpt2(tmp_path / "gpt2")
        saesteer("cache", "--model", other, "--dataset", "toy", "--split", "validation", "--max-tokens", 512,
                 "--hooks", HOOK, "--out", held, "--no-progress", "--context-length", 32).ok()
    r = _train(caches / "train", held, tmp_path / "run").no_traceback()
    assert r.rc == 2, r.text[-2000:]
    said = {"itself": "is the training cache itself", "same-split": "reads the training text (file ",
            "bos": "BOS policy: --bos-policy none there, --bos-policy prepend in the training cache",
            "hook": f"hook {HOOK}: not cached", "model": "differs from the training cache"}[case]
    assert said in r.err and f"--holdout-cache {held}" in r.err, r.err
    if case == "model":  # another model: its tokenizer differs too, and one message names both
        assert "in model: " in r.err and "; tokenizer: " in r.err, r.err
    assert not (tmp_path / "run/saes/sae").exists()


def test_a_holdout_cache_of_the_same_local_model_copied_to_another_folder_is_accepted(tmp_path):
    import shutil

    from helpers.tiny_hf import save_tiny_gpt2

    model = save_tiny_gpt2(tmp_path / "gpt2")
    copy = shutil.copytree(model, tmp_path / "gpt2-copy")  # another folder name: the same weights' SHA-256
    for out, path, split, tokens in (("train", model, "train", 2048), ("val", copy, "validation", 512)):
        saesteer("cache", "--model", path, "--dataset", "toy", "--split", split, "--max-tokens", tokens,
                 "--hooks", HOOK, "--out", tmp_path / out, "--no-progress", "--context-length", 32).ok()
    r = _train(tmp_path / "train", tmp_path / "val", tmp_path / "run").no_traceback()
    assert r.rc == 0 and "differs from the training cache" not in r.err, r.text[-2000:]


def test_a_holdout_cache_needs_a_training_cache(caches, tmp_path):
    r = saesteer("train", "--model", "toy", "--dataset", "toy", "--holdout-cache", caches / "val", "--out",
                 tmp_path / "run", "--total-tokens", 1024, "--no-progress").no_traceback()
    assert r.rc == 2 and "pass --cache too" in r.err, r.text[-2000:]


# -- a real architecture (GPT-NeoX, byte-level BPE over code and prose): odd held-out caches, and resumes

@pytest.fixture(scope="module")
def neox(real_models, real_corpus, tmp_path_factory, one_thread):
    """The training cache of a tiny NeoX over the corpus's training split, and a held-out cache of its
    validation split (64-token contexts), with a function that caches more held-out text."""
    d, model = tmp_path_factory.mktemp("neox-holdout"), real_models.path("neox")

    def cache(out, *flags, split="validation", tokens=768, context=64):
        saesteer("cache", "--model", model, "--dataset", real_corpus.jsonl_dir, "--split", split, "--max-tokens",
                 tokens, "--hooks", HOOK, "--context-length", context, "--out", out, "--no-progress", *flags).ok()
        return out

    return cache(d / "train", split="train", tokens=3072), cache(d / "val"), cache


@pytest.mark.parametrize("case", ["unfinished", "context-length", "exclude-tokens"])
def test_an_unfinished_or_otherwise_cut_holdout_cache_is_refused(neox, tmp_path, case):
    import shutil

    train_cache, val, cache = neox
    held = tmp_path / "held"
    if case == "unfinished":  # as `saesteer cache` leaves its manifest until the last shard is written
        shutil.copytree(val, held)
        manifest = json.loads((held / "manifest.json").read_text())
        manifest.update(complete=False, shards=[])
        (held / "manifest.json").write_text(json.dumps(manifest))
    elif case == "context-length":  # rows of positions 0-15 only
        cache(held, context=16)
    else:  # BOS rows kept: far larger norms than the training rows
        cache(held, "--exclude-tokens", "none")
    r = _train(train_cache, held, tmp_path / "run").no_traceback()
    assert r.rc == 2, r.text[-2000:]
    said = {"unfinished": f"--holdout-cache {held} is not a finished cache",
            "context-length": "context length: --context-length 16 there, --context-length 64 in the training cache",
            "exclude-tokens": "the positions not cached: --exclude-tokens none (token ids []) there, "
                              "--exclude-tokens bos"}[case]
    assert said in r.err, r.err
    assert "fewer than --holdout-tokens" not in r.text and not (tmp_path / "run/saes/sae").exists()


def test_a_resume_draws_its_held_out_rows_where_the_run_did(neox, tmp_path):
    train_cache, val, cache = neox
    other, run = cache(tmp_path / "other", tokens=512), tmp_path / "run"
    _train(train_cache, val, run, "--checkpoint-every-tokens", 1024).ok()
    more = ("--total-tokens", 3072, "--checkpoint-every-tokens", 1024)
    for held, said in ((other, f"--holdout-cache {other.resolve()}"),
                       (None, "the first rows of the training data (no --holdout-cache)")):
        r = (_train(train_cache, held, run, *more) if held is not None else
             saesteer(*_train_argv(train_cache, run, *more))).no_traceback()
        assert r.rc == 2, r.text[-2000:]
        assert f"its held-out rows came from --holdout-cache {val.resolve()} ({HOOK}" in r.err, r.err
        assert f"this run's come from {said}" in r.err, r.err
    r = _train(train_cache, val, run, *more).ok()  # the same held-out cache: resumed
    assert json.loads((run / "metrics.json").read_text())["tokens_trained"] == 3072


def test_without_held_out_text_the_ce_evaluation_reads_the_holdout_cache_s_contexts(neox, real_models, real_corpus,
                                                                                    tmp_path):
    """A training text with no validation split: CE loss recovered ran on the training cache's last shard
    (trained-on text) though --holdout-cache holds contexts of other text, their tokens kept."""
    import shutil

    _, val, _ = neox
    only_train = tmp_path / "only-train"
    only_train.mkdir()
    shutil.copy(real_corpus.jsonl_dir / "train.jsonl", only_train / "train.jsonl")
    train_cache = tmp_path / "train"
    saesteer("cache", "--model", real_models.path("neox"), "--dataset", only_train, "--split", "train",
             "--max-tokens", 3072, "--hooks", HOOK, "--context-length", 64, "--out", train_cache, "--no-progress").ok()
    r = _train(train_cache, val, tmp_path / "run", "--model-eval", "true", "--eval-ce-contexts", 4).ok()
    assert f"CE evaluation on contexts of --holdout-cache {val}" in r.text and "trained-on text" not in r.text
    ce = json.loads((tmp_path / "run/metrics.json").read_text())["data"]["ce_eval_data"]
    assert ce == {"cache": str(val), "contexts": 4, "trained_on": False}
