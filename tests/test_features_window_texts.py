"""The store's example text and token offsets, written fast (each distinct window decoded once, in
one batched call: features.windowtexts, features.tokentext.decode_all), are exactly what each
window's own decoding gives (the eager reference: `tokenizer.decode` of that window, then its
pieces), on a byte-level BPE (GPT-2 family) and a SentencePiece byte-fallback tokenizer (Mistral
family) trained on code, prose, accents and CJK (helpers.real_models)."""

from __future__ import annotations

import copy
import sqlite3
import sys

import numpy as np
import pytest

import features.windowtexts
from features.tokentext import _with_text, token_texts
from features.windowtexts import WindowTexts
from helpers.feature_fixtures import build_text_store, single_thread
from helpers.real_models import build_family_tokenizer, corpus_documents

one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


@pytest.fixture(scope="module")
def texts():
    docs = corpus_documents()
    unicode_doc = next(d for d in docs if "cjk unified ideograph" in d)
    return [docs[0][:3000], unicode_doc, docs[len(docs) // 2][:1500]]


def _build(tmp_path, tok, texts):
    path = tmp_path / "store.db"
    build_text_store(path, tok, texts)
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT token_ids, text, token_offsets FROM examples").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("memo", ["default", "tiny"])  # tiny: the remembered windows are forgotten between blocks
@pytest.mark.parametrize("family", ["gpt2", "mistral"])
def test_stored_text_and_offsets_are_each_windows_own_decoding(tmp_path, monkeypatch, texts, family, memo):
    if memo == "tiny":
        monkeypatch.setattr(features.windowtexts, "MAX_BYTES", 100_000)
    tok = build_family_tokenizer(family, texts, vocab_size=600)
    rows = _build(tmp_path, tok, texts)
    seen = {"windows": 0, "repeated": 0, "non_ascii": 0, "bos": 0}
    distinct = set()
    for ids_b, text, offsets_b in rows:
        ids = np.frombuffer(ids_b, dtype="<i4").tolist()
        want = _with_text(tok, ids, tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))
        assert text == want.text, ids
        assert np.frombuffer(offsets_b, dtype="<i4").tolist() == list(want.offsets), ids
        seen["windows"] += 1
        seen["repeated"] += ids_b in distinct
        distinct.add(ids_b)
        seen["non_ascii"] += any(ord(c) > 127 for c in text)
        seen["bos"] += ids[0] == tok.bos_token_id
    # what makes the comparison worth having: windows shared between latents, accents and CJK
    # (cut inside a character too), windows that show BOS
    assert seen["repeated"] > 100 and seen["non_ascii"] > 20 and seen["bos"] > 20, seen


def _windows(tok, texts, length, step):
    ids = np.asarray(tok("\n".join(texts), add_special_tokens=False)["input_ids"], dtype="<i4")
    return [ids[i:i + length].tobytes() for i in range(0, len(ids) - length, step)]


def _want(tok, windows):
    return [(tt.text, np.asarray(tt.offsets, dtype="<i4").tobytes())
            for tt in token_texts(tok, [np.frombuffer(w, dtype="<i4").tolist() for w in windows])]


def test_remembered_windows_stay_within_their_byte_bound_whatever_the_window_length(texts):
    """Long windows of CJK and accented text: what is remembered (its ids, texts and offsets,
    measured here) stays under the bound, and every answer is still the window's own decoding."""
    tok = build_family_tokenizer("mistral", texts, vocab_size=600)
    windows = _windows(tok, texts, length=200, step=50)
    memo = WindowTexts(max_bytes=40_000)
    kept_most = 0
    for i in range(0, len(windows), 12):
        call = windows[i:i + 12] + windows[max(0, i - 6):i]  # some asked for again
        assert memo.get(tok, call) == _want(tok, call)
        held = sum(sys.getsizeof(w) + sys.getsizeof(t) + sys.getsizeof(o) for w, (t, o) in memo._known.items())
        assert held <= memo.max_bytes, (i, held)
        kept_most = max(kept_most, len(memo._known))
    assert kept_most >= 12 and len(windows) > 3 * kept_most  # remembered some, forgot some


def test_a_memo_used_with_another_tokenizer_decodes_with_that_one(texts):
    gpt2, mistral = (build_family_tokenizer(f, texts, vocab_size=600) for f in ("gpt2", "mistral"))
    windows = _windows(gpt2, texts, length=12, step=12)[:40]
    memo = WindowTexts()
    assert memo.get(gpt2, windows) == _want(gpt2, windows)
    got = memo.get(mistral, windows)
    assert got == _want(mistral, windows) and got != _want(gpt2, windows)


class _Shouting:
    """A tokenizer class whose own decoding differs from its `tokenizers` backend's (as CodeGen's and
    Whisper's override decode / _decode): the one-call batch decode must not bypass it."""

    def _decode(self, *args, **kwargs):
        return super()._decode(*args, **kwargs).upper()


@pytest.mark.parametrize("family", ["gpt2", "llama3", "mistral"])
def test_batch_decode_is_each_windows_own_decoding_with_added_tokens_and_a_subclass(texts, family):
    """decode_all (one `tokenizers` decode_batch for a plain fast tokenizer) gives what
    `tokenizer.decode` gives (specials kept, no clean-up) with added tokens normalized or not,
    special or not, a tokenizer whose config asks for clean-up, and a subclass with its own decoding."""
    from tokenizers import AddedToken

    from features.tokentext import decode_all

    tok = build_family_tokenizer(family, texts, vocab_size=600)
    tok.add_tokens([AddedToken("<tag>", normalized=False), AddedToken(" foo bar", normalized=True),
                    AddedToken("<|sep|>", special=True, normalized=False)])
    tok.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    tok.clean_up_tokenization_spaces = True  # GPT-2's tokenizer_config.json says so in some versions
    ids = tok(texts[1][:400] + " <tag> foo bar , <|sep|> <extra> don 't .", add_special_tokens=True)["input_ids"]
    windows = [ids[i:i + 16] for i in range(0, len(ids), 5)] + [[], [tok.bos_token_id]]
    shouting = type("Shouting", (_Shouting, type(tok)), {})
    loud = copy.copy(tok)
    loud.__class__ = shouting
    plain, shouted = ([t.decode(w, skip_special_tokens=False, clean_up_tokenization_spaces=False) for w in windows]
                      for t in (tok, loud))
    assert decode_all(tok, windows) == plain and decode_all(loud, windows) == shouted
    # what the comparison needs: the added tokens shown, text clean-up would change, the subclass's own
    assert any("<|sep|>" in w for w in plain) and any(" ," in w for w in plain) and shouted != plain
