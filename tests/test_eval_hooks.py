"""`saesteer eval` and hook points: an SAE at a TransformerBridge `hook_resid_mid` alias (evaluated
without the splice metrics, as `train` trains it), the model work repeated across groups of SAEs,
and which hook a transcoder's latents are probed at."""

from __future__ import annotations

import json

import pytest

from helpers.real_cli import saesteer

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
