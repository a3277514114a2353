"""A fifteenth user path: Gemma-2 with Google's Gemma Scope SAEs, through the CLI, on a tiny
Gemma2ForCausalLM (soft-capped attention and logits, a sliding window, embeddings scaled by
sqrt(d_model); tests/helpers/real_models.py's `save_arch_model`) with a Gemma tokenizer that prepends
BOS, and SAEs written in the exact files Google publishes (`np.savez` params.npz: W_enc, W_dec,
b_enc, b_dec, threshold) inside an HF-cache snapshot of google/gemma-scope-2b-pt-res, as
`hf_hub_download` (and so SAELens's `gemma_2` converter) leaves them. What only this path shows:

- a params.npz in Gemma Scope's layout (`layer_0/width_16k/average_l0_105`, in the HF cache's
  `models--google--gemma-scope-2b-pt-res/snapshots/REV/` or a clone named after the repo) was read as
  recording no hook: `features build` on a cache of several hooks asked for --hook, and a wrong
  --hook (resid_pre for resid_post) was taken silently. Its hook and model now come from SAELens's
  own Gemma Scope config (what `sae_lens:gemma-scope-2b-pt-res-canonical/layer_0/width_16k/canonical`
  reads), a contradicting --hook is refused naming both, and the provenance keeps the repo, folder,
  the registry releases/ids listing it and its Neuronpedia id (gemma-2-2b/0-gemmascope-res-16k);
  the symlink into `blobs/` is no longer resolved away (it lost the repo and folder);
- embedding SAEs (`embedding/width_4k/...`, hook_embed) were trained on Gemma's embeddings before
  their sqrt(d_model) scaling, which hook_embed (TransformerLens, the Bridge, HF) reads after it:
  they were read unscaled - every latent off by sqrt(d_model) in its input (a silent wrong result).
  Now rescaled as SAELens's loader rescales them, equal to SAELens's encode/decode of the same file;
- checked as they are: the cache from the user's text holds HF's own hidden_states (embeddings
  after scaling, block outputs) with BOS first in every context; the store's statistics are
  SAELens's JumpReLUSAE (its converter, its class) on those rows; label (fake judge), steer with
  clamp and add, `saesteer api` with the openai client and `eval` run on it; a copy we save loads in
  SAELens unchanged (prepend_bos kept); an SAE of another width (a 9B-wide one on the 2B-wide model)
  is refused naming both widths, and through SAELens's registry (`sae_lens:gemma-scope-2b-pt-res-
  canonical/...`, whose converter sizes it for gemma-2-2b) a file of other shapes is refused naming
  both shapes (the message was torch's header line, "Error(s) in loading state_dict for JumpReLUSAE:").
- a Gemma Scope transcoder (google/gemma-scope-2b-pt-transcoders: same file names, reads the MLP's
  normalised input, predicts its output) was read as an SAE at the user's --hook: refused, naming its
  hooks; through SAELens's registry it was read at blocks.N.ln2.hook_normalized, which TransformerLens
  takes before the RMSNorm's weight (Gemma Scope trained on the MLP's input, after it): refused too.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers.foreign_saes import random_gemma_scope, write_gemma_scope, write_hf_snapshot
from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

REPO = "google/gemma-scope-2b-pt-res"
LAYER0 = "layer_0/width_16k/average_l0_105"  # what gemma-scope-2b-pt-res-canonical's layer_0/width_16k/canonical is
EMBED = "embedding/width_4k/average_l0_6"
HOOK = "blocks.0.hook_resid_post"
USER_TEXT = [
    "def parse(self, args=None):\n    \"\"\"Parse the arguments.\"\"\"\n    return self._parse(args or [])\n",
    "Le caf\u00e9 de la gare ouvre \u00e0 sept heures ; l'\u00e9t\u00e9, on y d\u00e9jeune dehors.",
    "\u6771\u4eac\u306e\u5929\u6c17\u306f\u6674\u308c\u3067\u3059\u3002 Tokyo is sunny today, said the report.",
]


@pytest.fixture(scope="module")
def gemma(real_corpus, tmp_path_factory):
    from helpers.real_models import GEMMA2_CHAT_TEMPLATE, build_family_tokenizer, save_arch_model, write_jsonl_splits

    work = tmp_path_factory.mktemp("gemma-scope")
    tok = build_family_tokenizer("gemma", real_corpus.train_docs)
    tok.chat_template = GEMMA2_CHAT_TEMPLATE
    model_dir = save_arch_model(work / "gemma-2", "gemma2", tok)
    params = {"l0": random_gemma_scope(64, 128, seed=1), "embed": random_gemma_scope(64, 96, seed=2)}
    params["embed"]["W_enc"] *= 8  # sized for unscaled embeddings (trained before the sqrt(64) scaling)
    snap = write_hf_snapshot(work / "hub", REPO, {
        f"{LAYER0}/params.npz": write_gemma_scope(work / "src" / "l0.npz", params["l0"]),
        f"{EMBED}/params.npz": write_gemma_scope(work / "src" / "embed.npz", params["embed"])})
    data = write_jsonl_splits(work / "text", list(USER_TEXT) + list(real_corpus.train_docs[:12]))
    saesteer("cache", "--model", model_dir, "--dataset", data, "--context-length", 48, "--max-tokens", 2048,
             "--hooks", f"{HOOK},hook_embed", "--out", work / "cache", "--no-progress").ok()
    return SimpleNamespace(work=work, tok=tok, model_dir=model_dir, data=data, hub=work / "hub", params=params,
                           layer0=snap / LAYER0 / "params.npz", embed=snap / EMBED / "params.npz", cache=work / "cache")


def _cache_rows(cache: Path, hook: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(context tokens, seq index, position, rows) of the first shard."""
    from training.manifest import read_manifest
    from training.shards import load_tensors

    man = read_manifest(cache)
    shard = load_tensors(cache / man.shards[0].file)
    first = int(man.shards[0].first_context)
    return (shard["context_tokens"].long(), shard["seq_index"].long() - first, shard["positions"].long(),
            shard[f"acts/{hook}"].float())


