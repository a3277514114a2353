"""Token text from the tokenizer itself (features.tokentext), and every surface that shows it:
the feature store, the judge prompts, `saesteer features show` and the web pages.

Tokenizers: byte-level BPE and a SentencePiece-style BPE trained here on Python source, prose and
CJK (helpers.text_tokenizers), and the toy world's word-level tokenizer."""

from __future__ import annotations

import re
import sqlite3
from html.parser import HTMLParser

import pytest
import torch

from features.tokentext import (_table, align_pieces, label_of_bytes, mark_pieces, pieces_by_prefix, token_bytes,
                                token_label, token_labels, token_text, token_texts, visible)
from helpers.text_tokenizers import CJK, CORPUS, PROSE, PYTHON_SOURCE, byte_level_bpe, sentencepiece_bpe


def _toy():
    from toyworld.tokenizer import load_tokenizer

    return load_tokenizer()


TOKENIZERS = {"byte_level_bpe": byte_level_bpe, "sentencepiece": sentencepiece_bpe, "toy_words": _toy}
TOY_TEXT = ["the sailor sees a whale .", "did the old owl fly over the sea ?"]


def _decode(tok, ids):
    return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _windows(tok, texts, step=3, max_len=48):
    """Many windows of each text (cut anywhere, also inside a character), with and without BOS."""
    out = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"][:max_len]
        for a in range(0, len(ids), step):
            for b in range(a + 1, len(ids) + 1, step + 1):
                out.append(ids[a:b])
                out.append([tok.bos_token_id] + ids[a:b])
    return out


def _spm_text(tok, ids) -> str:
    """A SentencePiece window's text from its tokens' bytes ("▁" a space, <0xNN> one byte), less the
    first space as the decoder strips it: the decoding, but for a byte run the window cuts, which
    keeps its whole characters (the decoder makes every byte of the run a U+FFFD)."""
    from helpers.text_tokenizers import sentencepiece_bytes

    text = sentencepiece_bytes(tok, ids).decode("utf-8", errors="replace")
    assert "\ufffd" in _decode(tok, ids) or text.removeprefix(" ") == _decode(tok, ids)
    return text.removeprefix(" ")


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_window_text_is_the_decoding_and_pieces_join_to_it(name):
    tok = TOKENIZERS[name]()
    windows = _windows(tok, TOY_TEXT if name == "toy_words" else CORPUS)
    assert _table(tok) is not None  # these three take the fast path
    for w, tt in zip(windows, token_texts(tok, windows)):
        assert tt.text == (_decode(tok, w) if name != "sentencepiece" else _spm_text(tok, w))
        assert "".join(tt.pieces) == tt.text and len(tt.pieces) == len(w)
        # the fast path (contribution table) is what gave these pieces
        assert _table(tok).pieces(w, _decode(tok, w)) == tt.pieces
        # and it agrees with the reference (decoding every prefix) wherever no character is cut:
        # with a cut one, both are valid partitions that place the U+FFFD differently
        if "\ufffd" not in tt.text:
            assert tt.pieces == pieces_by_prefix(tok, w), (w, tt.pieces)


def test_code_is_not_garbled_by_guessing_spaces():
    tok = byte_level_bpe()
    line = PYTHON_SOURCE.splitlines()[0]  # def boundary_localization(tokens, offsets):
    ids = tok(line, add_special_tokens=False)["input_ids"]
    pieces = token_text(tok, ids).pieces
    assert len(ids) > 5 and "".join(pieces) == line
    # pieces that do not start a word carry no space: the old heuristic joined them with spaces
    assert sum(1 for p in pieces if p[:1].isspace()) < 0.2 * len(pieces)


