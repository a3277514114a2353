"""SAEs of SAELens's registry that another library trained: SAELens's `dictionary_learning_1` converter
(SAE Bench's Pythia-70m and Gemma-2-2b sweeps, andyrdt's Qwen2.5-7B-Instruct SAEs) records
`prepend_bos: True` for every one, while dictionary_learning, which trained them, fed them the text as
the model's HF tokenizer makes it: no BOS for Pythia (GPT-NeoX's tokenizer) or Qwen2. saesteer fed
`sae_lens:...` with BOS and the same SAE read from its own files without. The registry SAE now gets
the trainer's BOS, with a note naming both sides; where that tokenizer is not on the machine, SAELens's
value is kept and said; SAEs of other converters keep SAELens's record."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from helpers import foreign_saes as fs

pytestmark = pytest.mark.usefixtures("one_thread", "offline_env")
RELEASE, SAE_ID = "sae_bench_pythia70m_sweep_topk_ctx128_0730", "blocks.3.hook_resid_post__trainer_0"
FOLDER = "pythia70m_sweep_topk_ctx128_0730/resid_post_layer_3/trainer_0"


@pytest.fixture
def hub(real_models, tmp_path, monkeypatch):
    """The offline registry cache (the tiny NeoX as EleutherAI/pythia-70m-deduped) with canrager/lm_sae's
    FOLDER: a TopK SAE as dictionary_learning saves it, its config.json as SAE Bench's runs hold it."""
    hub = fs.offline_registry_cache(real_models, tmp_path, monkeypatch)
    made = fs.write_dictionary_learning(tmp_path / "trainer_0", "AutoEncoderTopK",
                                        fs.random_dictionary_learning("AutoEncoderTopK", 64, 128, k=4),
                                        layer=3, lm_name="EleutherAI/pythia-70m-deduped",
                                        submodule_name="resid_post_layer_3", k=4)
    config = json.loads((made / "config.json").read_text())
    config["buffer"] = {"d_submodule": 64, "io": "out", "n_ctxs": 3000, "ctx_len": 128, "refresh_batch_size": 32,
                        "out_batch_size": 4096, "device": "cpu"}
    (made / "config.json").write_text(json.dumps(config, indent=4))
    return fs.write_hf_snapshot(hub, "canrager/lm_sae", {f"{FOLDER}/{p.name}": p for p in made.iterdir()})


def test_a_registry_sae_trained_by_dictionary_learning_gets_its_trainer_s_bos(hub):
    from saes.bos import prepend_bos_for, recorded_bos
    from saes.formats import resolve_sae

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        loaded = resolve_sae(f"sae_lens:{RELEASE}/{SAE_ID}")
    assert loaded.sae.cfg.metadata["prepend_bos"] is False and recorded_bos([loaded]) is False
    assert loaded.provenance["source"]["prepend_bos"]["sae_lens"] is True
    notes = [str(w.message) for w in said if "prepend_bos" in str(w.message)]
    assert len(notes) == 1 and "SAELens records prepend_bos=True" in notes[0], notes
    assert "dictionary_learning, which trained this SAE" in notes[0] and "does not start with BOS" in notes[0]
    # the same files read as dictionary_learning's: the same BOS
    own = resolve_sae(str(hub / FOLDER))
    assert own.format == "dictionary_learning" and own.sae.cfg.metadata["prepend_bos"] is False

    class Model:  # whose default would prepend: the record decides
        cfg = type("cfg", (), {"default_prepend_bos": True})

    assert prepend_bos_for(Model(), [loaded]) is False


def test_without_the_tokenizer_here_saelens_s_record_is_kept_and_said(hub):
    import shutil

    from huggingface_hub import constants

    from saes.formats import resolve_sae
    from saes.formats.base import hf_tokenizer_adds_bos

    pythia = Path(constants.HF_HUB_CACHE) / "models--EleutherAI--pythia-70m-deduped"
    for snapshot in (pythia / "snapshots").iterdir():  # the config and weights only
        for p in snapshot.iterdir():
            if p.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
                p.unlink() if p.is_file() or p.is_symlink() else shutil.rmtree(p)
    # config.json without tokenizer files: transformers builds an empty tokenizer (which "adds no BOS")
    assert hf_tokenizer_adds_bos("EleutherAI/pythia-70m-deduped") is None
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        loaded = resolve_sae(f"sae_lens:{RELEASE}/{SAE_ID}")
    assert loaded.sae.cfg.metadata["prepend_bos"] is True and "prepend_bos" not in loaded.provenance["source"]
    notes = [str(w.message) for w in said if "prepend_bos" in str(w.message)]
    assert len(notes) == 1 and "SAELens records prepend_bos=True" in notes[0], notes
    assert "is not on this machine" in notes[0] and "prepend_bos=True is kept" in notes[0], notes


def test_an_sae_of_another_converter_keeps_saelens_s_record(hub, tmp_path):
    """gpt2-small-res-jb (SAELens's own converter): its cfg.json says prepend_bos true, the HF GPT-2 tokenizer
    adds no BOS, and SAELens trained it with BOS: the record stands, and nothing is said."""
    from huggingface_hub import constants

    from saes.formats import resolve_sae
    from saes.formats.base import hf_tokenizer_adds_bos

    cfg = json.loads((tmp_path / "made/cfg.json").read_text())
    cfg["metadata"]["prepend_bos"] = True  # as the release's cfg.json records it
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    fs.write_hf_snapshot(Path(constants.HF_HUB_CACHE), "jbloom/GPT2-Small-SAEs-Reformatted",
                         {"blocks.1.hook_resid_pre/cfg.json": tmp_path / "cfg.json"})
    assert hf_tokenizer_adds_bos("gpt2") is False  # what a flip would follow
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        loaded = resolve_sae("sae_lens:gpt2-small-res-jb/blocks.1.hook_resid_pre")
    assert loaded.sae.cfg.metadata["prepend_bos"] is True and "prepend_bos" not in loaded.provenance["source"]
    assert [str(w.message) for w in said if "prepend_bos" in str(w.message)] == []
