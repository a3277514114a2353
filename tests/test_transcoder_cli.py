"""Transcoders end to end at the CLI on the toy world: `saesteer cache --hooks IN,OUT`, `saesteer train
--hook IN --target-hook OUT [--skip]`, `saesteer eval` reproducing what training reported (CE loss
recovered with the transcoder in place of the MLP), and one-line errors for bad hook pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.threads import torch_threads
from saesteer.cli import main

H_IN = "blocks.1.ln2.hook_normalized"
H_OUT = "blocks.1.hook_mlp_out"
TRAIN = ["--d-sae", "64", "--k", "4", "--total-tokens", "2048", "--batch-size", "256", "--holdout-tokens", "512",
         "--eval-ce-contexts", "4", "--eval-ce-batch-size", "2", "--no-progress", "--num-threads", "1", "--lr", "0.01"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tccli")
    with torch_threads(1):
        assert main(["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "6144", "--shard-contexts", "8",
                     "--hooks", f"{H_IN},{H_OUT}", "--out", str(d / "cache"), "--no-progress"]) == 0
        assert main(["train", "--cache", str(d / "cache"), "--out", str(d / "run"), "--hook", H_IN, "--target-hook", H_OUT,
                     "--architecture", "batchtopk", "--skip", *TRAIN]) == 0
    return d


def test_train_reports_and_saves_a_skip_transcoder(trained: Path) -> None:
    metrics = json.loads((trained / "run" / "metrics.json").read_text())
    m = metrics["saes"]["batchtopk_k4_f64_skip"]
    assert m["target_hook"] == H_OUT and m["skip_connection"] is True
    # (the toy model barely needs this MLP: ablating it costs little CE, so CE recovered is noisy here)
    assert m["explained_variance"] > 0.2 and 0 <= m["kl_div"] < 0.2 and m["ce_loss_zero"] != m["ce_loss_clean"]
    cfg = json.loads((trained / "run" / "saes" / "batchtopk_k4_f64_skip" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu_skip_transcoder" and cfg["metadata"]["hook_name_out"] == H_OUT
    assert cfg["metadata"]["hook_name"] == H_IN


def test_eval_reproduces_the_training_figures(trained: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    folder = trained / "run" / "saes" / "batchtopk_k4_f64_skip"
    with torch_threads(1):
        assert main(["eval", "--sae", f"tc={folder}", "--cache", str(trained / "cache"), "--ce-contexts", "4",
                     "--ce-batch-size", "2", "--absorption", "false", "--probing", "false", "--quiet",
                     "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert f"transcoder {H_IN} -> {H_OUT} (skip)" in printed
    doc = json.loads((tmp_path / "ev" / "eval.json").read_text())
    got = doc["saes"]["tc"]["metrics"]
    want = json.loads((trained / "run" / "metrics.json").read_text())["saes"]["batchtopk_k4_f64_skip"]
    for key in ("explained_variance", "mse", "l0", "eval_rows", "ce_loss_clean", "ce_loss_spliced", "ce_loss_zero",
                "ce_loss_recovered", "kl_div"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    assert doc["saes"]["tc"]["hook_name_out"] == H_OUT


@pytest.mark.parametrize("flags,text", [
    (["--hook", H_IN, "--target-hook", "blocks.0.hook_resid_pre"], "runs before the input hook"),
    (["--hook", H_IN, "--target-hook", "blocks.1.hook_mlp_outt"], "Did you mean blocks.1.hook_mlp_out"),
    (["--hook", H_IN, "--target-hook", H_IN], "both"),
    (["--hook", H_IN, "--skip"], "--target-hook"),
])
def test_bad_hook_pairs_are_one_line_errors(tmp_path: Path, capsys, flags, text) -> None:
    with torch_threads(1):
        code = main(["train", "--model", "toy", "--dataset", "toy", "--out", str(tmp_path / "r"), *flags, *TRAIN])
    err = capsys.readouterr().err.strip()
    assert code == 2 and text in err and "Traceback" not in err
    assert len(err.splitlines()) <= 2, err


def test_a_cache_without_the_pair_is_refused(trained: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", "--cache", str(trained / "cache"), "--out", str(tmp_path / "r"), "--hook", H_IN,
                 "--target-hook", "blocks.2.hook_mlp_out", *TRAIN])
    err = capsys.readouterr().err
    assert code == 2 and "blocks.2.hook_mlp_out" in err and H_IN in err and "--hooks" in err


def test_steer_cli_generates_with_a_transcoder_edit(trained: Path, capsys) -> None:
    """`saesteer steer` on a trained transcoder: KV-cached generation with the edit at the MLP output."""
    folder = trained / "run" / "saes" / "batchtopk_k4_f64_skip"
    capsys.readouterr()
    with torch_threads(1):
        code = main(["steer", "--sae", str(folder), "--prompt", "the sailor", "--feature", "3:add=40",
                     "--max-new-tokens", "6", "--seed", "0"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "steering: 3:add=40" in out.out
    # the same through the Python API: the steered continuation differs from the unsteered one
    import saes
    from saesteer.models import load_model
    from steering.comparison import compare

    with torch_threads(1):
        res = compare(load_model("toy", device="cpu"), saes.load_sae(folder), ["3:add=40"], ["the sailor"],
                      max_new_tokens=6, seed=0)
    assert res.steered != res.unsteered


def test_feature_store_cli_on_a_transcoder(trained: Path, tmp_path: Path, capsys) -> None:
    """`saesteer features build` reads the transcoder's input hook from the pair cache; its store records it."""
    folder = trained / "run" / "saes" / "batchtopk_k4_f64_skip"
    store = tmp_path / "tc.db"
    with torch_threads(1):
        assert main(["features", "build", "--sae", str(folder), "--cache", str(trained / "cache"), "--out", str(store),
                     "--no-progress"]) == 0, capsys.readouterr().err
    from features.store import FeatureStore

    with FeatureStore.open(store) as st:
        assert st.meta["sae"]["hook_name"] == H_IN
        assert sum(st.feature(i).stats.n_fires for i in range(64)) > 0
