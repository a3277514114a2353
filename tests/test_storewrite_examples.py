"""The build writes its examples per distinct window (`features.build._example_rows` reads, trims
and decodes each centre's window once and hands the store an `ExampleBlock` of columns); the store
it writes is row for row the store of the eager reference: one `ExampleRow` per example, each with
its own window read from the source, trimmed and decoded (the build's code before this change),
written through `ExampleBlock.of_rows`. Every table is compared (the full-text index's own tables
too), on a GPT-2-family byte-level BPE trained on code, prose, accents and CJK
(helpers.real_models), with the same text twice (equal windows at other centres) and windows that
show BOS; and without a tokenizer."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

import features.build
from features.store.rows import ExampleRow
from features.store.windows import ExampleBlock
from helpers.feature_fixtures import build_text_store, single_thread
from helpers.real_models import build_family_tokenizer, corpus_documents

one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def eager_example_rows(f0, f1, res, source, tokenizer, before, W, window_texts) -> ExampleBlock:
    """The reference: every example's window on its own (`source.window_tokens` of that example,
    trimmed to its context, its text from `window_texts`), as `ExampleRow`s."""
    kind_E, f_E, rank_E, val_E, q_E, seq_E, pos_E, win_EW = features.build._block_examples(f0, f1, res, W)
    rows = []
    for e in range(seq_E.numel()):
        toks = source.window_tokens(seq_E[e:e + 1], pos_E[e:e + 1] - before, W)[0].numpy()
        inside = np.flatnonzero(toks >= 0)
        lo, hi = (int(inside[0]), int(inside[-1]) + 1) if inside.size else (before, before + 1)
        ids = toks[lo:hi].astype("<i4").tobytes()
        text, offsets = window_texts.get(tokenizer, [ids])[0] if tokenizer is not None else (None, None)
        q = float(q_E[e])
        rows.append(ExampleRow(int(f_E[e]), ("top", "quantile", "negative")[int(kind_E[e])], int(rank_E[e]),
                               float(val_E[e]), None if q != q else q, int(seq_E[e]), int(pos_E[e]), before - lo, ids,
                               win_EW[e, lo:hi].numpy().astype("<f4").tobytes(), text, offsets))
    return ExampleBlock.of_rows(rows)


DEAD = [9, 40]  # in the second and last write blocks
L = 32  # the contexts' length (build_text_store's)


def _tables(path) -> dict[str, list]:
    """Every table's rows (the full-text index's shadow tables too), meta less the build's time."""
    con = sqlite3.connect(path)
    try:
        names = [n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        # in the table's own order (rowid or primary key): the ids SQLite gave are compared too
        out = {n: con.execute(f"SELECT * FROM {n}").fetchall() for n in names if not n.startswith("sqlite_")}
        out["meta"] = [r for r in out["meta"] if r[0] not in ("built_at", "build_stats")]
        out["examples (view)"] = con.execute("SELECT * FROM examples ORDER BY id").fetchall()
        return out
    finally:
        con.close()


@pytest.fixture(scope="module")
def tokenizer():
    docs = corpus_documents()
    unicode_doc = next(d for d in docs if "cjk unified ideograph" in d)
    texts = [docs[0][:2000], unicode_doc, docs[len(docs) // 2][:1000]]
    tok = build_family_tokenizer("gpt2", texts, vocab_size=600)
    return tok, texts + texts[:1]  # the first text twice: the same windows at other centres


@pytest.mark.parametrize("with_text", [True, False])
def test_the_store_of_per_window_examples_is_the_eager_references_row_for_row(tmp_path, monkeypatch, tokenizer,
                                                                              with_text):
    tok, texts = tokenizer
    build_text_store(tmp_path / "fast.db", tok, texts, with_text=with_text, dead=DEAD)
    monkeypatch.setattr(features.build, "_example_rows", eager_example_rows)
    build_text_store(tmp_path / "eager.db", tok, texts, with_text=with_text, dead=DEAD)
    fast, eager = _tables(tmp_path / "fast.db"), _tables(tmp_path / "eager.db")
    assert fast.keys() == eager.keys()
    for name in eager:
        assert fast[name] == eager[name], name
    # what makes the comparison worth having: windows named by several examples, equal windows
    # at other centres (the store keeps them once), negatives (no activations stored), BOS windows
    refs = eager["example_refs"]
    windows = eager["windows"]
    assert len(refs) > len(windows) + 200 > 200
    centres = {(r[6], r[7]) for r in refs}  # (seq_index, position)
    assert len(centres) > len(windows)
    assert sum(r[-1] is None for r in refs) > 50 and sum(r[-1] is not None for r in refs) > 50
    assert sum(np.frombuffer(w[1], dtype="<i4")[0] == tok.bos_token_id for w in windows) > 5
    assert sum(r[7] >= L - 4 for r in refs) > 20  # windows cut at their context's end (window_after 4)
    shown = {r[1] for r in refs if r[2] != "negative"}
    assert not shown & set(DEAD) and len(shown) > 30  # latents without examples but negatives
    if with_text:
        assert sum(any(ord(c) > 127 for c in w[2]) for w in windows) > 5
        assert sum(bool(row[1]) for row in eager["feature_fts"]) > 10  # (label, examples)


def test_an_example_block_reads_back_as_the_rows_it_was_made_of():
    a, z = np.float32([0.5, 2.0]).tobytes(), bytes(8)  # two tokens' activations; all zero (a negative's)
    w1, w2, o = np.int32([5, 6]).tobytes(), np.int32([7, 8]).tobytes(), np.int32([0, 1]).tobytes()
    rows = [ExampleRow(3, "top", 0, 2.0, None, 7, 4, 1, w1, a, "ab", o),
            ExampleRow(3, "negative", 0, 0.0, None, 9, 2, 1, w2, z, None, None),
            ExampleRow(4, "quantile", 1, 0.5, 0.25, 7, 4, 1, w1, a, "ab", o)]
    block = ExampleBlock.of_rows(rows)
    assert block.windows == [(w1, "ab", o), (w2, None, None)]
    assert block.columns[-2] == [0, 1, 0] and block.columns[-1] == [a, None, a]  # all-zero activations: None
    assert len(block) == 3 and list(block) == rows


def test_a_block_of_latents_without_any_example_writes_as_the_reference(tmp_path, monkeypatch, tokenizer):
    """No negatives and a whole write block (latents 8-15) dead: a block with no example at all, and
    latents without rows beside latents with some."""
    tok, texts = tokenizer
    dead = list(range(8, 16)) + [40]
    build_text_store(tmp_path / "fast.db", tok, texts, dead=dead, n_negative=0)
    monkeypatch.setattr(features.build, "_example_rows", eager_example_rows)
    build_text_store(tmp_path / "eager.db", tok, texts, dead=dead, n_negative=0)
    fast, eager = _tables(tmp_path / "fast.db"), _tables(tmp_path / "eager.db")
    assert fast == eager
    shown = {r[1] for r in eager["example_refs"]}
    assert not shown & set(dead) and len(shown) > 30 and len(eager["features"]) == 48
