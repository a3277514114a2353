"""Text input for the cache: sources, BOS policies, packing, exact restart from a pointer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.tiny_model import BOS, EOS, make_documents, make_tokenizer, write_corpus
from training.packing import ContextPacker, make_tokenize, open_packer, special_tokens
from training.text import DocumentSource, TextConfig

TOK = make_tokenizer()
BOS_ID, EOS_ID = TOK.convert_tokens_to_ids([BOS, EOS])


def packer_over(docs, cfg, start=(0, 0), chunk=3):
    def chunks():
        for i in range(start[0], len(docs), chunk):
            yield docs[i:i + chunk]
    from training.text import TextPointer

    return ContextPacker(chunks(), make_tokenize(TOK), cfg, special_tokens(TOK), TextPointer(*start))


def all_contexts(packer, n=1000):
    toks, _ = packer.take(n)
    return toks


def test_prepend_policy_starts_every_context_with_bos_and_keeps_the_stream():
    docs = make_documents(20, seed=1)
    cfg = TextConfig(dataset="x", context_length=8, bos_policy="prepend", separator="eos")
    ctx = all_contexts(packer_over(docs, cfg))
    assert (ctx[:, 0] == BOS_ID).all() and (ctx[:, 1:] != BOS_ID).all()
    stream = [t for d in docs for t in TOK(d, add_special_tokens=False)["input_ids"] + [EOS_ID]]
    assert ctx[:, 1:].reshape(-1).tolist() == stream[:ctx[:, 1:].size]
    assert len(stream) - ctx[:, 1:].size < 7  # only a short tail is dropped


def test_doc_policy_marks_document_starts_and_none_has_no_bos():
    docs = ["the sea", "a tree", "", "the owl sees the moss"]
    ids = lambda d: TOK(d, add_special_tokens=False)["input_ids"]
    cfg = TextConfig(dataset="x", context_length=4, bos_policy="doc", separator="none")
    flat = all_contexts(packer_over(docs, cfg)).reshape(-1).tolist()
    expect = [BOS_ID] + ids(docs[0]) + [BOS_ID] + ids(docs[1]) + [BOS_ID] + ids(docs[3])  # empty doc skipped
    assert flat == expect[:len(flat)] and len(expect) - len(flat) < 4
    cfg = TextConfig(dataset="x", context_length=4, bos_policy="none", separator="eos")
    flat = all_contexts(packer_over(docs, cfg)).reshape(-1).tolist()
    assert BOS_ID not in flat and flat.count(EOS_ID) >= 2


def test_gpt2_documents_are_separated_by_one_endoftext_as_in_saelens(real_corpus):
    """GPT-2's <|endoftext|> is both BOS and EOS: under bos_policy "doc" with separator "eos" every
    document was `[BOS] doc [EOS]`, two <|endoftext|> between documents. Now one, as SAELens packs
    GPT-2 text (its begin-sequence token = separator = BOS, written once); the other policies already
    had one. A cache records the rule (resuming a cache made before it continues the old way:
    tests/test_cache_fast_forward.py)."""
    import torch
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    from helpers.real_models import build_family_tokenizer
    from training.manifest import setting_differences
    from training.text import TextPointer

    tok = build_family_tokenizer("gpt2", real_corpus.train_docs)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.bos_token_id == tok.eos_token_id == eot
    docs = ["def f(x):\n    return x", "", "The sea is wide.", "caf\u00e9 \u65e5\u672c", "import os"] * 3
    ids = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    tokenize = make_tokenize(tok)

    def packed(policy, sep, start=TextPointer(0, 0), chunk=4):
        cfg = TextConfig(dataset="x", context_length=8, bos_policy=policy, separator=sep)
        chunks = (docs[i:i + chunk] for i in range(start.doc, len(docs), chunk))
        return ContextPacker(chunks, tokenize, cfg, special_tokens(tok), start)

    for policy in ("prepend", "doc", "none"):
        ctx = packed(policy, "eos").take(1000)[0]
        stream = (ctx[:, 1:] if policy == "prepend" else ctx).reshape(-1).tolist()
        runs = "".join("E" if t == eot else "." for t in stream).split(".")
        assert max(len(r) for r in runs) == 1, policy  # never two <|endoftext|> in a row
        assert stream.count(eot) >= len([i for i in ids if i]) - 2, policy  # one per document boundary
    # "doc": the same contexts as SAELens's packing of the same documents
    ours = packed("doc", "eos").take(1000)[0]
    theirs = list(concat_and_batch_sequences(iter(torch.tensor(i, dtype=torch.long) for i in ids if i), 8,
                                             begin_batch_token_id=None, begin_sequence_token_id=eot,
                                             sequence_separator_token_id=eot))
    assert ours.tolist() == torch.stack(theirs).tolist()
    # restarting at a pointer continues exactly
    head, ptr = packed("doc", "eos").take(3)
    assert np.array_equal(np.concatenate([head, packed("doc", "eos", ptr, chunk=1).take(1000)[0]]), ours)
    # a cache made before (no record: EOS written after every document) differs from this rule's
    # settings (a resume takes the recorded rule first: training.plan.refuse_mismatch)
    old = {"bos_policy": "doc", "separator": "eos"}
    assert setting_differences(old, {**old, "eos_is_next_bos": True}) == [
        "eos_is_next_bos: cache has False, this run asks for True"]
    assert setting_differences(old, {**old, "eos_is_next_bos": False}) == []


@settings(max_examples=40, deadline=None)
@given(
    policy=st.sampled_from(["prepend", "doc", "none"]),
    sep=st.sampled_from(["eos", "none"]),
    L=st.integers(2, 12),
    first=st.integers(0, 30),
    chunk=st.integers(1, 7),
    seed=st.integers(0, 100),
)
def test_restart_from_pointer_continues_exactly(policy, sep, L, first, chunk, seed):
    docs = make_documents(25, seed=seed, min_words=0, max_words=15)
    cfg = TextConfig(dataset="x", context_length=L, bos_policy=policy, separator=sep)
    full = all_contexts(packer_over(docs, cfg, chunk=chunk))
    p = packer_over(docs, cfg, chunk=chunk)
    head, ptr = p.take(first)
    tail = all_contexts(packer_over(docs, cfg, start=ptr, chunk=5))
    assert np.array_equal(np.concatenate([head, tail]), full)
    # the pointer does not depend on how far ahead the packer had tokenized
    p2 = packer_over(docs, cfg, chunk=1)
    _, ptr2 = p2.take(first)
    assert ptr2 == ptr


@pytest.mark.parametrize("fmt", ["jsonl", "json", "txt", "parquet"])
def test_local_formats_give_the_same_contexts(tmp_path, fmt):
    write_corpus(tmp_path / fmt, n_docs=30, fmt=fmt, n_files=2)  # txt: one document per line
    write_corpus(tmp_path / "ref", n_docs=30, fmt="jsonl", n_files=1)
    cfg = TextConfig(dataset=str(tmp_path / fmt), context_length=16, txt_documents="line")
    ref = TextConfig(dataset=str(tmp_path / "ref" / "part-000.jsonl"), context_length=16)
    assert np.array_equal(open_packer(cfg, TOK).take(100)[0], open_packer(ref, TOK).take(100)[0])


@pytest.mark.parametrize("streaming", [True, False])
def test_a_txt_file_is_one_document_unless_told_line(tmp_path, monkeypatch, streaming):
    """Default: each .txt file is one document, exactly as stored: newlines, blank lines and CRLF /
    CR line ends kept (HF datasets' text builder would turn them into LF); txt_documents="line":
    each non-empty line is one (HF datasets' default)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    files = {"a.txt": "the sea\n\n  the ship\n", "b.txt": "a tree\r\nthe owl", "c.txt": "old mac\rline end"}
    (tmp_path / "c").mkdir()
    for name, text in files.items():
        (tmp_path / "c" / name).write_bytes(text.encode())
    whole = DocumentSource(TextConfig(dataset=str(tmp_path / "c"), streaming=streaming))
    assert [d for c in whole.chunks() for d in c] == list(files.values())
    lines = DocumentSource(TextConfig(dataset=str(tmp_path / "c"), streaming=streaming, txt_documents="line"))
    assert [d for c in lines.chunks() for d in c] == ["the sea", "", "  the ship", "a tree", "the owl", "old mac",
                                                      "line end"]
    # packed: one EOS per file, after its last token
    cfg = TextConfig(dataset=str(tmp_path / "c"), context_length=4, bos_policy="none", streaming=streaming)
    flat = open_packer(cfg, TOK).take(100)[0].reshape(-1).tolist()
    ids = lambda d: TOK(d, add_special_tokens=False)["input_ids"]
    want = [i for d in files.values() for i in ids(d) + [EOS_ID]]
    assert flat == want[:len(flat)] and flat.count(EOS_ID) >= 1
    with pytest.raises(ValueError, match="txt_documents must be file or line"):
        TextConfig(txt_documents="paragraph")
    # an edited file is read again (the non-streaming Arrow copy is not reused), and a file that is
    # not UTF-8 is named with the fix
    (tmp_path / "c" / "b.txt").write_bytes(b"a tree\r\nthe owl sang")
    again = DocumentSource(TextConfig(dataset=str(tmp_path / "c"), streaming=streaming))
    assert [d for c in again.chunks() for d in c][1] == "a tree\r\nthe owl sang"
    (tmp_path / "c" / "c.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"c\.txt is not UTF-8 text \(byte 0xe9 at offset 3\); convert it"):
        [d for c in DocumentSource(TextConfig(dataset=str(tmp_path / "c"), streaming=streaming)).chunks() for d in c]


@pytest.mark.parametrize("fast", [True, False])
def test_whole_documents_are_tokenized_without_the_length_warning(fast):
    """We tokenize whole documents on purpose and cut them into contexts ourselves: transformers'
    "sequence length is longer than the specified maximum" warning must not be printed."""
    import logging

    tok = make_tokenizer()
    tok.model_max_length = 8
    if not fast:  # the reference path (slow tokenizers, or fast ids that differ)
        tok.__dict__["_saesteer_fast_tokenize"] = {"checked": True, "use_fast": False}
    seen = []

    class Grab(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger("transformers")
    handler = Grab(level=logging.WARNING)
    logger.addHandler(handler)
    try:
        ids = make_tokenize(tok)([" ".join(["the sea"] * 20)] * 2)
    finally:
        logger.removeHandler(handler)
    assert len(ids[0]) == 40
    assert not [m for m in seen if "longer than the specified maximum" in m], seen


def test_non_streaming_matches_streaming(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    write_corpus(tmp_path / "c", n_docs=40)
    a = open_packer(TextConfig(dataset=str(tmp_path / "c"), context_length=8, streaming=True), TOK)
    b = open_packer(TextConfig(dataset=str(tmp_path / "c"), context_length=8, streaming=False), TOK)
    ta, pa = a.take(17)
    tb, pb = b.take(17)
    assert np.array_equal(ta, tb) and pa == pb
    # random-access restart
    c = open_packer(TextConfig(dataset=str(tmp_path / "c"), context_length=8, streaming=False), TOK, start=pa)
    d = open_packer(TextConfig(dataset=str(tmp_path / "c"), context_length=8, streaming=True), TOK, start=pa)
    assert np.array_equal(c.take(50)[0], d.take(50)[0])


def test_missing_column_names_the_available_ones(tmp_path):
    write_corpus(tmp_path / "c", n_docs=5, column="body", extra_columns={"id": 1})
    with pytest.raises(ValueError, match=r"no column 'text'.*available columns: body, id"):
        DocumentSource(TextConfig(dataset=str(tmp_path / "c")))


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        DocumentSource(TextConfig(dataset=str(tmp_path / "nope.jsonl")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        DocumentSource(TextConfig(dataset=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="bos_policy"):
        TextConfig(bos_policy="start")
    with pytest.raises(ValueError, match="context_length"):
        TextConfig(context_length=1)


def test_fast_tokenize_path_equals_tokenizer_call_and_falls_back_on_difference():
    docs = make_documents(40, seed=5) + ["", "zebra unknown words !"]
    ref = TOK(docs, add_special_tokens=False)["input_ids"]
    assert make_tokenize(make_tokenizer())(docs) == ref

    class Odd:  # a tokenizer whose Python __call__ disagrees with its Rust backend
        def __init__(self):
            self.inner = make_tokenizer()
            self.backend_tokenizer = self.inner.backend_tokenizer

        def __call__(self, texts, **kw):
            out = self.inner(texts, **kw)
            return {"input_ids": [[i + 1 for i in x] for x in out["input_ids"]]}

    odd = Odd()
    tk = make_tokenize(odd)
    want = [[i + 1 for i in x] for x in ref]
    assert tk(docs) == want and tk(docs[:3]) == want[:3]
