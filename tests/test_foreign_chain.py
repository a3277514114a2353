"""SAEs made by other libraries, through the chain a researcher runs on them, as those libraries
write them, on tiny real checkpoints (tests/helpers/real_models.py) and non-toy text (code, prose,
accents, CJK).

- Gemma Scope 2 transcoders through SAELens's registry (`sae_lens:gemma-scope-2-270m-pt-transcoders-all/
  layer_1_...`): SAELens's gemma_3 converter names their input `blocks.N.hook_mlp_in`, which the
  TransformerBridge takes before the pre-MLP RMSNorm (the residual stream); Gemma Scope 2 trained them
  on `model.layers.N.pre_feedforward_layernorm.output` (the config's `hf_hook_name`), the MLP's input.
  They were read at the residual stream, every latent off; now at `blocks.N.mlp.hook_in`, and `features
  build` stores what SAELens's own transcoder encodes from the HF module's output. Their folder in the HF
  cache, given by path, loads as its registry id (it was "not an SAE folder saesteer reads").
- sparsify / dictionary_learning SAEs of an HF MLP module (`layers.N.mlp`, `mlp_out_layer_N`) on a model
  that norms the MLP's output before the residual add (Gemma 2/3, OLMo 2: post_feedforward_layernorm):
  they were read at `blocks.N.hook_mlp_out`, which there is the norm's output (TransformerBridge and
  HookedTransformer alike), not the module's output the library's forward hook read; now at
  `blocks.N.mlp.hook_out` where the model's config says so (a sparsify transcoder's target likewise).
- SAELens folders trained with normalize_activations="expected_average_only_in" whose factor only SAELens's
  registry holds (gemma-2b-res-jb, gpt2-small-mlp-tm): read by path (their HF-cache snapshot) they were read
  as the identity, every input at the wrong scale; the registry's factor is now folded as `SAE.from_pretrained`
  folds it, and one whose factor is nowhere (a copy, an id the registry has none for) is refused.
- Gemma Scope 2 offline: SAELens's gemma_3 converter asks the hub for the cached params.safetensors's
  tensor shapes over HTTP, so a cached SAE was refused as "not in the HF cache"; the shapes now come from
  the cached file.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import foreign_saes as fs
from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

USER_TEXT = [
    "def parse(self, args=None):\n    \"\"\"Parse the arguments.\"\"\"\n    return self._parse(args or [])\n",
    "Le caf\u00e9 de la gare ouvre \u00e0 sept heures ; l'\u00e9t\u00e9, on y d\u00e9jeune dehors.",
    "\u6771\u4eac\u306e\u5929\u6c17\u306f\u6674\u308c\u3067\u3059\u3002 Tokyo is sunny today, said the report.",
]
GS2_REPO = "google/gemma-scope-2-270m-pt"
GS2_TRANSCODER = ("gemma-scope-2-270m-pt-transcoders-all", "layer_1_width_16k_l0_small_affine",
                  "transcoder_all/layer_1_width_16k_l0_small_affine")
MLP_IN, RESID_MID = "blocks.1.mlp.hook_in", "blocks.1.hook_mlp_in"
API = "/api"
MLP_OUT = "blocks.1.mlp.hook_out"  # the HF MLP module's output; Gemma's hook_mlp_out is its post-norm's


def _store_stats(db: Path) -> tuple[list[int], torch.Tensor]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT latent, n_fires, max_act FROM features ORDER BY latent").fetchall()
    return [n for _, n, _ in rows], torch.tensor([m for _, _, m in rows])


def _sae_lens_own(release: str, sae_id: str):
    """SAELens's own SAE of a registry entry, offline (its gemma_3 converter asks the hub for tensor shapes:
    `cached_tensor_shapes` reads them from the cached file, as `resolve_sae` does)."""
    from sae_lens import SAE as SaeLensSAE

    from saes.formats.sae_lens_registry import cached_tensor_shapes

    with cached_tensor_shapes():
        return SaeLensSAE.from_pretrained(release, sae_id, device="cpu")


@pytest.fixture(scope="module")
def gemma3(real_corpus, tmp_path_factory):
    """A tiny Gemma 3 checkpoint with a Gemma-style tokenizer, a text folder of the user's kind, and a
    cache of the MLP's input and output at block 1 (what Gemma Scope 2 transcoders read, what a sparsify SAE on
    `layers.1.mlp` reads)."""
    from helpers.real_models import build_family_tokenizer, save_arch_model, write_jsonl_splits

    work = tmp_path_factory.mktemp("gemma-3")
    tok = build_family_tokenizer("gemma", real_corpus.train_docs)
    model_dir = save_arch_model(work / "gemma-3", "gemma3", tok)
    data = write_jsonl_splits(work / "text", list(USER_TEXT) + list(real_corpus.train_docs[:8]))
    saesteer("cache", "--model", model_dir, "--dataset", data, "--context-length", 48, "--max-tokens", 1024,
             "--hooks", f"{MLP_IN},{MLP_OUT}", "--out", work / "cache", "--no-progress").ok()
    return SimpleNamespace(work=work, model_dir=model_dir, cache=work / "cache")


@pytest.fixture()
def gs2_hub(gemma3, tmp_path, monkeypatch):
    """An offline HF cache holding a Gemma Scope 2 affine transcoder of layer 1 (d_in 64, 128 latents); with
    no network and HF_HUB_OFFLINE, as on a cluster node whose cache was filled beforehand."""
    from huggingface_hub import constants

    release, sae_id, folder = GS2_TRANSCODER
    fs.write_gemma_scope_2(tmp_path / "hub", GS2_REPO, folder, fs.random_gemma_scope_2(64, 128, seed=3, affine=True),
                           layer=1)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return f"sae_lens:{release}/{sae_id}"


def test_a_gemma_scope_2_transcoder_from_the_registry_reads_the_mlp_input(gemma3, gs2_hub, tmp_path):
    """`features build` stores what SAELens's own JumpReLU transcoder encodes from the HF module
    `layers[1].pre_feedforward_layernorm`'s output (taken with a forward hook on the HF model, not from
    our cache); the residual stream that norm takes in (SAELens's hook_mlp_in) would not match."""
    from huggingface_hub import constants

    from saes.formats import resolve_sae

    loaded = resolve_sae(gs2_hub)
    assert loaded.sae.cfg.metadata["hook_name"] == MLP_IN, loaded.sae.cfg.metadata
    # its folder in the HF cache, by path, is the same registry SAE (it was "not an SAE folder saesteer reads")
    snapshot = next((Path(constants.HF_HUB_CACHE) / "models--google--gemma-scope-2-270m-pt" / "snapshots").iterdir())
    assert resolve_sae(snapshot / GS2_TRANSCODER[2]).spec == gs2_hub
    assert loaded.sae.cfg.metadata["hook_name_out"] == "blocks.1.hook_mlp_out"
    assert "pre_feedforward_layernorm" in loaded.provenance["recorded"]["hook_basis"]

    saesteer("features", "build", "--sae", gs2_hub, "--cache", gemma3.cache, "--model", gemma3.model_dir,
             "--out", tmp_path / "f.db", "--no-progress").ok()
    n_fires, max_act = _store_stats(tmp_path / "f.db")
    release, sae_id, _ = GS2_TRANSCODER
    sl = _sae_lens_own(release, sae_id)
    norm = "layers.1.pre_feedforward_layernorm"
    for side, should_match in (("output", True), ("input", False)):  # the norm's input: SAELens's hook_mlp_in
        rows = fs.hf_module_rows_of_cache(gemma3.model_dir, gemma3.cache, norm, side=side).half().float()
        with torch.no_grad():
            acts = sl.encode(rows)
        same = n_fires == (acts > 0).sum(0).tolist() and torch.allclose(max_act, acts.max(0).values.clamp_min(0),
                                                                         rtol=1e-3, atol=1e-3)
        assert same == should_match, side


def test_a_gemma_scope_2_transcoder_given_saelens_s_residual_hook_is_refused_naming_both(gemma3, gs2_hub):
    r = saesteer("features", "build", "--sae", gs2_hub, "--hook", RESID_MID, "--cache", gemma3.cache,
                 "--model", gemma3.model_dir, "--out", gemma3.work / "never.db", "--no-progress")
    assert r.rc != 0 and MLP_IN in r.err and RESID_MID in r.err and "pre_feedforward_layernorm" in r.err, r.text
    r.no_traceback()


def test_a_gemma_scope_2_transcoder_saelens_saved_to_a_folder_reads_the_mlp_input_too(gs2_hub, tmp_path):
    """SAELens's own `save_model` of the registry's transcoder keeps `hf_hook_name` in cfg.json's
    metadata beside `hook_name: blocks.1.hook_mlp_in`; the folder reads the MLP's input as the registry id does."""
    from saes.formats import resolve_sae

    release, sae_id, _ = GS2_TRANSCODER
    _sae_lens_own(release, sae_id).save_model(tmp_path / "tc")
    assert json.loads((tmp_path / "tc" / "cfg.json").read_text())["metadata"]["hook_name"] == RESID_MID
    assert resolve_sae(tmp_path / "tc").sae.cfg.metadata["hook_name"] == MLP_IN


def test_a_sparsify_sae_of_gemma_s_mlp_reads_the_module_s_output_not_the_post_norm(gemma3, tmp_path):
    """sparsify's trainer reads `layers.1.mlp`'s output with a forward hook on the HF module; on Gemma 3 that
    is before post_feedforward_layernorm, which the Bridge's hook_mlp_out comes after. `features build` on
    the hook the SAE names stores sparsify's own encoding of the HF module's output."""
    sparsify = pytest.importorskip("sparsify")
    from saes.formats import resolve_sae

    torch.manual_seed(0)
    coder = sparsify.SparseCoder(64, sparsify.SparseCoderConfig(num_latents=128, k=4))
    with torch.no_grad():
        for p in coder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    coder.save_to_disk(tmp_path / "run" / "layers.1.mlp")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": str(gemma3.model_dir),
                                                              "hookpoints": ["layers.1.mlp"]}))
    assert resolve_sae(tmp_path / "run" / "layers.1.mlp").sae.cfg.metadata["hook_name"] == MLP_OUT
    saesteer("features", "build", "--sae", tmp_path / "run" / "layers.1.mlp", "--cache", gemma3.cache,
             "--out", tmp_path / "f.db", "--no-progress").ok()
    n_fires, max_act = _store_stats(tmp_path / "f.db")
    rows = fs.hf_module_rows_of_cache(gemma3.model_dir, gemma3.cache, "layers.1.mlp").half().float()
    with torch.no_grad():
        enc = coder.encode(rows)
    dense = torch.zeros(len(rows), 128).scatter_(-1, enc.top_indices, enc.top_acts.clamp_min(0))
    assert n_fires == (dense > 0).sum(0).tolist()
    torch.testing.assert_close(max_act, dense.max(0).values, rtol=1e-3, atol=1e-3)

    # dictionary_learning's demo name of the same module, and a sparsify transcoder's target, likewise
    state = fs.random_dictionary_learning("AutoEncoderTopK", 64, 128)
    dl = fs.write_dictionary_learning(tmp_path / "dl" / "trainer_0", "AutoEncoderTopK", state,
                                      lm_name=str(gemma3.model_dir), submodule_name="mlp_out_layer_1")
    assert resolve_sae(dl).sae.cfg.metadata["hook_name"] == MLP_OUT
    state, cfg = fs.random_sparsify(64, 128, k=4, transcode=True)
    tc = fs.write_sparsify(tmp_path / "tc" / "layers.1.mlp", state, cfg, run_config={"model": str(gemma3.model_dir)})
    assert resolve_sae(tc).sae.cfg.metadata["hook_name_out"] == MLP_OUT
    # a model whose config is not on this machine: hook_mlp_out, saying it may not be the module's output
    from saes.errors import SaesteerWarning

    state, cfg = fs.random_sparsify(64, 128, k=4)
    far = fs.write_sparsify(tmp_path / "far" / "layers.1.mlp", state, cfg, run_config={"model": "google/gemma-2-2b"})
    with pytest.warns(SaesteerWarning, match=r"config \(not on this machine.*blocks\.1\.mlp\.hook_out"):
        assert resolve_sae(far).sae.cfg.metadata["hook_name"] == "blocks.1.hook_mlp_out"


