"""A ninth round of user paths: SAEs of other libraries we refused, used through the CLI on tiny real
checkpoints (tests/helpers/real_models.py), as their own code saves them:

- SAELens gated SAEs (`architecture: "gated"`: b_gate, b_mag, r_mag beside a shared W_enc), which
  pretrained releases hold, were refused as an unknown architecture by every command. They now load
  in their threshold form (saes/gated.py); here one saved by SAELens's own GatedSAE on GPT-2's
  `blocks.1.hook_resid_post`: `features build` stores what SAELens's GatedSAE computes on the cached
  rows (firing counts and maxima), `steer` edits its latents by the store's typical maxima (add and
  clamp, the latter reading the latent per token through the threshold path), and `train --init-from`
  refuses it naming the architectures that train.
- sparsify transcoders (`transcode: true`, with or without a skip connection W_skip) were refused;
  they are our TopK (skip) transcoders. One of GPT-NeoX's decoder layer `layers.1`, saved by
  `SparseCoder.save_to_disk`, reads blocks.1.hook_resid_pre and predicts blocks.1.hook_resid_post:
  `features build` on a paired cache stores sparsify's own encoding of what the HF layer takes in
  (a forward hook on the HF model, not our cache; reading its output instead would not match), and
  `steer` edits its latents.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from helpers import foreign_saes as fs
from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

HOOK = "blocks.1.hook_resid_post"


def _store_stats(db: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT n_fires, max_act FROM features ORDER BY latent").fetchall()
    return torch.tensor([n for n, _ in rows]), torch.tensor([m for _, m in rows])


def _cached_rows(cache: Path, hook: str) -> torch.Tensor:
    from training.manifest import read_manifest
    from training.shards import load_tensors

    return torch.cat([load_tensors(cache / s.file)[f"acts/{hook}"] for s in read_manifest(cache).shards]).float()


def _saelens_gated_folder(folder: Path, model: Path, rows: torch.Tensor, d_sae: int = 128):
    """SAELens's GatedSAE with random weights, centred and scaled to `rows` as a trained one would be (b_dec
    their mean, gate biases set so a few percent of entries fire), saved by its own `save_model`, recording
    the local checkpoint and the hook."""
    from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig

    d_in = rows.shape[1]
    sl = GatedSAE(GatedSAEConfig(d_in=d_in, d_sae=d_sae))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sl.b_dec.copy_(rows.mean(0))
        sl.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / (d_in**0.5 * (rows - rows.mean(0)).std()))
        sl.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) / d_in**0.5)
        sl.r_mag.copy_(torch.randn(d_sae, generator=g) * 0.3)
        sl.b_mag.copy_(torch.randn(d_sae, generator=g) * 0.2)
        sl.b_gate.copy_(-1.0 - torch.rand(d_sae, generator=g))
    sl.cfg.metadata.hook_name = HOOK
    sl.cfg.metadata.model_name = str(model)
    sl.save_model(str(folder))
    return sl


def test_a_saelens_gated_sae_builds_its_store_steers_and_is_refused_for_training(real_models, real_corpus, tmp_path):
    pytest.importorskip("sae_lens")
    model = real_models.path("gpt2")
    saesteer("cache", "--model", model, "--dataset", real_corpus.jsonl_dir, "--split", "validation",
             "--context-length", 32, "--max-tokens", 1024, "--hooks", HOOK, "--out", tmp_path / "cache",
             "--no-progress").ok()
    rows = _cached_rows(tmp_path / "cache", HOOK)
    sae = tmp_path / "gated"
    sl = _saelens_gated_folder(sae, model, rows)

    saesteer("features", "build", "--sae", sae, "--cache", tmp_path / "cache", "--out", tmp_path / "f.db",
             "--no-progress").ok()
    with torch.no_grad():
        ref = sl.encode(rows)
        near = (((rows - sl.b_dec) @ sl.W_enc + sl.b_gate).abs() < 1e-4).sum(0)  # rounding may decide these
    n_fires, max_act = _store_stats(tmp_path / "f.db")
    ref_fires = (ref > 0).sum(0)
    assert 0 < int(ref_fires.sum()) < ref.numel() // 4
    assert ((n_fires - ref_fires).abs() <= near).all()
    torch.testing.assert_close(max_act, ref.max(0).values.clamp_min(0), rtol=1e-4, atol=1e-4)

    live = int(ref_fires.argmax())
    for edit in (f"{live}:add=2x", f"{live}:clamp=0.5x"):
        r = saesteer("steer", "--sae", sae, "--store", tmp_path / "f.db", "--latent", edit, "--prompt",
                     "def parse(text):\n    return", "--max-new-tokens", 4, "--do-sample", "false", "--json").ok()
        assert json.loads(r.out)["results"][0]["prompt"] == "def parse(text):\n    return"
    r = saesteer("steer", "--sae", sae, "--store", tmp_path / "f.db", "--latent", f"{live}:add=50x", "--prompt",
                 "def parse(text):\n    return", "--max-new-tokens", 4, "--do-sample", "false", "--json").ok()
    (result,) = json.loads(r.out)["results"]
    assert result["steered"] != result["unsteered"]  # the edit reaches the model

    r = saesteer("train", "--cache", tmp_path / "cache", "--init-from", sae, "--total-tokens", 512,
                 "--out", tmp_path / "ft", "--no-progress").no_traceback()
    assert r.rc != 0 and "is a gated SAE" in r.err and "topk" in r.err and "jumprelu" in r.err


# ---------------------------------------------------------------------------------------------
# sparsify transcoders


@pytest.mark.parametrize("hookpoint, hooks", [
    ("layers.1", "blocks.1.hook_resid_pre,blocks.1.hook_resid_post"),
    ("layers.1.mlp", "blocks.1.mlp.hook_in,blocks.1.hook_mlp_out"),
])
def test_a_sparsify_transcoder_reads_its_module_s_input_and_steers_its_output(real_models, real_corpus, tmp_path,
                                                                              hookpoint, hooks):
    """A sparsify transcoder (`transcode: true`, skip connection) of GPT-NeoX's `layers.1` or its MLP (the
    form sparsify's published transcoders take), saved by `SparseCoder.save_to_disk`, was refused; it is
    now our skip transcoder from the module's input hook to its output hook (blocks.1.hook_resid_pre ->
    hook_resid_post; blocks.1.mlp.hook_in, the TransformerBridge's hook of the HF MLP's input, ->
    hook_mlp_out), no --hook needed: `features build` stores sparsify's own encoding of what the HF
    module takes in (a forward hook on the HF model), and `steer` edits its latents."""
    sparsify = pytest.importorskip("sparsify")
    model = real_models.path("neox")
    run = tmp_path / "run"
    torch.manual_seed(0)
    coder = sparsify.SparseCoder(64, sparsify.SparseCoderConfig(num_latents=128, k=4, transcode=True,
                                                                skip_connection=True))
    with torch.no_grad():
        for p in coder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    coder.save_to_disk(run / hookpoint)
    (run / "config.json").write_text(json.dumps({"model": str(model), "hookpoints": [hookpoint]}))

    docs = [d[:200] for d in real_corpus.validation_docs[:6]]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    saesteer("cache", "--model", model, "--dataset", data, "--context-length", 128, "--bos-policy", "none",
             "--hooks", hooks, "--out", tmp_path / "cache", "--no-progress").ok()
    saesteer("features", "build", "--sae", run / hookpoint, "--cache", tmp_path / "cache", "--out",
             tmp_path / "f.db", "--no-progress").ok()
    rows = fs.hf_module_rows_of_cache(model, tmp_path / "cache", hookpoint, side="input").half().float()  # cache: fp16
    with torch.no_grad():
        enc = coder.encode(rows)
    dense = torch.zeros(len(rows), 128).scatter_(-1, enc.top_indices, enc.top_acts.clamp_min(0))
    n_fires, max_act = _store_stats(tmp_path / "f.db")
    assert n_fires.tolist() == (dense > 0).sum(0).tolist()
    torch.testing.assert_close(max_act, dense.max(0).values, rtol=1e-3, atol=1e-3)

    live = int(n_fires.argmax())
    r = saesteer("steer", "--sae", run / hookpoint, "--store", tmp_path / "f.db", "--latent", f"{live}:add=2x",
                 "--prompt", "def parse(text):", "--max-new-tokens", 3, "--do-sample", "false", "--json").ok()
    assert json.loads(r.out)["results"][0]["prompt"] == "def parse(text):"
