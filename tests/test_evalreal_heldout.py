"""`saesteer eval` of an SAE trained here, on held-out text of a real model and tokenizer (Llama-style:
BOS and EOS distinct), read as its training read it: the figures equal the ones `train` reported."""

from __future__ import annotations

import json

import pytest

from helpers.real_models import write_paragraph_splits
from saesteer.cli import main

pytestmark = [pytest.mark.usefixtures("one_thread")]

HOOK = "blocks.1.hook_resid_post"


def test_eval_leaves_out_the_tokens_its_training_cache_left_out(real_models, real_corpus, tmp_path, capsys):
    """A cache made with --exclude-tokens special never shows the SAE the EOS between documents; eval
    (without --cache) leaves those positions out too and keeps them clean when splicing, so its CE figures
    on the training's CE text equal train's (before: EOS spliced and measured, other figures)."""
    llama = real_models.path("llama")
    data = write_paragraph_splits(real_corpus, tmp_path / "short")
    assert main(["cache", "--model", str(llama), "--dataset", str(data), "--split", "train", "--hooks", HOOK,
                 "--context-length", "32", "--max-tokens", "3000", "--exclude-tokens", "special",
                 "--out", str(tmp_path / "cache"), "--no-progress"]) == 0
    assert main(["train", "--cache", str(tmp_path / "cache"), "--architecture", "topk", "--d-sae", "64", "--k", "4",
                 "--total-tokens", "2000", "--batch-size", "256", "--holdout-tokens", "500", "--eval-ce-contexts", "8",
                 "--progress", "false", "--out", str(tmp_path / "run")]) == 0
    sae = tmp_path / "run" / "saes" / "topk_k4_f64"
    assert main(["eval", "--sae", str(sae), "--contexts", "8", "--ce-contexts", "8", "--absorption", "false",
                 "--probing", "false", "--quiet", "--no-progress", "--out", str(tmp_path / "ev")]) == 0
    doc = json.loads((tmp_path / "ev" / "eval.json").read_text())
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    excluded = manifest["settings"]["excluded_token_ids"] if "settings" in manifest else manifest["excluded_token_ids"]
    assert doc["data"]["excluded_token_ids"] == excluded and len(excluded) >= 2  # BOS and EOS
    tokens_read = doc["saes"]["sae"]["text"]
    assert tokens_read["tokens"] < tokens_read["contexts"] * tokens_read["context_length"] - tokens_read["contexts"]
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())["saes"]["topk_k4_f64"]
    ours = doc["saes"]["sae"]["metrics"]
    for key in ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero", "ce_loss_recovered", "kl_div"):
        assert ours[key] == pytest.approx(trained[key], rel=1e-6), key
    assert "run_evals default" not in capsys.readouterr().out  # an SAE trained here: no SAELens note