def test_a_gemma_scope_2_transcoder_through_label_serve_api_steer_and_eval(gemma3, gs2_hub, tmp_path, monkeypatch):
    """The chain after `features build` on the registry id: the judge labels a latent by its index, the web
    page and the API's edit name that index, `steer` and the API change the text, `eval` reads the MLP's input."""
    from helpers.judge_server import JudgeServer, fake_llm_answer
    from helpers.api_server import api_served, assert_steering_changes_the_completion
    from helpers.web_app import record_server

    pytest.importorskip("openai")
    db = tmp_path / "tc.db"
    saesteer("features", "build", "--sae", gs2_hub, "--cache", gemma3.cache, "--model", gemma3.model_dir,
             "--out", db, "--no-progress").ok()
    n_fires, _ = _store_stats(db)
    latent = max(range(len(n_fires)), key=lambda i: n_fires[i] if n_fires[i] < sum(n_fires) / 16 else -1)
    with JudgeServer(fake_llm_answer) as srv:
        saesteer("label", "--store", db, "--latents", latent, "--judge-model", "judge", "--judge-base-url", srv.url,
                 "--judge-api-key", "k", "--embed-backend", "none", "--no-progress").ok()
        asked = [r for r in srv.snapshot() if r.completed]
    with sqlite3.connect(db) as con:
        (label,), = con.execute("SELECT label FROM labels WHERE latent = ?", (latent,)).fetchall()
    assert asked and label
    prompt = USER_TEXT[0][:40]
    r = saesteer("steer", "--sae", gs2_hub, "--store", db, "--model", gemma3.model_dir, "--latent",
                 f"{latent}:add=8x", "--prompt", prompt, "--max-new-tokens", 8, "--seed", 0, "--json").ok()
    res = json.loads(r.out)["results"][0]
    assert res["steered"] != res["unsteered"], res

    calls = record_server(monkeypatch)
    saesteer("serve", "--store", db, "--model", gemma3.model_dir, "--port", 0).ok()
    (app, kw), = calls
    with api_served(app, kw["port"]) as (srv, client):
        import urllib.request

        import html

        def get(path: str) -> str:
            return urllib.request.urlopen(f"{srv.url}{path}", timeout=60).read().decode()

        (store,) = json.loads(get(f"{API}/stores"))
        feature = json.loads(get(f"{API}/stores/{store['id']}/features/{latent}"))
        summary = feature["summary"]
        assert (summary["latent"], summary["n_fires"]) == (latent, n_fires[latent]), summary
        # the index is SAELens's: its own transcoder's largest activation of that latent on the HF norm's output
        rows = fs.hf_module_rows_of_cache(gemma3.model_dir, gemma3.cache, "layers.1.pre_feedforward_layernorm")
        with torch.no_grad():
            want = _sae_lens_own(*GS2_TRANSCODER[:2]).encode(rows.half().float())
        assert summary["max_act"] == pytest.approx(want[:, latent].max().item(), rel=1e-3, abs=1e-3)
        assert feature["top_examples"][0]["activation"] == pytest.approx(summary["max_act"], rel=1e-3, abs=1e-3)
        page = get(f"/s/{store['id']}/f/{latent}")
        assert html.escape(label) in page and f"#{latent}" in page
        assert_steering_changes_the_completion(client, prompt, latent)
    saesteer("eval", "--sae", gs2_hub, "--model", gemma3.model_dir, "--dataset", gemma3.work / "text",
             "--contexts", 4, "--context-length", 32, "--out", tmp_path / "eval").ok()
    (name, ev), = json.loads((tmp_path / "eval" / "eval.json").read_text())["saes"].items()
    assert ev["hook_name"] == MLP_IN, ev