def test_sentencepiece_spaces_and_byte_fallback():
    tok = sentencepiece_bpe()
    text = "The localization of a boundary 你好"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:2] == ["\u2581The", "\u2581localization"]
    assert any(t.startswith("<0x") for t in tok.convert_ids_to_tokens(ids))  # CJK spelled in bytes
    tt = token_text(tok, ids)
    assert tt.text == text == _decode(tok, ids)  # the decoder strips the text's leading "▁"
    assert tt.pieces[:5] == ["The", " localization", " of", " a", " boundary"]
    assert tt.pieces[-6:] == ["", "", "你", "", "", "好"]  # each character on the byte token completing it


def test_sentencepiece_token_bytes_keep_the_words_space():
    """Each token's own bytes (the API's logprob `bytes`) and label (`token`): a Llama-2 style
    tokenizer's decoder strips the leading space of a text, so decoding "▁of" alone gave "of" and the
    joined bytes lost every word space; byte-fallback tokens are their one byte."""
    tok = sentencepiece_bpe()
    text = "The localization of a boundary 你好"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert b"".join(token_bytes(tok, i) for i in ids).decode("utf-8") == " " + text  # "▁The" has its space too
    labels = [token_label(tok, i) for i in ids]
    assert labels[:3] == [" The", " localization", " of"]
    assert all(s.encode("utf-8") == token_bytes(tok, i) for s, i in zip(labels, ids) if "\ufffd" not in s)
    assert [token_bytes(tok, i) for i in ids][-6:] == [bytes([b]) for b in "你好".encode("utf-8")]
    assert labels[-6:] == ["\ufffd" + f"\\x{b:02x}" for b in "你好".encode("utf-8")]


def _sp_want(tok) -> dict[int, str]:
    """Tokens whose labels the SentencePiece store's latent 0 promotes most, with those labels."""
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    the, newline, cut = pieces.index("\u2581the"), pieces.index("<0x0A>"), pieces.index("<0xE4>")
    return {the: " the", newline: "\n", cut: "\ufffd\\xe4", pieces.index("<s>"): "<s>"}