def _sae_lens_gemma_scope(gemma, folder: str, monkeypatch):
    """SAELens's own JumpReLUSAE of the file, by its `gemma_2` converter reading the HF cache (the
    widths overridden: the converter sizes for the real gemma-2-2b)."""
    from huggingface_hub import constants
    from sae_lens import SAE as SaeLensSAE
    from sae_lens.loading.pretrained_sae_loaders import gemma_2_sae_huggingface_loader, handle_config_defaulting

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(gemma.hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    p = gemma.params["l0" if folder == LAYER0 else "embed"]
    cfg, state, _ = gemma_2_sae_huggingface_loader(REPO, folder, cfg_overrides={
        "d_in": p["W_enc"].shape[0], "d_sae": p["W_enc"].shape[1]})
    sl = SaeLensSAE.from_dict(handle_config_defaulting(cfg))
    sl.load_state_dict(state)
    return sl.eval(), cfg


def test_the_cache_of_the_users_text_is_the_hf_models_hidden_states_with_bos_first(gemma):
    from transformers import AutoModelForCausalLM

    tokens, seq, pos, embed = _cache_rows(gemma.cache, "hook_embed")
    resid = _cache_rows(gemma.cache, HOOK)[3]
    assert (tokens[:, 0] == gemma.tok.bos_token_id).all()
    assert (tokens[:, 1:] == gemma.tok.bos_token_id).sum() == 0  # no second BOS in a context
    hf = AutoModelForCausalLM.from_pretrained(gemma.model_dir).eval()
    with torch.no_grad():
        states = hf(tokens[:4], output_hidden_states=True).hidden_states
    rows = seq < 4
    for got, want in ((embed, states[0]), (resid, states[1])):  # [0]: embeddings * sqrt(d_model); [1]: block 0's output
        w = want[seq[rows], pos[rows]].float()
        rel = ((got[rows] - w).norm(dim=1) / w.norm(dim=1)).max().item()
        assert rel < 2e-3, rel


def test_a_params_npz_in_gemma_scopes_layout_is_read_with_its_hook_model_and_registry_ids(gemma, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from saes.formats import resolve_sae
    from saes.formats.neuronpedia import neuronpedia_id_of_spec

    loaded = resolve_sae(gemma.layer0)
    md, src = loaded.sae.cfg.metadata, loaded.provenance["source"]
    assert (md["hook_name"], md["model_name"], md["prepend_bos"]) == (HOOK, "gemma-2-2b", True)
    assert src["repo_id"] == REPO and src["folder"] == LAYER0 and loaded.spec == str(gemma.layer0)
    assert {"release": "gemma-scope-2b-pt-res-canonical", "sae_id": "layer_0/width_16k/canonical",
            "neuronpedia_id": "gemma-2-2b/0-gemmascope-res-16k"} in src["registry"]
    assert {"release": "gemma-scope-2b-pt-res", "sae_id": LAYER0} in src["registry"]
    assert src["neuronpedia_id"] == neuronpedia_id_of_spec(str(gemma.layer0)) == "gemma-2-2b/0-gemmascope-res-16k"
    assert src["neuronpedia_url"] == "https://www.neuronpedia.org/gemma-2-2b/0-gemmascope-res-16k"
    # a folder two releases list under two Neuronpedia ids (one SAE): the canonical release's, as Neuronpedia lists it
    both = write_gemma_scope(tmp_path / "gemma-scope-2b-pt-res" / "layer_5/width_1m/average_l0_114/params.npz",
                             gemma.params["l0"])
    assert resolve_sae(both).provenance["source"]["neuronpedia_id"] == "gemma-2-2b/5-gemmascope-res-1m"
    assert neuronpedia_id_of_spec(str(both.parent)) == "gemma-2-2b/5-gemmascope-res-1m"
    # a clone of the repo (no HF cache) reads the same
    clone = write_gemma_scope(tmp_path / "gemma-scope-2b-pt-res" / "layer_3/width_16k/average_l0_5/params.npz",
                              gemma.params["l0"])
    assert resolve_sae(clone).sae.cfg.metadata["hook_name"] == "blocks.3.hook_resid_post"
    # the wrong hook is refused naming both (it was taken)
    r = saesteer("features", "build", "--sae", gemma.layer0, "--hook", "blocks.0.hook_resid_pre", "--cache",
                 gemma.cache, "--out", tmp_path / "wrong.db", "--no-progress")
    assert r.rc == 2 and "blocks.0.hook_resid_post" in r.err and "blocks.0.hook_resid_pre" in r.err, r.err
    r.no_traceback()
    # a 9B-wide SAE on the 2B-wide model
    wide = write_gemma_scope(tmp_path / "gemma-scope-9b-pt-res" / "layer_0/width_16k/average_l0_5/params.npz",
                             random_gemma_scope(96, 32))
    r = saesteer("features", "build", "--sae", wide, "--cache", gemma.cache, "--out", tmp_path / "w.db", "--no-progress")
    assert r.rc == 2 and "96" in r.err and "64" in r.err, r.err
    # the same file through SAELens's registry: its converter sizes it for gemma-2-2b (d_in 2304); the
    # refusal names both shapes (it said only "Error(s) in loading state_dict for JumpReLUSAE:")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(gemma.hub))
    r = saesteer("features", "build", "--sae", "sae_lens:gemma-scope-2b-pt-res-canonical/layer_0/width_16k/canonical",
                 "--cache", gemma.cache, "--out", tmp_path / "reg.db", "--no-progress")
    assert r.rc == 2 and "[64" in r.err and "[2304" in r.err, r.err
    r.no_traceback()


def test_an_embedding_sae_is_rescaled_as_sae_lens_reads_it(gemma, monkeypatch):
    from saes.formats import resolve_sae

    sl, cfg = _sae_lens_gemma_scope(gemma, EMBED, monkeypatch)
    ours = resolve_sae(gemma.embed)
    assert cfg["hook_name"] == ours.sae.cfg.metadata["hook_name"] == "hook_embed"
    x = _cache_rows(gemma.cache, "hook_embed")[3][:256]
    with torch.no_grad():
        want, got = sl.encode(x), ours.sae.encode(x)
        assert (want > 0).float().mean() > 0.02  # some latents fire on the scaled embeddings
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.sae.decode(got), sl.decode(want), rtol=1e-4, atol=1e-4)


def test_an_embedding_sae_copied_out_of_its_repo_is_refused_at_hook_embed(gemma, tmp_path):
    """Copied out of Google's layout it cannot be rescaled as SAELens does (by its folder), and read
    unscaled every latent reads sqrt(d_model) times its training input: it was taken silently."""
    import shutil

    from saes.formats import resolve_sae

    copy = tmp_path / "my-saes" / "params.npz"
    copy.parent.mkdir()
    shutil.copy(gemma.embed, copy)
    r = saesteer("features", "build", "--sae", copy, "--hook", "hook_embed", "--cache", gemma.cache,
                 "--out", tmp_path / "e.db", "--no-progress")
    assert r.rc == 2 and "sqrt(d_model)" in r.err and "embedding/width_4k" in r.err, r.err
    r.no_traceback()
    # in its repo's layout (a clone) it is read, rescaled
    clone = tmp_path / "gemma-scope-2b-pt-res" / EMBED / "params.npz"
    clone.parent.mkdir(parents=True)
    shutil.copy(gemma.embed, clone)
    assert "rescaled" in resolve_sae(clone, hook="hook_embed").provenance["source"]
    # a folder linked to the snapshot's (ln -s .../snapshots/REV/embedding/... ~/embed-sae) is in it
    link = tmp_path / "embed-sae"
    link.symlink_to(gemma.embed.parent, target_is_directory=True)
    assert resolve_sae(link, hook="hook_embed").provenance["source"]["folder"] == EMBED


def test_build_show_label_steer_serve_and_eval_a_gemma_scope_sae(gemma, monkeypatch):
    from helpers.judge_server import JudgeServer, fake_llm_answer
    from helpers.api_server import api_served, assert_steering_changes_the_completion
    from helpers.web_app import record_server

    pytest.importorskip("openai")
    work, db = gemma.work, gemma.work / "gs.db"
    # no --hook: the SAE's place says it, and the cache holds two hooks
    saesteer("features", "build", "--sae", gemma.layer0, "--cache", gemma.cache, "--out", db, "--no-progress").ok()
    sl, _ = _sae_lens_gemma_scope(gemma, LAYER0, monkeypatch)
    rows = _cache_rows(gemma.cache, HOOK)[3]
    with torch.no_grad():
        want_max = sl.encode(rows).max(0).values
    with sqlite3.connect(db) as con:
        got = con.execute("SELECT latent, n_fires, max_act FROM features ORDER BY latent").fetchall()
    torch.testing.assert_close(torch.tensor([m for _, _, m in got]).float()[want_max > 0], want_max[want_max > 0],
                               rtol=2e-3, atol=2e-3)  # the cache is fp16
    latent = max(got, key=lambda r: r[1] if r[1] < len(rows) // 2 else -1)[0]
    assert latent in [i for i, n, _ in got if n > 0]
    assert str(latent) in saesteer("features", "show", db, latent).ok().out
    with JudgeServer(fake_llm_answer) as srv:
        saesteer("label", "--store", db, "--latents", latent, "--judge-model", "judge", "--judge-base-url", srv.url,
                 "--judge-api-key", "k", "--embed-backend", "none", "--no-progress").ok()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM labels WHERE latent = ?", (latent,)).fetchone()[0] == 1
    prompt = "def parse(self, args=None):"
    steered = {}
    for edit in (f"{latent}:add=8x", f"{latent}:clamp=4x"):
        r = saesteer("steer", "--sae", gemma.layer0, "--store", db, "--latent", edit, "--prompt", prompt,
                     "--max-new-tokens", 10, "--seed", 0, "--json").ok()
        res = json.loads(r.out)["results"][0]
        assert res["prompt"] == prompt and res["steered"] != res["unsteered"], (edit, res)
        steered[edit] = res["steered"]
    # the latent as Neuronpedia names it (its page's id), on the params.npz given by path (it was refused:
    # "latent ... is not of a --sae given ('sae' is not on Neuronpedia)")
    r = saesteer("steer", "--sae", gemma.layer0, "--store", db, "--latent",
                 f"gemma-2-2b/0-gemmascope-res-16k/{latent}:add=8x", "--prompt", prompt, "--max-new-tokens", 10,
                 "--seed", 0, "--json").ok()
    assert json.loads(r.out)["results"][0]["steered"] == steered[f"{latent}:add=8x"]
    calls = record_server(monkeypatch)
    saesteer("api", "--store", db, "--port", 0).ok()
    (app, kw), = calls
    with api_served(app, kw["port"]) as (_, client):
        assert_steering_changes_the_completion(client, prompt, latent)
    r = saesteer("eval", "--sae", gemma.layer0, "--model", gemma.model_dir, "--dataset", gemma.data, "--contexts", 4,
                 "--context-length", 48, "--out", work / "eval").ok()
    doc = json.loads((work / "eval" / "eval.json").read_text())
    (name, ev), = doc["saes"].items()
    assert ev["source"]["neuronpedia_id"] == "gemma-2-2b/0-gemmascope-res-16k" and ev["hook_name"] == HOOK
    assert ev["metrics"]["explained_variance"] is not None


def test_our_saved_copy_loads_in_sae_lens_unchanged(gemma, tmp_path, monkeypatch):
    from sae_lens import SAE as SaeLensSAE

    from saes.formats import resolve_sae
    from saes.io import save_sae

    loaded = resolve_sae(gemma.layer0)
    folder = save_sae(loaded.sae, tmp_path / "copy", loaded.provenance)
    copy = SaeLensSAE.load_from_disk(str(folder), device="cpu")
    assert (copy.cfg.metadata.hook_name, copy.cfg.metadata.prepend_bos) == (HOOK, True)
    sl, _ = _sae_lens_gemma_scope(gemma, LAYER0, monkeypatch)
    x = _cache_rows(gemma.cache, HOOK)[3][:256]
    with torch.no_grad():
        torch.testing.assert_close(copy.encode(x), sl.encode(x))


def test_the_jumprelu_at_its_edges_is_gemma_scopes_and_sae_lenss(gemma, tmp_path, monkeypatch):
    """pre exactly at the threshold does not fire (pre > threshold); a negative threshold does not let
    a negative pre through (relu): ours, SAELens's JumpReLUSAE and the Gemma Scope tutorial agree."""
    from helpers.foreign_saes import gemma_scope_reference

    from saes.formats import resolve_sae

    p = {k: v.clone() for k, v in gemma.params["l0"].items()}
    p["W_enc"][:, :8] = 0  # latents 0-7: pre = b_enc for every input
    p["b_enc"][:4], p["threshold"][:4] = 0.25, 0.25  # exactly at the threshold
    p["b_enc"][4:8], p["threshold"][4:8] = -0.1, -0.2  # above a negative threshold, below zero
    snap = write_hf_snapshot(tmp_path / "hub", REPO, {f"{LAYER0}/params.npz": write_gemma_scope(tmp_path / "p.npz", p)})
    monkeypatch.setattr(gemma, "hub", tmp_path / "hub")
    monkeypatch.setattr(gemma, "params", {**gemma.params, "l0": p})
    sl, _ = _sae_lens_gemma_scope(gemma, LAYER0, monkeypatch)
    ours = resolve_sae(snap / LAYER0 / "params.npz").sae
    x = _cache_rows(gemma.cache, HOOK)[3][:256]
    with torch.no_grad():
        want, _ = gemma_scope_reference(p, x)
        assert (want[:, :8] == 0).all() and (want[:, 8:] > 0).any()
        torch.testing.assert_close(sl.encode(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.encode(x), want, rtol=1e-5, atol=1e-5)


def test_a_gemma_scope_transcoder_is_not_read_as_an_sae(gemma, tmp_path):
    """google/gemma-scope-2b-pt-transcoders holds params.npz of the same names: read as an SAE at the
    user's --hook it reconstructed the wrong activations; refused, naming its hooks and the hook it reads."""
    folder = "layer_0/width_16k/average_l0_76"
    snap = write_hf_snapshot(tmp_path / "hub", "google/gemma-scope-2b-pt-transcoders",
                             {f"{folder}/params.npz": write_gemma_scope(tmp_path / "tc.npz", gemma.params["l0"])})
    r = saesteer("features", "build", "--sae", snap / folder / "params.npz", "--hook", HOOK, "--cache", gemma.cache,
                 "--out", tmp_path / "tc.db", "--no-progress")
    assert r.rc == 2 and "transcoder" in r.err and "blocks.0.hook_mlp_out" in r.err, r.err
    assert "blocks.0.mlp.hook_in" in r.err
    r.no_traceback()


def _small_transcoder_config(monkeypatch, d_in: int, d_sae: int) -> None:
    """SAELens's Gemma Scope transcoder converter sized for the tiny files (it sizes for gemma-2-2b)."""
    from sae_lens.loading import pretrained_sae_loaders as loaders

    real = loaders.get_gemma_2_transcoder_config_from_hf
    monkeypatch.setattr(loaders, "get_gemma_2_transcoder_config_from_hf", lambda *a, **kw: {
        **real(*a, **kw), "d_in": d_in, "d_out": d_in, "d_sae": d_sae})


def test_a_gemma_scope_transcoder_is_refused_through_sae_lenss_registry_too(gemma, tmp_path, monkeypatch):
    """SAELens's converter reads google/gemma-scope-2b-pt-transcoders at blocks.N.ln2.hook_normalized,
    which TransformerLens (and the Bridge) take before the RMSNorm's weight; Gemma Scope trained them on
    the MLP's input, after it. Loaded through the registry it read the wrong input silently."""
    from huggingface_hub import constants

    from saes.formats import resolve_sae
    from saes.io import SAEFormatError

    folder = "layer_0/width_16k/average_l0_76"
    write_hf_snapshot(tmp_path / "hub", "google/gemma-scope-2b-pt-transcoders",
                      {f"{folder}/params.npz": write_gemma_scope(tmp_path / "tc.npz", gemma.params["l0"])})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _small_transcoder_config(monkeypatch, 64, 128)
    with pytest.raises(SAEFormatError) as e:
        resolve_sae(f"sae_lens:gemma-scope-2b-pt-transcoders/{folder}")
    assert "blocks.0.ln2.hook_normalized" in str(e.value) and "blocks.0.mlp.hook_in" in str(e.value), e.value
    assert "weight" in str(e.value)
