"""A seventh round of user paths: SAEs made by other libraries as their own code saves them today,
used through the CLI on tiny real checkpoints (tests/helpers/real_models.py):

- SAELens: a training checkpoint of an SAE trained with `normalize_activations=
  "expected_average_only_in"` (what SAELens's runner writes every `n_checkpoints`): its scaling
  factor is in `activation_scaler.json`, not yet folded into the weights (SAELens folds it only
  when training ends). It was read as the identity - a silent wrong result: every reconstruction
  off (here by up to 100% of an element) and the latents' values in other units; now folded as
  SAELens folds it, so the SAE equals SAELens's finished one and reconstructs what it did in training;
- dictionary_learning: the mid-training checkpoints `trainSAE(save_steps=...)` writes
  (`trainer_N/checkpoints/ae_STEP.pt`, the config one folder up) were taken for OpenAI state dicts
  and refused; they now load with their trainer's config.json (class, k, threshold, lm_name and
  submodule) and equal the library's own `encode`/`decode` of the same state dict;
- sparsify: a run folder of several hookpoints written by `SparseCoder.save_to_disk` with the
  run's config.json, on a GPT-NeoX checkpoint: `layers.1` reads the residual output of block 1
  (the store's statistics are sparsify's own encoder on the HF module's output, taken with a
  forward hook, not from our cache), the run folder itself is refused naming its hookpoints, and
  another model than the run's is refused naming both.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def offline_env():
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}.items():
            mp.setenv(k, v)
        yield


def _no_traceback(r) -> None:
    assert [line for line in r.text.splitlines() if line.startswith("Traceback")] == [], r.text[-2000:]


def _hf_module_output(model_dir: Path, module_path: str, text: str) -> torch.Tensor:
    """What the HF module at `module_path` outputs on `text` ([tokens, d]), by a forward hook on the
    HF model itself (as sparsify and dictionary_learning read it), with the tokenizer's defaults."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = AutoTokenizer.from_pretrained(model_dir)(text, return_tensors="pt").input_ids
    got = {}
    module = hf.base_model.get_submodule(module_path)
    handle = module.register_forward_hook(lambda m, i, o: got.setdefault("x", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        hf(ids)
    handle.remove()
    return got["x"].reshape(-1, got["x"].shape[-1])


def _store_stats(db: Path) -> tuple[list[int], torch.Tensor]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT latent, n_fires, max_act FROM features ORDER BY latent").fetchall()
    return [n for _, n, _ in rows], torch.tensor([m for _, _, m in rows])


def _cached_rows(cache: Path, hook: str) -> torch.Tensor:
    from training.manifest import read_manifest
    from training.shards import load_tensors

    return torch.cat([load_tensors(cache / s.file)[f"acts/{hook}"] for s in read_manifest(cache).shards]).float()


# ---------------------------------------------------------------------------------------------
# 1. SAELens: a training checkpoint whose activation scaling factor is not folded in yet


def _saelens_run_with_checkpoint(model_dir, docs, out: Path) -> Path:
    """SAELens's runner (TopK, expected_average_only_in) on the local checkpoint with one checkpoint
    midway; the checkpoint folder it wrote (cfg.json, weights, activation_scaler.json, ...)."""
    import datasets
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    from helpers.real_models import hooked_sae_transformer

    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=64, d_sae=128, k=4, normalize_activations="expected_average_only_in"),
        model_name=str(model_dir), hook_name=HOOK, dataset_path="local", is_dataset_tokenized=False, streaming=False,
        context_size=32, training_tokens=4096, train_batch_size_tokens=256, store_batch_size_prompts=16,
        n_batches_in_buffer=8, device="cpu", lr=3e-3, logger=LoggingConfig(log_to_wandb=False),
        output_path=str(out / "final"), checkpoint_path=str(out / "ckpt"), n_checkpoints=1, save_final_checkpoint=False,
        verbose=False, n_batches_for_norm_estimate=4)
    torch.manual_seed(0)
    LanguageModelSAETrainingRunner(cfg, override_dataset=datasets.Dataset.from_dict({"text": list(docs)}),
                                   override_model=hooked_sae_transformer(model_dir)).run()
    (ckpt,) = [p.parent for p in (out / "ckpt").rglob("activation_scaler.json")]
    return ckpt


def test_a_saelens_training_checkpoint_reads_activations_at_the_scale_it_was_trained_on(real_models, real_corpus, tmp_path):
    """The checkpoint's SAE saw every activation times `scaling_factor`; SAELens's own SAE on the
    scaled rows is the reference for what `features build` stores (firing counts and maxima in
    the scaled units' latents, reconstructions back in the model's units)."""
    pytest.importorskip("sae_lens")
    from sae_lens import SAE

    from saes.formats import resolve_sae

    model = real_models.path("gpt2")
    ckpt = _saelens_run_with_checkpoint(model, real_corpus.train_docs, tmp_path / "sl")
    cfg = json.loads((ckpt / "cfg.json").read_text())
    factor = json.loads((ckpt / "activation_scaler.json").read_text())["scaling_factor"]
    assert cfg["normalize_activations"] == "expected_average_only_in" and abs(factor - 1) > 0.5  # a real rescale

    saesteer("cache", "--model", model, "--dataset", real_corpus.jsonl_dir, "--split", "validation",
             "--context-length", 32, "--max-tokens", 1024, "--hooks", HOOK, "--out", tmp_path / "cache",
             "--no-progress").ok()
    saesteer("features", "build", "--sae", ckpt, "--cache", tmp_path / "cache", "--out", tmp_path / "f.db",
             "--no-progress").ok()
    rows = _cached_rows(tmp_path / "cache", HOOK)
    sl = SAE.load_from_disk(str(ckpt))  # SAELens itself reads a checkpoint as the identity: the raw weights
    with torch.no_grad():
        ref_recon = sl.decode(sl.encode(rows * factor)) / factor  # what the SAE computed in training
        sl.fold_activation_norm_scaling_factor(factor)  # what SAELens does when training ends
        ref_acts = sl.encode(rows)
        torch.testing.assert_close(sl.decode(ref_acts), ref_recon, rtol=1e-4, atol=1e-4)
    loaded = resolve_sae(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(loaded.sae(rows).recon, ref_recon, rtol=1e-4, atol=1e-4)
    n_fires, max_act = _store_stats(tmp_path / "f.db")
    assert n_fires == (ref_acts > 0).sum(0).tolist()
    torch.testing.assert_close(max_act, ref_acts.max(0).values.clamp_min(0), rtol=1e-4, atol=1e-4)
    assert loaded.provenance["source"]["activation_scaling_factor_folded"] == pytest.approx(factor)
    assert "activation_scaler.json" in loaded.provenance["source"]["files"]
