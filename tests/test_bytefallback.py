"""saes.bytefallback against Python's own UTF-8 decoder: the text of any ids of a SentencePiece
byte-fallback tokenizer (Llama-2 / Mistral with the decoder's first-space strip, Gemma without it)
is the tokens' bytes as `bytes.decode("utf-8", "replace")` reads them - every maximal run of byte
tokens on its own, overlong forms, surrogates, code points past U+10FFFF and runs cut at a window's
edges included - in a store window (`features.tokentext`), a streamed reply and an unstreamed one
(`steering.textstream`). HF's decoder differs only on runs that are not valid UTF-8 as a whole."""

from __future__ import annotations

import random

import pytest

FFFD = "\ufffd"
# bytes at the edges of UTF-8's rules: ASCII, continuations, the never-valid C0/C1/F5..FF, the leads
# whose second byte is restricted (E0: overlong, ED: surrogates, F0: overlong, F4: past U+10FFFF)
EDGE_BYTES = (0x00, 0x09, 0x0A, 0x20, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF,
              0xE0, 0xE1, 0xE4, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF4, 0xF5, 0xF8, 0xFF)
CHARACTERS = "你好é🙂\U0010ffff\ud7ff\ue000"  # whole characters spelled in bytes, at the edges of the ranges


def _gemma_style(tok):
    """The same tokenizer with Gemma's decoder: no strip of the text's first space."""
    from tokenizers import decoders

    tok.backend_tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                                       decoders.Fuse()])
    return tok


@pytest.fixture(scope="module", params=["llama2", "gemma"])
def sp(request):
    from helpers.text_tokenizers import sentencepiece_bpe

    tok = sentencepiece_bpe()
    return tok if request.param == "llama2" else _gemma_style(tok)


def _python_text(tok, ids, strips: bool) -> str:
    """The tokens' bytes as Python decodes them, less the first space where the decoder strips it."""
    from helpers.text_tokenizers import sentencepiece_bytes

    text = sentencepiece_bytes(tok, ids).decode("utf-8", "replace")
    return text.removeprefix(" ") if strips else text


def _random_rows(tok, n: int, seed: int):
    """Rows of words, whole characters, special tokens and stray bytes: runs of any length and any bytes."""
    rng = random.Random(seed)
    byte = {b: tok.convert_tokens_to_ids(f"<0x{b:02X}>") for b in range(256)}
    words = [tok(w, add_special_tokens=False)["input_ids"] for w in (" the", " sea", "def", ",", " ")]
    for _ in range(n):
        row: list[int] = []
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            if r < 0.45:
                row.append(byte[rng.choice(EDGE_BYTES) if rng.random() < 0.7 else rng.randrange(256)])
            elif r < 0.65:
                row += [byte[b] for b in rng.choice(CHARACTERS).encode("utf-8", "surrogatepass")]
            elif r < 0.7:
                row.append(rng.choice([tok.bos_token_id, tok.eos_token_id]))
            else:
                row += rng.choice(words)
        yield row


def test_the_reading_is_the_decoder_s_or_it_is_not_used(sp):
    """`byte_fallback` recognises both decoders, and reading each run as the decoder does gives HF's
    decoding exactly: the only liberty taken is on the runs HF writes as one U+FFFD per byte."""
    from saes.bytefallback import byte_fallback, pieces

    bf = byte_fallback(sp)
    assert bf is not None and bf.strip_first_space == (b"Strip" in sp.backend_tokenizer.decoder.__getstate__())
    for row in _random_rows(sp, 300, seed=2):
        hf = sp.decode(row, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert bf.stripped("".join(pieces(bf.entries_of(row))), hf) is not None, row


def test_text_is_python_s_utf8_decoding_of_the_tokens_bytes(sp):
    """Windows (special tokens kept) and replies (left out), streamed or not: the text is the bytes as
    Python decodes them, and each token's pieces join to it."""
    from features.tokentext import token_text
    from saes.bytefallback import byte_fallback
    from steering.textstream import TextAssembler

    bf, strips = byte_fallback(sp), byte_fallback(sp).strip_first_space
    special = set(sp.all_special_ids)
    rewritten = 0
    for row in _random_rows(sp, 400, seed=3):
        want = _python_text(sp, row, strips)
        assert bf.text(sp, row) == want, (row, sp.convert_ids_to_tokens(row))
        tt = token_text(sp, row)
        assert tt.text == want and len(tt.pieces) == len(row)
        reply = [i for i in row if i not in special]
        if not reply:
            continue
        want = _python_text(sp, reply, strips)
        streamed, unstreamed = TextAssembler(sp), TextAssembler(sp)
        pieces = [streamed.push(i)[0] for i in reply] + [streamed.finish()]
        for i in reply:
            unstreamed.push(i, emit=False)
        assert "".join(pieces) == unstreamed.finish() == want, (reply, sp.convert_ids_to_tokens(reply))
        rewritten += sp.decode(reply, skip_special_tokens=True, clean_up_tokenization_spaces=False) != want
    assert rewritten > 50  # rows where HF's decoder loses characters (a whole run as U+FFFD)


@pytest.mark.parametrize("raw", [b"\xed\xa0\x80", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf4\x90\x80\x80",
                                 b"\xf0\x8f\xbf\xbf", b"\xe4\xbd", b"\xbd\xa0\xe5\xa5", b"\xff\xfe"])
def test_overlong_surrogate_and_cut_runs_read_as_python_reads_them(sp, raw):
    """Each run on its own, between words: U+FFFD as Python writes them (one per maximal invalid
    subpart: b"\\xed\\xa0\\x80", a surrogate, is three), the words around it untouched."""
    from saes.bytefallback import byte_fallback

    byte = [sp.convert_tokens_to_ids(f"<0x{b:02X}>") for b in raw]
    the, sea = (sp(w, add_special_tokens=False)["input_ids"] for w in (" the", " sea"))
    assert byte_fallback(sp).text(sp, the + byte + sea) == ("" if byte_fallback(sp).strip_first_space else " ") + \
        "the" + raw.decode("utf-8", "replace") + " sea"


def test_a_special_added_token_outside_the_named_ones_is_skipped_as_hf_skips_it():
    """Mistral-v0.3's control tokens ([INST], [/INST]) are added tokens marked special but in no
    `all_special_ids`: skip_special_tokens leaves them out, and so does the reading, which kept
    them and, no longer HF's decoding, fell back to it (你 after a cut run lost to U+FFFD)."""
    from tokenizers import AddedToken

    from helpers.text_tokenizers import sentencepiece_bpe
    from saes.bytefallback import text_of
    from steering.textstream import TextAssembler

    tok = sentencepiece_bpe()
    tok.add_tokens([AddedToken("[INST]", special=True, normalized=False)])
    inst = tok.convert_tokens_to_ids("[INST]")
    assert inst not in tok.all_special_ids
    ids = [inst] + [tok.convert_tokens_to_ids(f"<0x{b:02X}>") for b in b"\xbd\xa0\xe4\xbd\xa0"] + \
        tok(" the", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == FFFD * 5 + " the"
    assert text_of(tok, ids, skip_special_tokens=True) == FFFD * 2 + "你 the"
    assert text_of(tok, ids) == "[INST]" + FFFD * 2 + "你 the"
    stream = TextAssembler(tok)
    assert "".join(stream.push(i)[0] for i in ids) + stream.finish() == FFFD * 2 + "你 the"