def _build_sp_store(path, tok):
    """A small store over SentencePiece contexts (random SAE; the same each call), its latent 0
    promoting `_sp_want`'s tokens."""
    from types import SimpleNamespace

    import saes
    from features import BuildConfig, TensorSource, build_feature_store

    want = _sp_want(tok)
    ids = tok("\n".join(CORPUS), add_special_tokens=False)["input_ids"]
    L = 16
    ctx_CL = torch.tensor(ids[: len(ids) // L * L]).reshape(-1, L)
    g = torch.Generator().manual_seed(0)
    sae = saes.create_sae("topk", 8, 12, k=2, generator=g, metadata={"hook_name": "blocks.0.hook_resid_post"})
    W_U = torch.randn(8, len(tok), generator=g) * 0.1  # an unembedding under which latent 0 promotes `want` most
    for n, i in enumerate(want):
        W_U[:, i] = (10 - n) * sae.W_dec[0].detach()
    model = SimpleNamespace(W_U=W_U, cfg=SimpleNamespace(normalization_type=None))
    return build_feature_store(path, sae, TensorSource(torch.randn(ctx_CL.numel(), 8, generator=g), ctx_CL, name="sp"),
                               BuildConfig(top_k=2, n_quantile=2, n_negative=2, negative_pool=16, checkpoint_rows=0),
                               model=model, tokenizer=tok, progress=False)


def _rule_1_label(tok, i: int) -> str:
    """How stores labelled a token before LABEL_RULE 2: decoded alone, part of a character as its
    bytes with the invalid ones escaped."""
    text = tok.decode([i], skip_special_tokens=False)
    if "\ufffd" not in text:
        return text
    try:
        return token_bytes(tok, i).decode("utf-8")
    except UnicodeDecodeError:
        return token_bytes(tok, i).decode("utf-8", errors="backslashreplace")


def test_a_store_of_the_older_label_rule_is_read_safely_and_relabelled_by_the_build(tmp_path, recwarn):
    """Stores kept labels of the older rule with no version: a SentencePiece word without its space
    ("the"), part of a character as bare escapes ("\\xe4") that the judge took for text. Read without
    a tokenizer, they come marked, with a warning; the build (its run on a complete store too)
    rewrites them and records the rule (meta "vocab_labels")."""
    from autointerp.offline import readable_token
    from features import FeatureStore
    from features.tokentext import LABEL_RULE
    from saes.errors import SaesteerWarning

    tok = sentencepiece_bpe()
    path = tmp_path / "sp.db"
    _build_sp_store(path, tok)
    with FeatureStore.open(path) as st:
        assert st.meta["vocab_labels"] == LABEL_RULE and st.vocab() == token_labels(tok)
    assert not [w for w in recwarn if "older rule" in str(w.message)]
    with sqlite3.connect(path) as conn:  # as written before the rule was recorded
        conn.execute("DELETE FROM meta WHERE key = 'vocab_labels'")
        conn.executemany("UPDATE vocab SET text = ? WHERE token_id = ?",
                         [(_rule_1_label(tok, i), i) for i in range(len(tok))])
    the, cut = list(_sp_want(tok))[:2][0], tok.convert_tokens_to_ids("<0xE4>")
    with pytest.warns(SaesteerWarning, match="older rule.*saesteer features build"):
        with FeatureStore.open(path) as st:
            assert st.token_str(cut) == "\ufffd\\xe4" and not readable_token(st.token_str(cut))
            assert st.token_str(the) == "the"  # (the lost space cannot be told from the label)
            promoted = [e.token for e in st.feature(0).logits.promoted]
    assert "\ufffd\\xe4" in promoted
    assert _build_sp_store(path, tok).relabelled
    with FeatureStore.open(path) as st:
        assert st.meta["vocab_labels"] == LABEL_RULE and st.vocab() == token_labels(tok)
        assert st.token_str(the) == " the"
    assert not _build_sp_store(path, tok).relabelled  # once


def test_a_sentencepiece_token_is_shown_one_way_in_the_store_the_cli_and_the_api(tmp_path, capsys):
    """`token_label` (the store's vocabulary: logit effects in `features show` and the web app) showed a
    SentencePiece token as the tokenizer decodes it alone ("▁the" -> "the", the word's space stripped),
    `token_string` (the API's logprob `token`) as its bytes (" the"), and part of a character as its
    escaped bytes in the one and as U+FFFD in the other. One rule now: the token's own text, as a
    byte-level BPE's "Ġthe" is " the"; part of a character as U+FFFD and its escaped bytes."""
    from types import SimpleNamespace

    from features import FeatureStore
    from saesteer.api.responses import Assembler
    from saesteer.cli import main

    tok = sentencepiece_bpe()
    want = _sp_want(tok)
    the = next(iter(want))
    assert tok.decode([the]) == "the"  # decoded alone the word loses its space (the decoder's Strip)
    path = tmp_path / "sp.db"
    _build_sp_store(path, tok)
    with FeatureStore.open(path) as store:
        vocab = store.vocab()
    assert {i: vocab[i] for i in want} == want
    assert vocab == token_labels(tok) == [token_label(tok, i) for i in range(len(tok))]
    chat = Assembler(SimpleNamespace(kind="chat", rows=[], n=1), tok)._logprobs(list(range(len(tok))), [0.0] * len(tok),
                                                                             [[]] * len(tok))["content"]
    assert [e["token"] for e in chat] == vocab
    plain = Assembler(SimpleNamespace(kind="completion", rows=[], n=1, logprobs=1), tok)._logprobs(list(want), [0.0] * 4,
                                                                                               [[(the, 0.0)]] * 4,
                                                                                               [0, 4, 5, 5])
    assert plain["tokens"] == list(want.values()) and plain["top_logprobs"][0] == {" the": 0.0}
    # `features show` lists latent 0's logit effects with these labels (repr: spaces and line breaks visible)
    assert main(["features", "show", str(path), "0"]) == 0
    out = re.sub(r"\s+", " ", capsys.readouterr().out)  # however the table wraps
    listed = " ".join(f"{label!r} {10 - n:+.3g}" for n, label in enumerate(want.values()))
    assert f"promotes {listed}" in out, out


def test_code_that_spells_a_byte_escape_reads_as_itself_and_part_of_a_character_is_marked():
    """Part of a character was shown as its bare escapes ("\\x9f") and `readable_token` looked for such
    escapes in any text, so code that spells one (b"\\x9f" in a Python file) was taken for part of a
    character: left out of a judge's logit lists and labels, and shown the same as the byte 0x9f.
    Now the mark is U+FFFD, which that code does not have."""
    from types import SimpleNamespace

    from autointerp.featurestore import FeatureStoreLabels
    from autointerp.offline import readable_token
    from features.records import LogitEffects, TokenEffect

    code = 'MAGIC = b"\\x9f\\x9f"  # the header bytes\n'
    tok = sentencepiece_bpe(extra=(code,) * 20)  # no pre-tokenizer split at punctuation: one token spells the bytes
    ids = tok(code, add_special_tokens=False)["input_ids"]
    assert _decode(tok, ids) == code
    spelled = [i for i in ids if b"\\x9f" in token_bytes(tok, i)]  # tokens of the code's escape text
    byte = tok.convert_tokens_to_ids("<0x9F>")  # the byte 0x9f itself
    assert spelled and all("\\x9f" in token_label(tok, i) and readable_token(token_label(tok, i)) for i in spelled)
    assert token_label(tok, byte) == "\ufffd\\x9f" and not readable_token(token_label(tok, byte))
    assert label_of_bytes(b"\\x9f") == "\\x9f" != label_of_bytes(b"\x9f")
    assert label_of_bytes(b"ok \xe6\x97") == "ok \ufffd\\xe6\\x97" and label_of_bytes("日".encode()) == "日"
    assert all(readable_token(p) for p in token_text(tok, ids).pieces)
    # a judge's logit lists keep the code's token and leave out the byte
    effects = [TokenEffect(i, token_label(tok, i), 1.0) for i in (*spelled, byte)]
    store = SimpleNamespace(path="unused.db", promoted_tokens=lambda latents, top: {})
    rec = SimpleNamespace(latent=0, logits=LogitEffects(effects, []), decoder_neighbours=[], coact_neighbours=[])
    evidence = FeatureStoreLabels(store)._evidence(rec)
    assert [t for t, _ in evidence.promoted] == [token_label(tok, i) for i in spelled]


def test_cjk_characters_split_over_byte_tokens_are_never_mojibake():
    tok = byte_level_bpe()
    for text in CJK:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        tt = token_text(tok, ids)
        assert tt.text == text
        assert "\ufffd" not in "".join(tt.pieces)
        # every character is in exactly one piece; the byte tokens before it have empty pieces
        assert [c for p in tt.pieces for c in p] == list(text)
        assert sum(1 for p in tt.pieces if p == "") > 0
    # a window cut inside a character reads as the tokenizer decodes it
    ids = tok(CJK[0], add_special_tokens=False)["input_ids"]
    for a in range(4):
        w = ids[a:a + 7]
        assert "".join(token_text(tok, w).pieces) == _decode(tok, w)


def test_word_level_pieces_carry_the_space_before_them():
    tok = _toy()
    ids = tok(TOY_TEXT[0], add_special_tokens=False)["input_ids"]
    assert token_text(tok, ids).pieces == ["the", " sailor", " sees", " a", " whale", " ."]
    assert token_text(tok, [tok.bos_token_id] + ids).pieces[:2] == [tok.bos_token, " the"]


@pytest.mark.parametrize("decoder", ["wordpiece", "none"])
def test_word_piece_and_decoderless_tokenizers_take_the_fast_path(decoder):
    """A BERT-style WordPiece tokenizer ("##" continuations, its decoder without clean-up) and a
    word-level one with no decoder at all: the contribution table ("words", `saes.bytefallback`'s
    decoder parts and vocabulary) gives each token's piece, as decoding every prefix does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from features.tokentext import pieces_by_prefix

    if decoder == "wordpiece":
        tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "[CLS]"], show_progress=False)
    else:
        tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "[CLS]"], show_progress=False)
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(CORPUS, trainer=trainer)
    if decoder == "wordpiece":
        tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", bos_token="[CLS]")
    ids = tok(" ".join(CORPUS)[:300], add_special_tokens=False)["input_ids"]
    strings = tok.convert_ids_to_tokens(ids)
    assert decoder == "none" or any(s.startswith("##") for s in strings)  # continuations to join
    assert _table(tok) is not None and _table(tok).kind == "words"
    tt = token_text(tok, ids)
    assert tt.text == _decode(tok, ids) and tt.pieces == pieces_by_prefix(tok, ids)
    assert _table(tok).pieces(ids, tt.text) == tt.pieces  # the table gave them


def test_unknown_decoder_falls_back_to_the_reference():
    from tokenizers import decoders

    tok = byte_level_bpe()
    tok.backend_tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip("d", 1, 0)])  # odd
    assert _table(tok) is None
    ids = tok(PYTHON_SOURCE[:60], add_special_tokens=False)["input_ids"]
    tt = token_text(tok, ids)
    assert tt.text == _decode(tok, ids) and tt.text.startswith("ef ") and "".join(tt.pieces) == tt.text


def test_marks_move_from_an_empty_piece_to_the_completing_one():
    assert mark_pieces(["a", " b", "", "", "日"], [2], "<<", ">>") == "a b<<日>>"
    assert mark_pieces(["a", " b"], [1], "[[", "]]") == "a [[b]]"
    # a window's last tokens cut inside a character: the mark is on the character they are drawn with
    assert mark_pieces(["a", "\ufffd", ""], [2], "<<", ">>") == "a<<\ufffd>>"
    assert mark_pieces(["", ""], [1], "<<", ">>") == "<<>>"  # no text at all (a store without a tokenizer)
    assert visible("x\n\ty") == "x\u21b5\u21e5y"


def test_align_pieces_recovers_older_stores_pieces():
    tok = byte_level_bpe()
    for text in PROSE + [PYTHON_SOURCE[:200]] + CJK:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        alone = [_decode(tok, [i]) for i in ids]  # what the vocab table of an older store holds
        got = align_pieces(text, alone)
        assert "".join(got) == text and len(got) == len(ids)
        if not any("\ufffd" in s for s in alone):
            assert got == token_text(tok, ids).pieces
    sp = sentencepiece_bpe()
    ids = sp(PROSE[1], add_special_tokens=False)["input_ids"]
    alone = [_decode(sp, [i]) for i in ids]  # SentencePiece decodes "▁saw" alone as "saw"
    assert align_pieces(PROSE[1], alone) == token_text(sp, ids).pieces


# ------------------------------------------------------------------------------------------------
# one store, every surface


@pytest.fixture(scope="module")
def code_store(tmp_path_factory):
    """A feature store over byte-level BPE contexts of code, prose and CJK (random SAE)."""
    import saes
    from features import BuildConfig, TensorSource, build_feature_store

    tok = byte_level_bpe()
    ids = tok("\n".join(CORPUS * 2), add_special_tokens=False)["input_ids"]
    L = 32
    C = len(ids) // L
    ctx_CL = torch.tensor(ids[: C * L]).reshape(C, L)
    g = torch.Generator().manual_seed(0)
    acts_RD = torch.randn(C * L, 16, generator=g)
    sae = saes.create_sae("topk", 16, 24, k=4, generator=g, metadata={"hook_name": "blocks.0.hook_resid_post"})
    path = tmp_path_factory.mktemp("tokentext") / "code.db"
    cfg = BuildConfig(top_k=6, n_quantile=6, n_negative=4, negative_pool=64, window_before=10, window_after=4,
                      n_neighbours=3, checkpoint_rows=0)
    build_feature_store(path, sae, TensorSource(acts_RD, ctx_CL, name="code"), cfg, tokenizer=tok, progress=False)
    return path, tok


def _examples(path):
    from features import FeatureStore

    with FeatureStore.open(path) as st:
        ids = [r.latent for r in st.list_features(sort="freq", filter={"alive_only": True}, limit=100)]
        return {i: st.feature(i).top_examples for i in ids}


def test_store_keeps_the_exact_window_text_and_pieces(code_store):
    path, tok = code_store
    n_code = 0
    for exs in _examples(path).values():
        for e in exs:
            assert e.text == _decode(tok, e.token_ids)
            assert "".join(e.tokens) == e.text and len(e.tokens) == len(e.token_ids)
            n_code += "def " in e.text or "self." in e.text
    assert n_code > 0


def test_judge_prompt_text_is_the_tokenizers_decoding(code_store):
    from autointerp.examples import active_positions
    from autointerp.featurestore import FeatureStoreLabels
    from autointerp.prompts import (MARK_CLOSE, MARK_OPEN, build_detection_messages, build_explain_messages, escape_data,
                                    whole_characters)

    path, tok = code_store
    checked = 0
    with FeatureStoreLabels.open(path) as st:
        for latent in st.latents()[:10]:
            lex = st.examples(latent)
            for ex in lex.top[:3]:
                store_ex = next(e for e in st.store.examples(latent, "top") if str(e.id) == ex.ref)
                # less the bytes of a character cut by the window's edges (U+FFFD there)
                window = _decode(tok, store_ex.token_ids).strip("\ufffd")
                user = build_explain_messages([ex], mark_threshold=0.5)[1]["content"]
                line = user.split("Example 1: ", 1)[1].split("\n", 1)[0]
                assert line.replace(MARK_OPEN, "").replace(MARK_CLOSE, "") == escape_data(window).strip()
                # one mark per marked token, a mark on an empty piece joining the piece that completes it
                pieces, gone = whole_characters(ex.tokens)
                marked = {next((j for j in range(p, len(pieces)) if pieces[j]), p)
                          for p in active_positions(ex, 0.5) if p not in gone}
                assert line.count(MARK_OPEN) == line.count(MARK_CLOSE) == len(marked) > 0
                detect = build_detection_messages("some label", [ex])[1]["content"]
                assert f"Context 1: {escape_data(window).strip()}\n" in detect
                checked += 1
    assert checked >= 10


def test_features_show_and_the_web_page_show_the_same_text(code_store, capsys, monkeypatch):
    from features import FeatureStore
    from helpers.web_app import client
    from saesteer.cli import main
    from saesteer.web import Limits, ServeConfig, StoreEntry, create_app
    from saesteer.web.store_source import StoreCatalog

    path, tok = code_store
    monkeypatch.setenv("COLUMNS", "2000")  # one line per example
    cjk = re.compile("[\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af]")
    picked = {}  # a latent whose examples hold code, and one whose examples hold CJK
    for i, exs in _examples(path).items():
        for kind, hit in (("code", lambda t: "def " in t or "self." in t), ("cjk", cjk.search)):
            if kind not in picked and any(hit(e.text) for e in exs[:5]):
                picked[kind] = (i, exs)
    assert set(picked) == {"code", "cjk"}

    cat = StoreCatalog(FeatureStore.open(path), name="code")
    app = create_app([StoreEntry("code", cat)], config=ServeConfig(port=8000), limits=Limits())
    with client(app) as c:
        for latent, exs in picked.values():
            want = [visible(_decode(tok, e.token_ids)) for e in exs[:5]]
            assert main(["features", "show", str(path), str(latent), "--examples", "5"]) == 0
            out = capsys.readouterr().out
            lines = [re.match(r"^ *-?\d+\.\d{3} (.*)$", ln) for ln in out.split("top examples", 1)[1].splitlines()]
            assert [m.group(1) for m in lines if m][:5] == want
            page = c.get(f"/s/code/f/{latent}", headers={"accept": "text/html"}).text
            assert _example_texts(page)[:5] == want


class _Toks(HTMLParser):
    """The text of each `<span class="toks">` (an example window) of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.windows: list[str] = []
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        if tag != "span":
            return
        if self._depth:
            self._depth += 1
        elif "toks" in (dict(attrs).get("class") or "").split():
            self._depth = 1
            self.windows.append("")

    def handle_endtag(self, tag):
        if tag == "span" and self._depth:
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.windows[-1] += data


def _example_texts(page: str) -> list[str]:
    p = _Toks()
    p.feed(page)
    return p.windows


def test_older_stores_stay_readable(code_store, tmp_path):
    from autointerp.offline import readable_token
    from features import FeatureStore
    from helpers.feature_fixtures import version_2_store

    path, tok = code_store
    old = tmp_path / "old.db"
    version_2_store(path, old)  # a table `examples`, as the stores of then had
    with sqlite3.connect(old) as conn:  # as written before the pieces were kept
        conn.execute("ALTER TABLE examples DROP COLUMN token_offsets")
    new = _examples(path)
    with FeatureStore.open(old) as st:  # read-only: nothing changes on disk
        for i, exs in new.items():
            for a, b in zip(st.feature(i).top_examples, exs):
                assert a.text == b.text and "".join(a.tokens) == a.text
                if all(readable_token(st.token_str(t)) for t in a.token_ids):  # no part of a character
                    assert a.tokens == b.tokens
    with sqlite3.connect(old) as conn:
        assert "token_offsets" not in {r[1] for r in conn.execute("PRAGMA table_info(examples)")}
    with FeatureStore.open(old, readonly=False) as st:  # writable: the column is added
        assert st.feature(next(iter(new))).top_examples[0].text == new[next(iter(new))][0].text
    with sqlite3.connect(old) as conn:
        assert "token_offsets" in {r[1] for r in conn.execute("PRAGMA table_info(examples)")}


def test_a_window_is_shown_without_the_bos_that_starts_its_context():
    from features import Example
    from features.records import without_start_bos

    def ex(ids, acts, centre, position):
        pieces = ["<s>" if i == 1 else f" w{i}" for i in ids]
        return Example(1, 0, "top", 0, max(acts), None, 0, position, centre, ids, pieces, acts, "".join(pieces))

    at_start = ex([1, 5, 6, 7], [0.0, 0.0, 2.0, 0.5], centre=2, position=2)
    shown = without_start_bos(at_start, 1)
    assert shown.token_ids == [5, 6, 7] and shown.tokens == [" w5", " w6", " w7"] and shown.text == " w5 w6 w7"
    assert shown.acts == [0.0, 2.0, 0.5] and shown.centre == 1 and shown.tokens[shown.centre] == " w6"
    assert at_start.token_ids[0] == 1  # the stored example is left as it was
    fires = ex([1, 5, 6], [0.3, 2.0, 0.0], centre=1, position=1)  # the latent fires on BOS: it stays
    assert without_start_bos(fires, 1) is fires
    later = ex([5, 1, 6], [0.0, 0.0, 2.0], centre=2, position=40)  # a BOS inside the text (doc policy): kept
    assert without_start_bos(later, 1) is later
    assert without_start_bos(at_start, None) is at_start  # the store records no BOS id
    negative = ex([1, 5], [0.0, 0.0], centre=0, position=0)  # a centre on the BOS moves to the next token
    assert without_start_bos(negative, 1).centre == 0 and without_start_bos(negative, 1).token_ids == [5]
