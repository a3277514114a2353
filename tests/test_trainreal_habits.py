"""A researcher's habits with `saesteer train` on a cache of their own model (a tiny GPT-2 with a
byte-level BPE trained on code and prose, cached in bf16), through the CLI:

- more training tokens than the cache holds: the reader passes over the cache again, and from the
  second pass on it holds the held-out rows, so the "held-out" EV and dead figures were silently on
  trained-on rows (and the default 16,384 held-out rows of a smaller cache were the cache repeated,
  every one of them trained on); now both are told, beside the figures too, and recorded
  (`data.holdout_trained_on` in metrics.json);
- JumpReLU at its default initial threshold (1.0) on real activations: most of their norm is one
  constant direction that b_dec takes away, so after the scaling no pre-activation reached 1, no
  latent ever fired, none got a gradient, and the run ended "successfully" with EV 0 and every
  latent dead; now refused before training, naming the flags that start it alive;
- a wandb project name wandb refuses (`:` `/` `#` ...) was reported as a login problem ("log in
  with `wandb login`, or set WANDB_MODE=offline") although the run was offline; now the flag is named
  before anything loads.
"""

from __future__ import annotations

import json

import pytest

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

HOOK = "blocks.1.hook_resid_post"
QUICK = ("--d-sae", 64, "--batch-size", 128, "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0,
         "--no-progress", "--model-eval", "false")


@pytest.fixture(scope="module")
def cache(real_models, real_corpus, tmp_path_factory):
    """1,536 tokens of GPT-2 activations at two hooks, in bf16 (1,488 rows: BOS is not cached)."""
    out = tmp_path_factory.mktemp("trainreal") / "cache"
    saesteer("cache", "--model", real_models.path("gpt2"), "--dataset", real_corpus.jsonl_dir, "--context-length", 32,
             "--max-tokens", 1536, "--hooks", f"blocks.0.hook_resid_post,{HOOK}", "--dtype", "bf16", "--out", out,
             "--no-progress").ok()
    return out


def _rows(cache) -> int:
    return sum(s["rows"] for s in json.loads((cache / "manifest.json").read_text())["shards"])


def test_a_held_out_set_as_large_as_the_cache_is_told_as_training_set_figures(cache, tmp_path):
    rows = _rows(cache)
    r = saesteer("train", "--cache", cache, "--hook", HOOK, "--architecture", "topk", "--k", 4, *QUICK,
                 "--total-tokens", 512, "--out", tmp_path / "run").ok()  # the default --holdout-tokens 16,384
    assert f"warning: --holdout-tokens 16,384 is not less than the {rows:,} rows" in r.out, r.out
    assert "the held-out rows were trained on too" in r.out  # beside the figures
    assert json.loads((tmp_path / "run/metrics.json").read_text())["data"]["holdout_trained_on"] is True


def test_a_second_pass_over_the_cache_is_told_and_recorded(cache, tmp_path):
    rows = _rows(cache)
    run = ("train", "--cache", cache, "--hook", HOOK, "--architecture", "topk", "--k", 4, *QUICK,
           "--holdout-tokens", 256)
    r = saesteer(*run, "--total-tokens", rows, "--out", tmp_path / "twice").ok()  # rows + 256 held out: two passes
    assert "from the second on the SAEs train on the 256 held-out rows too" in r.out, r.out
    assert json.loads((tmp_path / "twice/metrics.json").read_text())["data"]["holdout_trained_on"] is True
    assert "the held-out rows were trained on too" in r.out  # beside the figures it concerns
    r = saesteer(*run, "--total-tokens", 512, "--out", tmp_path / "once").ok()
    assert "held-out rows too" not in r.out
    assert json.loads((tmp_path / "once/metrics.json").read_text())["data"]["holdout_trained_on"] is False


def test_the_sae_folder_records_the_learning_rate_it_trained_at(cache, tmp_path):
    """Without --lr the width rule chooses it, and the SAE's provenance said only "lr": null (the
    configs' value), so a folder shared or compared later did not tell its learning rate."""
    from training.config import default_lr

    run = ("train", "--cache", cache, "--hook", HOOK, "--architecture", "topk", "--k", 4, *QUICK,
           "--holdout-tokens", 256, "--total-tokens", 256)
    for name, lr_flags, lr in (("auto", (), default_lr(64)), ("given", ("--lr", 3e-3), 3e-3)):
        saesteer(*run, *lr_flags, "--sae-name", name, "--out", tmp_path / name).ok()
        prov = json.loads((tmp_path / name / "saes" / name / "saesteer.json").read_text())
        assert prov["training"]["lr"] == pytest.approx(lr)


