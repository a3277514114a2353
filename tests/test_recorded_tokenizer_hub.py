"""`saesteer.models.load_recorded_tokenizer` for a store made with a hub model (its hub branch, untested
before: `features upgrade` on such a store): the tokenizer at the
recorded commit, from the local HF cache (offline, as HF_HUB_OFFLINE makes it), set up as the
loaded model's own; a commit the cache does not hold is not silently replaced by another."""

from __future__ import annotations

import pytest

from helpers.foreign_saes import write_hf_snapshot
from helpers.tiny_hf import save_tiny_gpt2

pytestmark = pytest.mark.usefixtures("one_thread", "offline_env")
REPO = "someone/tiny-gpt2"
COMMIT = "d" * 40


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A tiny GPT-2 under `models--someone--tiny-gpt2` in an HF cache, at commit COMMIT (refs/main),
    and huggingface_hub pointed at that cache, offline."""
    from huggingface_hub import constants

    model_dir = save_tiny_gpt2(tmp_path / "tiny-gpt2")
    cache = tmp_path / "hub"
    write_hf_snapshot(cache, REPO, {p.name: p for p in model_dir.iterdir() if p.is_file()}, revision=COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_models_recorded_tokenizer_is_the_loaded_models(hub_cache):
    from features.tokentext import token_labels
    from saesteer.models import load_model, load_recorded_tokenizer, model_identity

    model = load_model(REPO, device="cpu")
    ident = model_identity(model)
    assert (ident.source, ident.name, ident.revision) == ("hub", REPO, COMMIT)  # pinned to the cached commit
    got = load_recorded_tokenizer(ident, recorded_in="the store")
    assert len(got) == len(model.tokenizer) and token_labels(got) == token_labels(model.tokenizer)
    assert (got.bos_token_id, got.eos_token_id, got.pad_token_id) == (
        model.tokenizer.bos_token_id, model.tokenizer.eos_token_id, model.tokenizer.pad_token_id)
    text = "anna saw the whale near the reef !"
    assert got(text)["input_ids"] == model.tokenizer(text)["input_ids"]


def test_a_recorded_commit_the_cache_lacks_is_not_read_from_another(hub_cache):
    import dataclasses

    from saesteer.models import load_model, load_recorded_tokenizer, model_identity

    ident = dataclasses.replace(model_identity(load_model(REPO, device="cpu")), revision="e" * 40)
    with pytest.raises(OSError):  # HF: not in the cache at that commit (offline); never the cached "d" commit
        load_recorded_tokenizer(ident, recorded_in="the store")