# ---------------------------------------------------------------------------------------------
# SAELens folders trained with normalize_activations="expected_average_only_in" whose factor only the registry has

JB_REPO, JB_FOLDER, JB_ID = fs.JB_REPO, fs.JB_FOLDER, fs.JB_ID


def test_a_registry_folder_read_by_path_folds_the_registry_s_scaling_factor(tmp_path, monkeypatch):
    """gemma-2b-res-jb's folder says expected_average_only_in and holds no factor: SAELens's registry has it
    (norm_scaling_factor), and `SAE.from_pretrained` folds it. The same folder by path (its HF-cache snapshot)
    was read as the identity, every input at the wrong scale; it now folds the registry's factor, and one
    whose factor is nowhere (a copy outside the cache, an id the registry has no factor for) is refused."""
    import shutil

    from huggingface_hub import constants
    from sae_lens.loading.pretrained_saes_directory import get_norm_scaling_factor

    from saes.formats import resolve_sae
    from saes.io import SAEFormatError

    fs.save_unfolded_saelens_sae(tmp_path / "made")
    unscaled = "gemma_2b_blocks.0.hook_resid_post_16384_anthropic"  # blocks.0.hook_resid_post: no registry factor
    snap = fs.write_hf_snapshot(tmp_path / "hub", JB_REPO, {
        f"{folder}/{f}": tmp_path / "made" / f for folder in (JB_FOLDER, unscaled)
        for f in ("cfg.json", "sae_weights.safetensors")})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    factor = get_norm_scaling_factor(*JB_ID)
    assert factor and abs(factor - 1) > 0.1

    x = torch.randn(32, 16) * 3
    theirs = _sae_lens_own(*JB_ID)  # the registry's factor folded
    assert theirs.cfg.normalize_activations == "none"
    for spec in (snap / JB_FOLDER, f"sae_lens:{JB_ID[0]}/{JB_ID[1]}"):
        loaded = resolve_sae(spec)
        with torch.no_grad():
            torch.testing.assert_close(loaded.sae.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(loaded.sae(x).recon, theirs.decode(theirs.encode(x)), rtol=1e-5, atol=1e-5)
    assert resolve_sae(snap / JB_FOLDER).provenance["source"]["registry_norm_scaling_factor_folded"] == {
        "registry_id": f"sae_lens:{JB_ID[0]}/{JB_ID[1]}", "factor": factor}

    # where the registry has no factor, SAELens warns and runs it unscaled: refused, by id and by path
    with pytest.raises(SAEFormatError, match="expected_average_only_in.*registry has no norm_scaling_factor"):
        resolve_sae(f"sae_lens:{JB_ID[0]}/blocks.0.hook_resid_post")
    with pytest.raises(SAEFormatError, match=f"registry lists no factor for {JB_REPO}/{unscaled}"):
        resolve_sae(snap / unscaled)
    shutil.copytree(snap / JB_FOLDER, tmp_path / "copy")
    with pytest.raises(SAEFormatError, match="expected_average_only_in.*registry id"):
        resolve_sae(tmp_path / "copy")


GS2_SAES = {  # kind: (release, id / folder, the HF module and side its config's hf_hook_point_in names)
    "resid_post": ("gemma-scope-2-270m-pt-res-all", "resid_post_all", "layers.1", "output"),
    "mlp_out": ("gemma-scope-2-270m-pt-mlp-all", "mlp_out_all", "layers.1.post_feedforward_layernorm", "output"),
    "attn_out": ("gemma-scope-2-270m-pt-att-all", "attn_out_all", "layers.1.self_attn.o_proj", "input"),
}


def test_gemma_scope_2_saes_from_the_registry_read_what_their_config_names(gemma3, tmp_path, monkeypatch):
    """Gemma Scope 2's residual, MLP-output and attention SAEs through SAELens's registry: the hook each loads
    with carries, on the Bridge, exactly what its config's HF hook point names (the attention's o_proj input
    is hook_z, heads flattened; the MLP's output is after Gemma's post-MLP norm)."""
    from huggingface_hub import constants

    from saes.formats import resolve_sae
    from training.manifest import read_manifest
    from training.shards import load_tensors

    sae_id = "layer_1_width_16k_l0_small"
    for kind, (_, top, module, side) in GS2_SAES.items():
        fs.write_gemma_scope_2(tmp_path / "hub", GS2_REPO, f"{top}/{sae_id}", fs.random_gemma_scope_2(64, 96), layer=1,
                               hf_hook_point_in=f"model.{module}.{side}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hooks = {kind: resolve_sae(f"sae_lens:{release}/{sae_id}").sae.cfg.metadata["hook_name"]
             for kind, (release, *_) in GS2_SAES.items()}
    assert hooks == {"resid_post": "blocks.1.hook_resid_post", "mlp_out": "blocks.1.hook_mlp_out",
                     "attn_out": "blocks.1.attn.hook_z"}
    saesteer("cache", "--model", gemma3.model_dir, "--dataset", gemma3.work / "text", "--context-length", 32,
             "--max-tokens", 256, "--hooks", ",".join(hooks.values()), "--out", tmp_path / "cache", "--no-progress").ok()
    shards = [load_tensors(tmp_path / "cache" / s.file) for s in read_manifest(tmp_path / "cache").shards]
    for kind, (_, _, module, side) in GS2_SAES.items():
        hf = fs.hf_module_rows_of_cache(gemma3.model_dir, tmp_path / "cache", module, side=side)
        ours = torch.cat([t[f"acts/{hooks[kind]}"] for t in shards]).float().reshape(hf.shape)
        torch.testing.assert_close(ours, hf.half().float(), rtol=2e-3, atol=4e-3, msg=kind)