def test_jumprelu_that_would_start_dead_is_refused_and_the_named_flag_trains_it(cache, tmp_path):
    run = ("train", "--cache", cache, "--hook", HOOK, "--architecture", "jumprelu", *QUICK,
           "--holdout-tokens", 256, "--total-tokens", 1024)
    r = saesteer(*run, "--out", tmp_path / "dead").no_traceback()
    assert r.rc != 0 and "no latent fires on any of the 256 held-out rows" in r.err, r.err
    assert "--jumprelu-init-firing-rate" in r.err and not (tmp_path / "dead" / "saes").exists()
    saesteer(*run, "--jumprelu-init-firing-rate", 0.01, "--out", tmp_path / "alive").ok()
    s = json.loads((tmp_path / "alive/metrics.json").read_text())["saes"]["jumprelu_f64"]
    assert s["l0"] > 0 and s["eval_dead_fraction"] < 1


def test_the_threshold_a_dead_start_names_is_one_that_starts_it_alive(cache, tmp_path):
    """With --encoder-init-scale the encoder (thresholds with it) is scaled by it after the initial
    threshold is set: the largest pre-activation was measured after that scaling and named as the
    flag's bound, so at scale 4 the threshold it named (4x too high in the flag's units) was refused again."""
    import re

    run = ("train", "--cache", cache, "--hook", HOOK, "--architecture", "jumprelu", *QUICK, "--encoder-init-scale", 4,
           "--holdout-tokens", 256, "--total-tokens", 256)
    r = saesteer(*run, "--out", tmp_path / "dead").no_traceback()
    named = re.search(r"--jumprelu-init-threshold below ([0-9.e+-]+)", r.err)
    assert r.rc != 0 and named is not None, r.err
    saesteer(*run, "--jumprelu-init-threshold", 0.999 * float(named.group(1)), "--out", tmp_path / "alive").ok()


@pytest.mark.parametrize("project", ["lab/sae runs", "gpt2:layer1", "sweep #3?"])
def test_a_wandb_project_name_wandb_refuses_is_told_as_such_before_loading(project, tmp_path):
    r = saesteer("train", "--cache", tmp_path / "no-cache-needed", "--wandb", "true", "--wandb-project", project,
                 "--out", tmp_path / "run").no_traceback()
    assert r.rc != 0 and f"--wandb-project {project!r}" in r.err and "wandb login" not in r.err, r.err
    assert saesteer("train", "--cache", tmp_path / "c", "--wandb", "false", "--wandb-project", project,
                    "--print-config", "--out", tmp_path / "run").rc == 0  # no wandb run: nothing to refuse


def test_activations_beyond_fp16s_range_are_refused_when_cached_not_stored_as_inf(real_models, real_corpus, tmp_path):
    """A model with a massive dimension (as Llama's and Gemma's residual streams have): the default
    fp16 cache stored every such row as Inf, finished "successfully", and only training refused it
    later (the feature store and eval read it as it was). Now the cache refuses, naming the hook and
    --dtype bf16, which then caches it (finite, the outlier kept)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "gpt2-massive"
    shutil.copytree(real_models.path("gpt2"), model)
    (weights,) = model.glob("*.safetensors")
    w = load_file(weights)
    w["transformer.wpe.weight"][1:, 7] += 9e4  # every position after BOS
    save_file(w, weights, metadata={"format": "pt"})
    cache = ("cache", "--model", model, "--dataset", real_corpus.jsonl_dir, "--context-length", 32, "--max-tokens", 512,
             "--hooks", HOOK, "--no-progress")
    r = saesteer(*cache, "--out", tmp_path / "fp16").no_traceback()
    assert r.rc != 0 and HOOK in r.err and "fp16's range" in r.err and "--dtype bf16" in r.err, r.err
    assert not list((tmp_path / "fp16").glob("shard_*.safetensors"))
    saesteer(*cache, "--dtype", "bf16", "--out", tmp_path / "bf16").ok()
    (shard,) = (tmp_path / "bf16").glob("shard_*.safetensors")
    acts = load_file(shard)[f"acts/{HOOK}"].float()
    assert bool(torch.isfinite(acts).all()) and float(acts[:, 7].abs().min()) > 6e4
