"""Other libraries' SAE files load into our classes with the same encode/decode as the library.

Each format is checked twice: against files written exactly as the producing code writes them and
reference encoders written from its source (runs everywhere), and, where the library is
installed (`pip install --no-deps eai-sparsify dictionary-learning`, see docs/formats.md), against
the library itself: it writes the files and computes the activations we must reproduce.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import re
from pathlib import Path

import pytest
import torch

from helpers import foreign_saes as fs
from saes.formats import LoadedSAE, detect_format, resolve_sae, tl_hook_for_module
from saes.io import SAEFormatError

D, F = 16, 64
TOL = {"rtol": 1e-5, "atol": 1e-5}
X = torch.randn(48, D, generator=torch.Generator().manual_seed(3)) * 1.5


def assert_same(loaded: LoadedSAE, acts_ref: torch.Tensor, recon_ref: torch.Tensor, x: torch.Tensor = X) -> None:
    with torch.no_grad():
        out = loaded.sae(x)
        torch.testing.assert_close(loaded.sae.encode(x), acts_ref, **TOL)
        torch.testing.assert_close(out.recon, recon_ref, **TOL)
        torch.testing.assert_close(loaded.sae.decode(acts_ref), recon_ref, **TOL)  # decode alone, dense input
    assert (acts_ref != 0).any(), "a reference that never fires would not test the encoder"


# ------------------------------------------------------------------------------------ sparsify
def test_sparsify_folder_encodes_and_decodes_as_sparsify(tmp_path: Path) -> None:
    state, cfg = fs.random_sparsify(D, F, k=5)
    folder = fs.write_sparsify(tmp_path / "run" / "layers.2", state, cfg,
                               run_config={"model": "EleutherAI/pythia-70m", "dataset": "x"})
    loaded = resolve_sae(folder)
    assert loaded.format == "sparsify" and loaded.spec == str(folder.resolve())
    assert loaded.sae.architecture == "topk" and loaded.sae.cfg.k == 5
    assert_same(loaded, *fs.sparsify_reference(state, cfg, X))
    md = loaded.sae.cfg.metadata
    assert md["hook_name"] == "blocks.2.hook_resid_post" and md["model_name"] == "EleutherAI/pythia-70m"
    src = loaded.provenance["source"]
    assert src["hookpoint"] == "layers.2" and set(src["files"]) == {"cfg.json", "sae.safetensors"}
    assert not hasattr(loaded.sae, "provenance")  # beside the SAE, never on it


def test_sparsify_library_writes_what_we_load_and_reads_what_we_write(tmp_path: Path) -> None:
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(0)
    coder = sparsify.SparseCoder(D, sparsify.SparseCoderConfig(num_latents=F, k=6))
    with torch.no_grad():
        for p in coder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    coder.save_to_disk(tmp_path / "lib" / "h.1")
    loaded = resolve_sae(tmp_path / "lib" / "h.1", model="gpt2")
    with torch.no_grad():
        enc = coder.encode(X)
        dense = torch.zeros(X.shape[0], F).scatter_(-1, enc.top_indices, enc.top_acts)
        assert_same(loaded, dense, coder.decode(enc.top_acts, enc.top_indices))
        torch.testing.assert_close(loaded.sae(X).recon, coder(X).sae_out, **TOL)
    assert loaded.sae.cfg.metadata == {"hook_name": "blocks.1.hook_resid_post", "model_name": "gpt2"}
    # our writer's files load in sparsify, whose outputs are the reference's: writer and reference are right
    state, cfg = fs.random_sparsify(D, F, k=3, seed=4)
    fs.write_sparsify(tmp_path / "ours" / "layers.0", state, cfg)
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "ours" / "layers.0")
    with torch.no_grad():
        ref_acts, ref_recon = fs.sparsify_reference(state, cfg, X)
        torch.testing.assert_close(theirs(X).sae_out, ref_recon, **TOL)


@pytest.mark.parametrize("change, message", [
    ({"activation": "groupmax"}, "groupmax"), ({"skip_connection": True}, "skip connections .* of an SAE"),
    ({"num_latents": F * 2}, "do not belong together"),
])
def test_sparsify_features_we_cannot_represent_are_refused(tmp_path: Path, change, message) -> None:
    state, cfg = fs.random_sparsify(D, F, k=4)
    fs.write_sparsify(tmp_path / "layers.1", state, {**cfg, **change})
    with pytest.raises(SAEFormatError, match=message):
        resolve_sae(tmp_path / "layers.1")


@pytest.mark.parametrize("skip", [False, True])
def test_a_sparsify_transcoder_predicts_as_sparsify_from_the_layer_s_input(tmp_path: Path, skip) -> None:
    """`transcode: true` at a decoder layer: its input (resid_pre) predicts its output (resid_post);
    no b_dec centring, and with a skip connection x @ W_skip.T added (our skip transcoder)."""
    state, cfg = fs.random_sparsify(D, F, k=5, transcode=True, skip=skip)
    folder = fs.write_sparsify(tmp_path / "run" / "layers.2", state, cfg, run_config={"model": "org/m"})
    loaded = resolve_sae(folder)
    sae = loaded.sae
    assert sae.is_transcoder and sae.architecture == "topk" and (sae.W_skip is not None) == skip
    assert not sae.cfg.apply_b_dec_to_input and sae.d_out == D
    md = sae.cfg.metadata
    assert (md["hook_name"], md["hook_name_out"]) == ("blocks.2.hook_resid_pre", "blocks.2.hook_resid_post")
    acts_ref, out_ref = fs.sparsify_reference(state, cfg, X)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(X), acts_ref, **TOL)
        torch.testing.assert_close(sae(X).recon, out_ref, **TOL)
    with pytest.raises(SAEFormatError, match="records hook point blocks.2.hook_resid_pre"):
        resolve_sae(folder, hook="blocks.2.hook_resid_post")


def test_a_sparsify_library_transcoder_loads_with_its_own_forward(tmp_path: Path) -> None:
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(0)
    coder = sparsify.SparseCoder(D, sparsify.SparseCoderConfig(num_latents=F, k=6, transcode=True,
                                                               skip_connection=True))
    with torch.no_grad():
        for p in coder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    coder.save_to_disk(tmp_path / "lib" / "layers.1")
    sae = resolve_sae(tmp_path / "lib" / "layers.1").sae
    with torch.no_grad():
        out = coder(X)
        dense = torch.zeros(len(X), F).scatter_(-1, out.latent_indices, out.latent_acts)
        torch.testing.assert_close(sae.encode(X), dense, **TOL)
        torch.testing.assert_close(sae(X).recon, out.sae_out, **TOL)


def test_a_sparsify_mlp_transcoder_reads_the_bridge_s_mlp_input_hook(tmp_path: Path) -> None:
    """An MLP's input (its norm's output, weight applied) is TransformerBridge's `blocks.N.mlp.hook_in`
    (tests/test_user_paths9.py checks it against the HF module's input); a module whose input has no
    derived hook needs --hook, one whose output has none is refused."""
    state, cfg = fs.random_sparsify(D, F, k=4, transcode=True)
    folder = fs.write_sparsify(tmp_path / "layers.1.mlp", state, cfg)
    md = resolve_sae(folder).sae.cfg.metadata
    assert (md["hook_name"], md["hook_name_out"]) == ("blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out")
    with pytest.raises(SAEFormatError, match="records hook point blocks.1.mlp.hook_in"):
        resolve_sae(folder, hook="blocks.1.ln2.hook_normalized")  # the norm's output before its weight
    fs.write_sparsify(tmp_path / "embed_tokens", state, cfg)
    with pytest.raises(SAEFormatError, match=r"'embed_tokens''s output \(hook_embed\).*pass --hook"):
        resolve_sae(tmp_path / "embed_tokens")
    fs.write_sparsify(tmp_path / "layers.1.self_attn.o_proj", state, cfg)
    with pytest.raises(SAEFormatError, match="no exact TransformerLens hook point .*SAELens transcoder folders"):
        resolve_sae(tmp_path / "layers.1.self_attn.o_proj", hook="blocks.1.hook_z")


def test_sparsify_missing_tensor_and_hook_rules(tmp_path: Path) -> None:
    state, cfg = fs.random_sparsify(D, F, k=4)
    fs.write_sparsify(tmp_path / "a" / "layers.1", {k: v for k, v in state.items() if k != "b_dec"}, cfg)
    with pytest.raises(SAEFormatError, match="missing b_dec"):
        resolve_sae(tmp_path / "a" / "layers.1")
    fs.write_sparsify(tmp_path / "b" / "layers.1", state, cfg)
    with pytest.raises(SAEFormatError, match=r"blocks\.1\.hook_resid_post .*--hook says blocks\.3"):
        resolve_sae(tmp_path / "b" / "layers.1", hook="blocks.3.hook_resid_post")
    # a hookpoint without an exact TransformerLens counterpart: the user's --hook is recorded
    fs.write_sparsify(tmp_path / "c" / "layers.1.self_attn.o_proj", state, cfg)
    assert "hook_name" not in resolve_sae(tmp_path / "c" / "layers.1.self_attn.o_proj").sae.cfg.metadata
    given = resolve_sae(tmp_path / "c" / "layers.1.self_attn.o_proj", hook="blocks.1.hook_attn_out", model="m")
    assert given.sae.cfg.metadata["hook_name"] == "blocks.1.hook_attn_out"
    assert given.provenance["given"] == {"model": "m", "hook_name": "blocks.1.hook_attn_out"}
    # a run directory names its hookpoints
    with pytest.raises(SAEFormatError, match="sparsify run .*layers.1"):
        resolve_sae(tmp_path / "b")


@pytest.mark.parametrize("module, hook", [
    ("layers.3", "blocks.3.hook_resid_post"), ("h.11", "blocks.11.hook_resid_post"),
    ("gpt_neox.layers.0", "blocks.0.hook_resid_post"), ("layers.4.mlp", "blocks.4.hook_mlp_out"),
    ("embed_tokens", "hook_embed"), ("layers.2.self_attn", "blocks.2.hook_attn_out"),
    ("transformer.h.0.attn", "blocks.0.hook_attn_out"), ("gpt_neox.layers.1.attention", "blocks.1.hook_attn_out"),
    ("layers.2.mlp.act_fn", None), ("layers.2.self_attn.o_proj", None),
])
def test_hf_module_paths_map_to_hook_points(module, hook) -> None:
    assert tl_hook_for_module(module) == hook


# ---------------------------------------------------------------------------- dictionary_learning
DL_CLASSES = ["AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder",
              "GatedAutoEncoder"]
OUR_ARCH = {"AutoEncoder": "standard", "AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk",
            "MatryoshkaBatchTopKSAE": "matryoshka_batchtopk", "JumpReluAutoEncoder": "jumprelu",
            "GatedAutoEncoder": "gated"}


@pytest.mark.parametrize("dict_class", DL_CLASSES)
def test_dictionary_learning_files_encode_and_decode_as_the_library(tmp_path: Path, dict_class: str) -> None:
    state = fs.random_dictionary_learning(dict_class, D, F, k=5, group_sizes=(16, 48))
    folder = fs.write_dictionary_learning(tmp_path / "trainer_0", dict_class, state, k=5)
    loaded = resolve_sae(folder)
    assert loaded.format == "dictionary_learning" and loaded.sae.architecture == OUR_ARCH[dict_class]
    assert_same(loaded, *fs.dictionary_learning_reference(dict_class, state, X))
    assert loaded.sae.cfg.metadata["hook_name"] == "blocks.1.hook_resid_post"
    assert loaded.sae.cfg.metadata["model_name"] == "org/model"
    if dict_class == "MatryoshkaBatchTopKSAE":
        assert loaded.sae.levels == [16, 64]
    if dict_class == "AutoEncoder":  # the library's loader moves decoder norms into the encoder; so do we
        assert loaded.provenance["source"]["decoder_norm_folded"] is True
        torch.testing.assert_close(loaded.sae.W_dec.norm(dim=1), torch.ones(F))


@pytest.fixture(scope="module")
def dl_trained(tmp_path_factory) -> Path:
    """Seven dictionaries trained for a few steps by dictionary_learning's own trainSAE."""
    pytest.importorskip("dictionary_learning")
    from dictionary_learning.dictionary import AutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer
    from dictionary_learning.trainers.gdm import GatedSAETrainer
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainer, StandardTrainerAprilUpdate
    from dictionary_learning.trainers.top_k import TopKTrainer
    from dictionary_learning.training import trainSAE

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("dl")
    common = dict(steps=30, activation_dim=D, dict_size=F, layer=1, lm_name="org/model", device="cpu",
                  submodule_name="resid_post_layer_1", warmup_steps=2)
    configs = [
        dict(trainer=StandardTrainer, dict_class=AutoEncoder, sparsity_warmup_steps=2, **common),
        dict(trainer=StandardTrainerAprilUpdate, dict_class=AutoEncoder, sparsity_warmup_steps=2, **common),
        dict(trainer=TopKTrainer, k=4, threshold_start_step=5, **common),
        dict(trainer=BatchTopKTrainer, k=4, threshold_start_step=5, **common),
        dict(trainer=MatryoshkaBatchTopKTrainer, k=4, group_fractions=[0.25, 0.75], threshold_start_step=5, **common),
        dict(trainer=JumpReluTrainer, sparsity_warmup_steps=2, **common),
        dict(trainer=GatedSAETrainer, sparsity_warmup_steps=2, lr=1e-2, **common),
    ]
    data = (torch.randn(128, D) for _ in range(100))
    trainSAE(data, configs, steps=30, save_dir=str(out), device="cpu")
    return out


@pytest.mark.parametrize("index", range(7))
def test_dictionary_learning_library_trains_what_we_load(dl_trained: Path, index: int) -> None:
    from dictionary_learning.utils import load_dictionary

    folder = dl_trained / f"trainer_{index}"
    theirs, config = load_dictionary(str(folder), "cpu")
    loaded = resolve_sae(folder)
    with torch.no_grad():
        f = theirs.encode(X)
        assert_same(loaded, f, theirs.decode(f))
    assert loaded.provenance["source"]["dict_class"] == config["trainer"]["dict_class"]
    if config["trainer"]["trainer_class"] == "StandardTrainerAprilUpdate":  # unconstrained decoder: folded on load
        assert loaded.provenance["source"]["decoder_norm_folded"] is True


def test_dictionary_learning_library_reads_what_our_writer_writes(tmp_path: Path) -> None:
    pytest.importorskip("dictionary_learning")
    from dictionary_learning.utils import load_dictionary

    for dict_class in DL_CLASSES:
        state = fs.random_dictionary_learning(dict_class, D, F, k=5, group_sizes=(16, 48))
        folder = fs.write_dictionary_learning(tmp_path / dict_class, dict_class, state, k=5)
        theirs, _ = load_dictionary(str(folder), "cpu")
        ref_f, ref_recon = fs.dictionary_learning_reference(dict_class, state, X)
        with torch.no_grad():
            torch.testing.assert_close(theirs.encode(X), ref_f, **TOL)
            torch.testing.assert_close(theirs.decode(theirs.encode(X)), ref_recon, **TOL)


class _Planted:
    """Unpickling this would create a file: proof that nothing in a refused pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickles_that_are_not_plain_state_dicts_are_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    bad = tmp_path / "evil"
    bad.mkdir()
    torch.save({"encoder.weight": torch.zeros(2, 2), "payload": _Planted(marker)}, bad / "ae.pt")
    with pytest.raises(SAEFormatError, match="not a plain state dict.*refused without running") as refused:
        resolve_sae(bad)
    assert not marker.exists()
    # the message says what the file holds, not torch's preamble suggesting weights_only=False
    assert re.search(r"GLOBAL (io|builtins)\.open", str(refused.value)) and "False" not in str(refused.value)
    # the same object through plain pickle (not torch's zip format) is refused too
    (bad / "ae.pt").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(SAEFormatError, match="refused without running"):
        resolve_sae(bad / "ae.pt")
    assert not marker.exists()
    # loadable with weights_only, but not {name: tensor}
    torch.save({"encoder.weight": torch.zeros(2, 2), "step": 5}, bad / "ae.pt")
    with pytest.raises(SAEFormatError, match="entries step are not tensors"):
        resolve_sae(bad)
    torch.save([torch.zeros(2)], bad / "ae.pt")
    with pytest.raises(SAEFormatError, match="holds a list"):
        resolve_sae(bad)


def test_dictionary_learning_bad_inputs_are_clear(tmp_path: Path) -> None:
    state = fs.random_dictionary_learning("AutoEncoderTopK", D, F, k=4)
    fs.write_dictionary_learning(tmp_path / "a", "AutoEncoderTopK", {k: v for k, v in state.items() if k != "b_dec"})
    with pytest.raises(SAEFormatError, match="needs tensors .*missing b_dec"):
        resolve_sae(tmp_path / "a")
    fs.write_dictionary_learning(tmp_path / "b", "AutoEncoderTopK", state, config=False)
    with pytest.raises(SAEFormatError, match="AutoEncoderTopK or a BatchTopKSAE"):
        resolve_sae(tmp_path / "b")
    fs.write_dictionary_learning(tmp_path / "c", "AutoEncoderTopK", state, k=7)
    with pytest.raises(SAEFormatError, match="k=7 but ae.pt holds k=4"):
        resolve_sae(tmp_path / "c")
    fs.write_dictionary_learning(tmp_path / "d", "AutoEncoderTopK", state)
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    cfg["trainer"]["dict_class"] = "AutoEncoderNew"
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match="AutoEncoderNew' is not supported"):
        resolve_sae(tmp_path / "d")
    # without config.json, an unambiguous state dict still loads; then the model and hook come from the user
    jr = fs.random_dictionary_learning("JumpReluAutoEncoder", D, F)
    fs.write_dictionary_learning(tmp_path / "e", "JumpReluAutoEncoder", jr, config=False)
    loaded = resolve_sae(tmp_path / "e", hook="blocks.0.hook_resid_post", model="org/m")
    assert loaded.sae.cfg.metadata == {"hook_name": "blocks.0.hook_resid_post", "model_name": "org/m"}
    assert_same(loaded, *fs.dictionary_learning_reference("JumpReluAutoEncoder", jr, X))


# ---------------------------------------------------------------------------------- Gemma Scope
def test_gemma_scope_npz_is_the_tutorials_jumprelu(tmp_path: Path) -> None:
    params = fs.random_gemma_scope(D, F)
    npz = fs.write_gemma_scope(tmp_path / "layer_1" / "width_16k" / "average_l0_5" / "params.npz", params)
    bare = resolve_sae(npz.parent)
    assert "hook_name" not in bare.sae.cfg.metadata  # the file records neither model nor hook
    loaded = resolve_sae(npz, hook="blocks.1.hook_resid_post", model="gemma-2-2b")
    assert loaded.format == "gemma_scope" and loaded.sae.architecture == "jumprelu"
    assert not loaded.sae.cfg.apply_b_dec_to_input
    assert_same(loaded, *fs.gemma_scope_reference(params, X))
    assert loaded.provenance["given"] == {"model": "gemma-2-2b", "hook_name": "blocks.1.hook_resid_post"}


def test_gemma_scope_agrees_with_sae_lens_reading_the_same_npz(tmp_path: Path, monkeypatch) -> None:
    """SAELens's own Gemma Scope loader reads the params.npz from a (fake) HF cache, offline."""
    from huggingface_hub import constants
    from sae_lens import SAE as SaeLensSAE
    from sae_lens.loading.pretrained_sae_loaders import gemma_2_sae_huggingface_loader, handle_config_defaulting

    params = fs.random_gemma_scope(D, F, seed=2)
    npz = fs.write_gemma_scope(tmp_path / "params.npz", params)
    cache = tmp_path / "hub"
    fs.write_hf_snapshot(cache, "google/gemma-scope-2b-pt-res", {"layer_1/width_16k/average_l0_5/params.npz": npz})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg, state, _ = gemma_2_sae_huggingface_loader("google/gemma-scope-2b-pt-res", "layer_1/width_16k/average_l0_5",
                                                   cfg_overrides={"d_in": D, "d_sae": F})
    sl = SaeLensSAE.from_dict(handle_config_defaulting(cfg))  # as SAE.from_pretrained does
    sl.load_state_dict(state)
    ours = resolve_sae(npz, hook=cfg["hook_name"])
    with torch.no_grad():
        assert_same(ours, sl.encode(X), sl.decode(sl.encode(X)))


def test_gemma_scope_bad_files(tmp_path: Path) -> None:
    import numpy as np

    params = fs.random_gemma_scope(D, F)
    fs.write_gemma_scope(tmp_path / "a" / "params.npz", {k: v for k, v in params.items() if k != "threshold"})
    with pytest.raises(SAEFormatError, match="missing threshold"):
        resolve_sae(tmp_path / "a")
    (tmp_path / "b").mkdir()
    np.savez(tmp_path / "b" / "params.npz", W_enc=np.array([object()], dtype=object))
    with pytest.raises(SAEFormatError, match="not a readable .npz"):
        resolve_sae(tmp_path / "b")
    fs.write_gemma_scope(tmp_path / "c" / "params.npz", {**params, "W_dec": params["W_dec"][:, :8]})
    with pytest.raises(SAEFormatError, match="W_dec has shape"):
        resolve_sae(tmp_path / "c")


# ------------------------------------------------------------------------- SAELens's registry
@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch) -> Path:
    """An HF hub cache in a temporary folder, offline: what `hf_hub_download` reads."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _sae_lens_folder(path: Path, arch: str = "standard", hook: str = "blocks.0.hook_resid_pre", d_in: int = D) -> Path:
    from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    if arch == "abstopk":  # imported only here: sae-lens 6.50, our lowest, has no abstopk_sae
        from sae_lens.saes.abstopk_sae import AbsTopKSAE as cls, AbsTopKSAEConfig as cfg_cls
    else:
        cls, cfg_cls = {"standard": (StandardSAE, StandardSAEConfig), "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
                        "gated": (GatedSAE, GatedSAEConfig)}[arch]
    sl = cls(cfg_cls(d_in=d_in, d_sae=F, **({"k": 4} if arch == "abstopk" else {})))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in sl.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    sl.cfg.metadata.hook_name = hook
    sl.cfg.metadata.model_name = "gpt2-small"
    sl.save_model(path)
    return path


def test_registry_id_loads_through_sae_lens_from_the_hf_cache_offline(tmp_path: Path, hub_cache: Path) -> None:
    from sae_lens import SAE as SaeLensSAE

    folder = _sae_lens_folder(tmp_path / "made")
    fs.write_hf_snapshot(hub_cache, "jbloom/GPT2-Small-SAEs-Reformatted", {
        "blocks.0.hook_resid_pre/cfg.json": folder / "cfg.json",
        "blocks.0.hook_resid_pre/sae_weights.safetensors": folder / "sae_weights.safetensors",
    }, revision="c" * 40)
    spec = "sae_lens:gpt2-small-res-jb/blocks.0.hook_resid_pre"
    assert detect_format(spec) == "sae_lens_registry"
    loaded = resolve_sae(spec)
    sl = SaeLensSAE.from_pretrained("gpt2-small-res-jb", "blocks.0.hook_resid_pre")
    with torch.no_grad():
        assert_same(loaded, sl.encode(X), sl.decode(sl.encode(X)))
    src = loaded.provenance["source"]
    assert src["repo_id"] == "jbloom/GPT2-Small-SAEs-Reformatted" and src["revision"] == "c" * 40
    assert loaded.spec == spec and loaded.sae.cfg.metadata["hook_name"] == "blocks.0.hook_resid_pre"
    # the release's recorded model settings travel with it (the SAE reads a processed model's activations)
    assert loaded.provenance["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
    with pytest.raises(SAEFormatError, match="records hook point blocks.0.hook_resid_pre"):
        resolve_sae(spec, hook="blocks.1.hook_resid_pre")
    from saes.interop import load_pretrained  # the Python API's registry loader takes the same path

    torch.testing.assert_close(load_pretrained("gpt2-small-res-jb", "blocks.0.hook_resid_pre").encode(X),
                               loaded.sae.encode(X))


def test_registry_errors_name_the_cache_and_the_fix(tmp_path: Path, hub_cache: Path) -> None:
    with pytest.raises(SAEFormatError, match=f"not in the HF cache at {hub_cache}.*HF_HUB_OFFLINE"):
        resolve_sae("sae_lens:gpt2-small-res-jb/blocks.3.hook_resid_pre")
    with pytest.raises(SAEFormatError, match="not found in release"):
        resolve_sae("sae_lens:gpt2-small-res-jb/no-such-id")
    with pytest.raises(SAEFormatError, match="not a release of SAELens's registry"):
        resolve_sae("sae_lens:no-such-release/x")
    with pytest.raises(SAEFormatError, match="expected sae_lens:RELEASE/SAE_ID"):
        resolve_sae("sae_lens:gpt2-small-res-jb")


def test_registry_repo_form_and_a_gated_sae(tmp_path: Path, hub_cache: Path) -> None:
    folder = _sae_lens_folder(tmp_path / "made", arch="jumprelu", hook="blocks.1.hook_resid_post")
    fs.write_hf_snapshot(hub_cache, "someone/toy-saes", {"l1/cfg.json": folder / "cfg.json",
                                                          "l1/sae_weights.safetensors": folder / "sae_weights.safetensors"})
    loaded = resolve_sae("sae_lens:someone/toy-saes/l1")
    assert loaded.sae.architecture == "jumprelu" and loaded.provenance["source"]["release"] == "someone/toy-saes"
    gated = _sae_lens_folder(tmp_path / "gated", arch="gated")
    fs.write_hf_snapshot(hub_cache, "someone/gated", {"g/cfg.json": gated / "cfg.json",
                                                       "g/sae_weights.safetensors": gated / "sae_weights.safetensors"})
    from sae_lens import SAE as SaeLensSAE

    loaded = resolve_sae("sae_lens:someone/gated/g")  # a gated SAE: its threshold form (saes/gated.py)
    sl = SaeLensSAE.load_from_disk(str(gated))
    assert loaded.sae.architecture == "gated" and loaded.provenance["source"]["sae_lens_class"] == "GatedSAE"
    with torch.no_grad():
        assert_same(loaded, sl.encode(X), sl.decode(sl.encode(X)))
    if importlib.util.find_spec("sae_lens.saes.abstopk_sae") is None:
        return  # sae-lens before abstopk (6.50): it cannot write the architecture we would refuse
    other = _sae_lens_folder(tmp_path / "abstopk", arch="abstopk")
    fs.write_hf_snapshot(hub_cache, "someone/abstopk", {"a/cfg.json": other / "cfg.json",
                                                         "a/sae_weights.safetensors": other / "sae_weights.safetensors"})
    with pytest.raises(SAEFormatError, match="unknown SAE architecture 'abstopk'.*loaded by sae_lens as AbsTopKSAE"):
        resolve_sae("sae_lens:someone/abstopk/a")


def test_a_gated_release_of_the_saelens_registry_loads_through_its_converter(tmp_path: Path, hub_cache: Path) -> None:
    """SAELens's gated releases (SAEBench's `..._gated_...`, canrager/lm_sae) are dictionary_learning
    GatedAutoEncoders that SAELens's `dictionary_learning_1` converter reads into its GatedSAE: in the
    HF cache as that repo holds them, they load and compute what dictionary_learning computes."""
    pytest.importorskip("sae_lens")
    state = fs.random_dictionary_learning("GatedAutoEncoder", D, F)
    made = fs.write_dictionary_learning(tmp_path / "dl", "GatedAutoEncoder", state, layer=3,
                                        lm_name="EleutherAI/pythia-70m-deduped")
    cfg = json.loads((made / "config.json").read_text())
    (made / "config.json").write_text(json.dumps({**cfg, "buffer": {"ctx_len": 128}}))  # the release's run config
    folder = "pythia70m_sweep_gated_ctx128_0730/resid_post_layer_3/trainer_0"
    fs.write_hf_snapshot(hub_cache, "canrager/lm_sae", {f"{folder}/{n}": made / n for n in ("config.json", "ae.pt")})
    loaded = resolve_sae("sae_lens:sae_bench_pythia70m_sweep_gated_ctx128_0730/blocks.3.hook_resid_post__trainer_0")
    assert loaded.sae.architecture == "gated" and loaded.provenance["source"]["sae_lens_class"] == "GatedSAE"
    assert loaded.sae.cfg.metadata["hook_name"] == "blocks.3.hook_resid_post"
    assert_same(loaded, *fs.dictionary_learning_reference("GatedAutoEncoder", state, X))


# --------------------------------------------------------------------- OpenAI sparse_autoencoder
@pytest.mark.parametrize("activation", ["ReLU", None])
def test_openai_autoencoder_encodes_and_decodes_as_its_source(tmp_path: Path, activation) -> None:
    """Files as openai/sparse_autoencoder writes them (fs.OPENAI_SOURCE; the package is not on PyPI:
    the PyPI `sparse_autoencoder` is another project), checked against its encode/decode."""
    tensors = fs.random_openai(D, F)
    path = fs.write_openai(tmp_path / "mlp_post_act" / "autoencoders" / "1.pt", tensors, activation=activation)
    assert detect_format(path) == "openai"
    bare = resolve_sae(path)
    assert "hook_name" not in bare.sae.cfg.metadata  # the file records neither model nor hook
    loaded = resolve_sae(path, hook="blocks.1.mlp.hook_post", model="gpt2")
    assert loaded.format == "openai" and loaded.sae.architecture == "standard" and loaded.spec == str(path.resolve())
    assert loaded.sae.cfg.apply_b_dec_to_input
    assert_same(loaded, *fs.openai_reference(tensors, X))
    assert loaded.sae.cfg.metadata == {"hook_name": "blocks.1.mlp.hook_post", "model_name": "gpt2"}
    assert loaded.provenance["given"] == {"model": "gpt2", "hook_name": "blocks.1.mlp.hook_post"}
    assert set(loaded.provenance["source"]["files"]) == {"1.pt"}


def test_openai_what_cannot_be_represented_is_refused(tmp_path: Path) -> None:
    tensors = fs.random_openai(D, F)
    # TopK files run on layer-normed inputs in Autoencoder.from_state_dict: no counterpart here
    fs.write_openai(tmp_path / "topk.pt", tensors, activation="TopK", k=8)
    with pytest.raises(SAEFormatError, match=r"TopK\(k=8\) Autoencoder.*layer-normed inputs.*refused"):
        resolve_sae(tmp_path / "topk.pt")
    fs.write_openai(tmp_path / "identity.pt", tensors, activation="Identity")
    with pytest.raises(SAEFormatError, match="activation 'Identity' is not supported"):
        resolve_sae(tmp_path / "identity.pt")
    tied = {k: v for k, v in tensors.items() if k != "decoder.weight"}
    tied["decoder.linear.weight"] = tensors["encoder.weight"]  # TiedTranspose's state dict
    fs.write_openai(tmp_path / "tied.pt", tied)
    with pytest.raises(SAEFormatError, match="tied decoder"):
        resolve_sae(tmp_path / "tied.pt")


def test_openai_bad_files_are_clear_and_nothing_runs(tmp_path: Path) -> None:
    tensors = fs.random_openai(D, F)
    fs.write_openai(tmp_path / "missing.pt", {k: v for k, v in tensors.items() if k != "decoder.weight"})
    with pytest.raises(SAEFormatError, match="needs tensors .*missing decoder.weight"):
        resolve_sae(tmp_path / "missing.pt")
    fs.write_openai(tmp_path / "shape.pt", {**tensors, "decoder.weight": tensors["decoder.weight"][:, :8]})
    with pytest.raises(SAEFormatError, match=r"decoder.weight has shape \(16, 8\) .*needs \(16, 64\)"):
        resolve_sae(tmp_path / "shape.pt")
    fs.write_openai(tmp_path / "extra.pt", {**tensors, "W_skip": torch.zeros(D, D)})
    with pytest.raises(SAEFormatError, match="unexpected tensors W_skip"):
        resolve_sae(tmp_path / "extra.pt")
    marker = tmp_path / "ran.txt"
    torch.save({**tensors, "activation": "ReLU", "payload": _Planted(marker)}, tmp_path / "evil.pt")
    with pytest.raises(SAEFormatError, match="refused without running"):
        resolve_sae(tmp_path / "evil.pt")
    (tmp_path / "evil.pth").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(SAEFormatError, match="refused without running"):
        resolve_sae(tmp_path / "evil.pth")
    assert not marker.exists()
    torch.save({**tensors, "activation": "ReLU", "step": 3}, tmp_path / "step.pt")
    with pytest.raises(SAEFormatError, match="entries step are not tensors"):
        resolve_sae(tmp_path / "step.pt")
    torch.save([tensors["pre_bias"]], tmp_path / "list.pt")
    with pytest.raises(SAEFormatError, match="holds a list, not a state dict"):
        resolve_sae(tmp_path / "list.pt")


# ------------------------------------------------------------------------------------ dispatch
def test_detection_and_refusals(tmp_path: Path) -> None:
    import saes

    sae = saes.create_sae("topk", D, F, k=4, metadata={"hook_name": "blocks.0.hook_resid_post"})
    saes.save_sae(sae, tmp_path / "ours", provenance={"model": "toy:x", "hook_name": "blocks.0.hook_resid_post"})
    loaded = resolve_sae(tmp_path / "ours")
    assert loaded.format == "sae_lens" and loaded.provenance["model"] == "toy:x"  # saesteer.json kept as it is
    with pytest.raises(SAEFormatError, match="trained on blocks.0.hook_resid_post, not blocks.1"):
        resolve_sae(tmp_path / "ours", hook="blocks.1.hook_resid_post")
    torch.save({"a": torch.zeros(1)}, tmp_path / "model.pt")  # a .pt goes to the OpenAI reader, which refuses it
    with pytest.raises(SAEFormatError, match="not an OpenAI sparse_autoencoder state dict .*it has a\\b"):
        resolve_sae(tmp_path / "model.pt")
    (tmp_path / "only_pickles").mkdir()
    torch.save({"a": torch.zeros(1)}, tmp_path / "only_pickles" / "sae.ckpt")
    with pytest.raises(SAEFormatError, match="sae.ckpt: pass the file itself"):
        resolve_sae(tmp_path / "only_pickles")
    with pytest.raises(FileNotFoundError, match="SAE not found"):
        resolve_sae(tmp_path / "nowhere")


def test_a_saelens_folder_s_files_are_read_once(tmp_path: Path, monkeypatch) -> None:
    """cfg.json and activation_scaler.json were each read twice per load (once more for the provenance)."""
    pytest.importorskip("sae_lens")
    import sae_lens
    from sae_lens.training.activation_scaler import ActivationScaler

    sl = sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(d_in=D, d_sae=F, k=4,
                                                                 normalize_activations="expected_average_only_in"))
    sl.save_model(str(tmp_path / "ckpt"))
    ActivationScaler(scaling_factor=0.5).save(str(tmp_path / "ckpt" / "activation_scaler.json"))
    reads: list[str] = []
    for method in ("read_text", "read_bytes"):  # JSON files are read as bytes (saes.fileio.read_text_file), text elsewhere
        original = getattr(Path, method)
        monkeypatch.setattr(Path, method, lambda self, *a, _original=original, **kw:
                            reads.append(self.name) or _original(self, *a, **kw))
    loaded = resolve_sae(tmp_path / "ckpt")
    reads = [name for name in reads if name.endswith(".json")]
    assert loaded.provenance["source"]["activation_scaling_factor_folded"] == 0.5
    assert sorted(reads) == ["activation_scaler.json", "cfg.json"]


def test_the_hf_tokenizer_is_asked_once_per_source_for_the_bos_rule(tmp_path: Path, monkeypatch) -> None:
    """Each sparsify / dictionary_learning SAE loaded the model's HF tokenizer again for its BOS rule;
    now once per tokenizer source (a local directory as it is, or the HF cache) in a process."""
    import transformers

    loads: list[str] = []

    class Tok:
        bos_token_id = 7

        def __call__(self, text):
            return type("Enc", (), {"input_ids": [7, 1]})()

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda name, **kw: loads.append(name) or Tok())
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer_config.json").write_text("{}")
    state, cfg = fs.random_sparsify(D, F, k=4)
    run = tmp_path / "run"
    for hookpoint in ("layers.0", "layers.1"):
        fs.write_sparsify(run / hookpoint, state, cfg, run_config={"model": str(model)})
    sae_a, sae_b = (resolve_sae(run / h).sae for h in ("layers.0", "layers.1"))
    assert sae_a.cfg.metadata["prepend_bos"] is True and sae_b.cfg.metadata["prepend_bos"] is True
    assert loads == [str(model)]
    (model / "tokenizer_config.json").write_text('{"add_bos_token": false}')  # a file changed: asked again
    resolve_sae(run / "layers.0")
    assert loads == [str(model)] * 2


@pytest.fixture(scope="module")
def bos_and_plain_tokenizers():
    """A Llama-3-style tokenizer (starts text with BOS) and a GPT-2-style one (does not), trained on code and prose."""
    from helpers.real_models import build_family_tokenizer, corpus_documents

    texts = corpus_documents()[:40]
    return build_family_tokenizer("llama", texts, 320), build_family_tokenizer("gpt2", texts, 320)


def test_the_bos_rule_follows_a_tokenizer_saved_again_in_place(tmp_path: Path, bos_and_plain_tokenizers) -> None:
    """`save_pretrained` into the model's folder rewrites its files in place: the folder's own mtime stays,
    and the rule asked once per source must be asked again (it kept the old tokenizer's answer)."""
    with_bos, plain = bos_and_plain_tokenizers
    model = tmp_path / "model"
    with_bos.save_pretrained(model)
    state, cfg = fs.random_sparsify(D, F, k=4)
    folder = fs.write_sparsify(tmp_path / "run" / "layers.0", state, cfg, run_config={"model": str(model)})
    assert resolve_sae(folder).sae.cfg.metadata["prepend_bos"] is True
    mtime = model.stat().st_mtime_ns
    plain.save_pretrained(model)
    assert model.stat().st_mtime_ns == mtime  # nothing about the folder itself says it changed
    assert resolve_sae(folder).sae.cfg.metadata["prepend_bos"] is False


def test_the_bos_rule_follows_a_tokenizer_that_reaches_the_hf_cache(tmp_path: Path, hub_cache: Path,
                                                                   bos_and_plain_tokenizers) -> None:
    """A hub model's tokenizer not yet in the HF cache gives no rule; once it is there (downloaded by
    another step of the same process), the rule is the tokenizer's (the miss was kept)."""
    from saes.errors import SaesteerWarning

    with_bos, _ = bos_and_plain_tokenizers
    state, cfg = fs.random_sparsify(D, F, k=4)
    folder = fs.write_sparsify(tmp_path / "run" / "layers.0", state, cfg, run_config={"model": "org/bos-model"})
    with pytest.warns(SaesteerWarning, match="HF tokenizer is not on this machine"):
        assert "prepend_bos" not in resolve_sae(folder).sae.cfg.metadata
    import transformers

    saved = tmp_path / "tok"
    with_bos.save_pretrained(saved)  # a hub repo's tokenizer files beside its config (AutoTokenizer reads both)
    transformers.LlamaConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                             vocab_size=len(with_bos)).save_pretrained(saved)
    fs.write_hf_snapshot(hub_cache, "org/bos-model", {p.name: p for p in saved.iterdir()})
    assert resolve_sae(folder).sae.cfg.metadata["prepend_bos"] is True
