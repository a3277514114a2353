"""`saesteer features upgrade` relabels a store's vocabulary of an older label rule (features/upgrade.py).

Stores written before the label rule was recorded (meta "vocab_labels") show a SentencePiece word
without its leading space ("▁the" read "the"). Upgrading opened the store for writing (the schema)
and left those labels; now it rewrites them with the tokenizer of the model the store records
(`features.build.refresh_vocab`, as a re-run build does), and where the store records no model it
says how to get them rewritten.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from helpers.real_cli import saesteer
from helpers.text_tokenizers import sentencepiece_bpe


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A tiny Llama checkpoint with a Llama-2 style (SentencePiece) tokenizer, and that tokenizer."""
    import transformers

    tok = sentencepiece_bpe()
    directory = tmp_path_factory.mktemp("sp-llama")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                                   eos_token_id=tok.eos_token_id)
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory, tok


def _old_store(path, tok, model_identity: dict | None):
    """A small store of `tok`'s vocabulary, then rewritten as an older saesteer wrote it: labels of
    rule 1 (SentencePiece words without their space), no "vocab_labels", the given model recorded."""
    from test_token_text import _build_sp_store, _rule_1_label

    _build_sp_store(path, tok)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'vocab_labels'")
        conn.executemany("UPDATE vocab SET text = ? WHERE token_id = ?",
                         [(_rule_1_label(tok, i), i) for i in range(len(tok))])
        conn.execute("DELETE FROM meta WHERE key = 'model_identity'")
        if model_identity is not None:
            conn.execute("INSERT INTO meta(key, value) VALUES ('model_identity', ?)", (json.dumps(model_identity),))
    return path


def _labels(path) -> tuple[list[str], object]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT text FROM vocab ORDER BY token_id").fetchall()
        rule = conn.execute("SELECT value FROM meta WHERE key = 'vocab_labels'").fetchone()
    return [t for (t,) in rows], None if rule is None else json.loads(rule[0])


def test_upgrade_relabels_an_older_vocabulary_with_the_recorded_models_tokenizer(sp_model, tmp_path, monkeypatch):
    """... with the tokenizer alone: the model's weights are not loaded (a 7B model on CPU for a
    table of labels)."""
    from features.tokentext import LABEL_RULE, token_labels
    from saesteer.models import load_model, model_identity

    directory, tok = sp_model
    ident = model_identity(load_model(str(directory), device="cpu")).to_json()
    path = _old_store(tmp_path / "old.db", tok, ident)

    def no_model(*a, **kw):
        raise AssertionError("features upgrade loaded the model's weights")

    monkeypatch.setattr("saesteer.models.load_model", no_model)
    the = tok.convert_tokens_to_ids("\u2581the")
    before, rule = _labels(path)
    assert before[the] == "the" and rule is None
    r = saesteer("features", "upgrade", path).ok()
    assert "token labels: rewritten by the current rule with the tokenizer of" in r.out, r.out
    assert str(directory) in r.out, r.out
    after, rule = _labels(path)
    assert rule == LABEL_RULE and after[the] == " the"
    assert after == token_labels(tok)
    r = saesteer("features", "upgrade", path).ok()  # once: nothing more to do, and it says so
    assert "rewritten" not in r.out + r.err
    assert r.out.splitlines() == [f"{path}: feature-store schema version 3 (already current)",
                                  "token labels: already of the current rule; left as they are"], r.out


def test_upgrade_of_a_store_without_token_labels_says_there_are_none(sp_model, tmp_path):
    """A store built without a tokenizer has no token labels: upgrade says so (before: only the
    schema version, nothing about labels)."""
    directory, tok = sp_model
    path = _old_store(tmp_path / "old.db", tok, None)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM vocab")
    r = saesteer("features", "upgrade", path).ok()
    assert "token labels: none (the store was built without a tokenizer); nothing to relabel" in r.out, r.out


def test_upgrade_says_how_to_relabel_a_store_that_records_no_model(sp_model, tmp_path):
    directory, tok = sp_model
    path = _old_store(tmp_path / "old.db", tok, None)
    with sqlite3.connect(path) as conn:  # as stores built without a recorded model (TensorSource) are
        for key in ("cache", "sae"):
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
    before = _labels(path)
    r = saesteer("features", "upgrade", path).ok()
    assert "older rule" in r.err and "records no model" in r.err, r.err
    assert "saesteer features build" in r.err and "--model" in r.err and "Traceback" not in r.err
    assert _labels(path) == before


def test_upgrade_says_why_when_the_recorded_model_cannot_be_loaded(sp_model, tmp_path):
    """A store whose model directory is gone: the labels stay, and the note says why and names only
    flags of the command it tells the user to run."""
    from helpers.real_cli import flags_named, known_flags
    from saes.identity import ModelIdentity

    directory, tok = sp_model
    gone = ModelIdentity("local", "gone", path=str(tmp_path / "gone"), weights_sha256="0" * 64).to_json()
    path = _old_store(tmp_path / "old.db", tok, gone)
    before = _labels(path)
    r = saesteer("features", "upgrade", path).ok()
    assert "no longer exists" in r.err and str(tmp_path / "gone") in r.err, r.err
    assert flags_named(r.err) and flags_named(r.err) <= known_flags("features", "build"), r.err
    assert _labels(path) == before


def test_the_recorded_tokenizer_is_the_loaded_models_and_its_identity_is_checked(sp_model, tmp_path):
    """`load_recorded_tokenizer` gives the labels `load_recorded_model(...).tokenizer` gives (toy and
    a local SentencePiece Llama), and refuses a directory whose weights are no longer the recorded
    ones, as loading the model does: upgrade then leaves the labels and says why."""
    import shutil

    import transformers
    from features.tokentext import token_labels
    from saes.identity import ModelMismatchError
    from saesteer.models import load_model, load_recorded_tokenizer, model_identity

    directory, tok = sp_model
    for spec in ("toy", str(directory)):
        model = load_model(spec, device="cpu")
        got = load_recorded_tokenizer(model_identity(model), recorded_in="the store")
        assert len(got) == len(model.tokenizer) and token_labels(got) == token_labels(model.tokenizer)

    moved = shutil.copytree(directory, tmp_path / "sp-copy")
    ident = model_identity(load_model(str(moved), device="cpu"))
    path = _old_store(tmp_path / "old.db", tok, ident.to_json())
    before = _labels(path)
    torch.manual_seed(1)  # other weights in the same directory
    transformers.LlamaForCausalLM(transformers.AutoConfig.from_pretrained(moved)).save_pretrained(
        moved, safe_serialization=True)
    with pytest.raises(ModelMismatchError, match="sha256"):
        load_recorded_tokenizer(ident, recorded_in="the store")
    r = saesteer("features", "upgrade", path).ok()
    assert "could not be loaded" in r.err and "Traceback" not in r.err, r.err
    assert _labels(path) == before


def test_upgrade_of_a_mistyped_path_makes_no_folder_or_lock_file(tmp_path):
    """A store that is not there is refused in one line naming it; nothing is made for it (the
    writer lock made its folders and `<store>.lock` before the store was found missing)."""
    r = saesteer("features", "upgrade", tmp_path / "typo" / "toy.db").no_traceback()
    assert r.rc == 2 and "no feature store at" in r.err and len(r.err.strip().splitlines()) == 1, r.text
    assert list(tmp_path.iterdir()) == []
