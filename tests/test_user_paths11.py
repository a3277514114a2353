"""A user's path: fine-tune a SAELens SAE (made and saved by SAELens's own code) on my own GPT-2
cache (a tiny GPT-2 with a byte-level BPE tokenizer in a local directory, tests/helpers/real_models.py),
through the CLI: `train --init-from` starts from its weights, a kill -9 mid-run resumes with the same
command, and the saved SAE's cfg.json and saesteer.json name the source. A cache packed with another BOS
than the SAE's training is refused (naming both, the fix and the override)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from helpers.real_cli import OFFLINE_ENV, saesteer
from helpers.train_child import kill_when_hanging

pytest.importorskip("sae_lens")
pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

HOOK = "blocks.1.hook_resid_post"
D_SAE, K = 256, 8
CHILD = Path(__file__).parent / "helpers" / "train_child.py"


def sae_lens_sae(folder: Path, d_in: int, model_name: str) -> Path:
    """A TopK SAE as SAELens makes and saves it (`save_model`), recording how it was trained:
    contexts of 32 tokens starting with BOS at HOOK of the model."""
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    sl = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=D_SAE, k=K))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        sl.W_enc.copy_(torch.randn(d_in, D_SAE, generator=g) / d_in**0.5)
        W = torch.randn(D_SAE, d_in, generator=g)
        sl.W_dec.copy_(W / W.norm(dim=1, keepdim=True))
    md = sl.cfg.metadata
    md.hook_name, md.model_name, md.prepend_bos, md.context_size = HOOK, model_name, True, 32
    sl.save_model(folder)
    return folder


@pytest.fixture(scope="module")
def user(real_models, real_corpus, tmp_path_factory):
    work = tmp_path_factory.mktemp("user11")
    gpt2 = real_models.path("gpt2")
    for name, bos in (("cache", "prepend"), ("cache-nobos", "none")):
        saesteer("cache", "--model", gpt2, "--dataset", real_corpus.jsonl_dir, "--context-length", 32, "--hooks", HOOK,
                 "--bos-policy", bos, "--max-tokens", 4096 if bos == "prepend" else 1024, "--out", work / name,
                 "--no-progress").ok()
    d_model = json.loads((gpt2 / "config.json").read_text())["n_embd"]
    src = sae_lens_sae(work / "sl-sae", d_model, str(gpt2))
    return work, src


def train_args(work: Path, src: Path, out: Path, cache: str = "cache") -> list[str]:
    return ["train", "--cache", str(work / cache), "--out", str(out), "--init-from", str(src), "--total-tokens", "2048",
            "--batch-size", "128", "--holdout-tokens", "256", "--checkpoint-every-tokens", "512",
            "--eval-every-tokens", "0", "--eval-ce-contexts", "2", "--num-threads", "1", "--no-progress"]


def run_until_killed(argv: list[str], out: Path, step: int) -> None:
    """`saesteer ARGV` in its own process, SIGKILLed once its training hangs after `step`."""
    env = dict(os.environ, **OFFLINE_ENV, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(CHILD.parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    kill_when_hanging(["cli", str(step), *argv], out, env)


def test_fine_tuning_a_sae_lens_sae_on_my_gpt2_cache_survives_a_kill_and_names_its_source(user, tmp_path):
    from sae_lens import SAE as SLSAE

    from saes import read_provenance
    from training.init_from import load_source, weights_sha256

    work, src = user
    out = tmp_path / "run"
    argv = train_args(work, src, out)
    run_until_killed(argv, out, step=6)  # 128 tokens a step: its checkpoint of step 4 is on disk
    assert not (out / "metrics.json").exists() and (out / "checkpoints" / "step_0000000004").is_dir()
    r = saesteer(*argv).ok()  # the same command again resumes
    assert "resumed from step_0000000004" in r.text, r.text[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tokens_trained"] == 2048 and metrics["steps"] == 16
    folder = out / "saes" / f"topk_k{K}_f{D_SAE}"
    prov = read_provenance(folder)
    rec = prov["init_from"]
    assert (rec["spec"], rec["format"], rec["architecture"], rec["hook_name"]) == (str(src), "sae_lens", "topk", HOOK)
    assert rec["weights_sha256"] == weights_sha256(load_source(str(src)).sae)
    assert rec["files"]["sae_weights.safetensors"]  # the source's own file checksums
    assert prov["data"]["bos_policy"] == "prepend" and prov["data"]["cache"] == str((work / "cache").resolve())
    sl = SLSAE.load_from_disk(str(folder))  # SAELens loads the fine-tuned SAE with what it records
    md = json.loads((folder / "cfg.json").read_text())["metadata"]
    assert (sl.cfg.metadata.hook_name, sl.cfg.metadata.prepend_bos, md["context_size"]) == (HOOK, True, 32)
    assert not torch.equal(sl.W_enc.detach(), load_source(str(src)).sae.W_enc)  # it trained


def test_my_cache_packed_without_bos_is_refused_for_a_sae_trained_with_it(user, tmp_path):
    work, src = user
    r = saesteer(*train_args(work, src, tmp_path / "run", cache="cache-nobos")).no_traceback()
    assert r.rc == 2 and "prepend_bos=True" in r.err and "'none'" in r.err, r.text[-2000:]
    assert "`saesteer cache --bos-policy` 'prepend'" in r.err and "--init-from-allow-mismatch true" in r.err
    assert not (tmp_path / "run" / "saes").exists()


@pytest.mark.parametrize("case", ["bos", "architecture", "text-bos", "hook"])
def test_a_source_that_does_not_fit_is_refused_before_the_model_loads(user, real_models, real_corpus, tmp_path,
                                                                      monkeypatch, case):
    """The --init-from checks that need no model run before it loads (minutes for a real one): they
    ran after it, at the run's start."""
    from saesteer import models

    def loaded(*a, **kw):
        raise AssertionError("the model was loaded before the --init-from refusal")

    monkeypatch.setattr(models, "load_recorded_model", loaded)
    monkeypatch.setattr(models, "load_model", loaded)
    gpt2 = real_models.path("gpt2")
    work, src = user
    argv = {"bos": train_args(work, src, tmp_path / "run", cache="cache-nobos"),
            "architecture": [*train_args(work, src, tmp_path / "run"), "--architecture", "batchtopk", "--d-sae", D_SAE,
                             "--k", K],
            "text-bos": ["train", "--model", gpt2, "--dataset", real_corpus.jsonl_dir, "--bos-policy",
                         "none", "--context-length", 32, "--init-from", src, "--out", tmp_path / "run", "--no-progress"],
            "hook": ["train", "--model", gpt2, "--dataset", real_corpus.jsonl_dir, "--hook",
                     "blocks.0.hook_resid_post", "--init-from", src, "--out", tmp_path / "run", "--no-progress"]}[case]
    r = saesteer(*argv).no_traceback()
    assert r.rc == 2 and "--init-from" in r.err and "model was loaded" not in r.text, r.text[-2000:]
    assert {"bos": "prepend_bos=True", "architecture": "--architecture topk", "text-bos": "prepend_bos=True",
            "hook": HOOK}[case] in r.err
    assert not (tmp_path / "run" / "saes").exists()
