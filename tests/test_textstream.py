"""steering.textstream.TextAssembler with invalid UTF-8 from byte tokens: a byte-fallback decoder
(Llama-2 style <0xNN> pieces) turns a whole invalid byte run into U+FFFD, characters already
emitted from it included; byte-level BPE (GPT-2 style) replaces only the invalid bytes, and so does
the text of a byte-fallback row (`saes.bytefallback`). The text must never be rewritten, never stop
early, never lose a character, and be the same streamed or not, with sane offsets."""

from __future__ import annotations

import pytest

FFFD = "\ufffd"


@pytest.fixture(scope="module")
def sp():
    from helpers.text_tokenizers import sentencepiece_bpe

    return sentencepiece_bpe()  # no CJK in its training text: 你好 is six <0xNN> tokens


@pytest.fixture(scope="module")
def gpt2():
    """A tiny real GPT-2 style byte-level BPE trained on English only: a CJK character is 3 byte tokens."""
    from helpers.real_models import build_family_tokenizer

    english = ["The quick brown fox jumps over the lazy dog, and the end of the text. " * 20,
               "the sea is deep and the ship sails on\n" * 10]
    return build_family_tokenizer("gpt2", english, vocab_size=300)


def assemble(tok, ids, stop=(), context_ids=()):
    """Stream `ids` through a TextAssembler with offsets: (pieces, stopped, text, offsets)."""
    from steering.textstream import TextAssembler

    a = TextAssembler(tok, stop=stop, context_ids=context_ids, offsets=True)
    pieces, offsets, stopped = [], [], False
    for i in ids:
        piece, stopped = a.push(i)
        pieces.append(piece)
        offsets += a.offsets()
        if stopped:
            break
    pieces.append(a.finish())
    offsets += a.offsets(final=True)
    return pieces, stopped, a.text, offsets


def unstreamed(tok, ids, context_ids=()):
    """The text of a row nobody streams (no stop strings, no offsets: nothing decoded until the end)."""
    from steering.textstream import TextAssembler

    a = TextAssembler(tok, context_ids=context_ids)
    pieces = [a.push(i, emit=False)[0] for i in ids]
    return "".join(pieces) + a.finish()


def check_offsets(text, offsets, n_tokens):
    assert len(offsets) == n_tokens
    assert all(0 <= o <= len(text) for o in offsets), (offsets, len(text))
    assert offsets == sorted(offsets), offsets


def sp_ids(sp):
    byte = {b: sp.convert_tokens_to_ids(f"<0x{b:02X}>") for b in (0xE4, 0xBD, 0xA0)}
    head = sp("你好", add_special_tokens=False)["input_ids"]
    assert "<0xE4>" in sp.convert_ids_to_tokens(head) and sp.decode(head) == "你好"
    tail = sp(" the sea is deep", add_special_tokens=False)["input_ids"]
    return byte, head, tail


@pytest.mark.parametrize("case", ["bad run then words", "bad run at the end", "words then CJK again"])
def test_byte_fallback_invalid_run_neither_rewrites_nor_stops_the_text(sp, case):
    """你好 then an incomplete <0xE4><0xBD>: HF decodes the whole run as eight U+FFFD (rewriting 你好)
    and keeps it so; the text keeps 你好, the two bad bytes read as UTF-8 reads them (one U+FFFD for
    the cut-off character, on the first byte's span), and what comes after them follows."""
    byte, head, tail = sp_ids(sp)
    bad = [byte[0xE4], byte[0xBD]]
    ids, want = {
        "bad run then words": (head + bad + tail, "你好" + FFFD + " the sea is deep"),
        "bad run at the end": (head + bad, "你好" + FFFD),
        "words then CJK again": (head + bad + tail + head, "你好" + FFFD + " the sea is deep 你好"),
    }[case]
    assert sp.decode(ids, skip_special_tokens=True).startswith(FFFD * 8)  # what decoding them all gives
    assert "你好" + b"\xe4\xbd".decode("utf-8", "replace") == want[:3]  # the bytes as UTF-8 reads them
    pieces, stopped, text, offsets = assemble(sp, ids)
    assert "".join(pieces) == text == want and not stopped
    assert unstreamed(sp, ids) == want  # the same text when nobody streams it
    check_offsets(text, offsets, len(ids))
    spans = [text[x:y] for x, y in zip(offsets, offsets[1:] + [len(text)])]
    assert spans[len(head) : len(head) + 2] == [FFFD, ""]  # the cut-off character's U+FFFD where it began
    words = range(len(head) + 2, min(len(ids), len(head) + 2 + len(tail)))  # each word its own span
    assert [spans[k] for k in words] == [sp.convert_ids_to_tokens(ids[k]).replace("\u2581", " ") for k in words]


@pytest.mark.parametrize("case", ["bad run then words", "bad run at the end", "line break then a bad byte", "valid run"])
def test_the_eager_continuation_keeps_text_an_invalid_byte_run_would_rewrite(sp, case):
    """`continuation_text` (the eager `steer` / `generate` path) follows the streamed text's rule:
    HF's decoding of the whole row turns 你好 into U+FFFD once an invalid byte run follows; the
    continuation keeps 你好 and equals what the engine / API stream (streamed or not)."""
    from steering.generation import continuation_text

    byte, head, tail = sp_ids(sp)
    new, want = {
        "bad run then words": (head + [byte[0xE4], byte[0xBD]] + tail, "你好" + FFFD + " the sea is deep"),
        "bad run at the end": (head + [byte[0xE4], byte[0xBD]], "你好" + FFFD),
        "line break then a bad byte": (head + [sp.convert_tokens_to_ids("<0x0A>"), byte[0xE4]] + tail,
                                       "你好\n" + FFFD + " the sea is deep"),
        "valid run": (head + [byte[0xE4], byte[0xBD], byte[0xA0]] + tail, "你好你 the sea is deep"),
    }[case]
    prompt = [sp.bos_token_id, *sp("the ship", add_special_tokens=False)["input_ids"]]
    got = continuation_text(sp, prompt, new + [sp.eos_token_id] + tail)  # cut at EOS
    assert got == " " + want == assemble(sp, new, context_ids=prompt)[2] == unstreamed(sp, new, context_ids=prompt)
    whole = sp.decode(prompt + new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    if case == "valid run":  # nothing rewritten: the decoding of all the tokens, as before
        assert whole == "the ship" + got
    else:
        assert "你好" not in whole  # what HF's decoding of the whole row gave, and the eager text was


def test_held_back_line_break_survives_the_rewrite(sp):
    """你好 + line break (<0x0A>, held back as trailing whitespace) + <0xE4>: HF rewrites the whole run;
    the text keeps the line break it had not emitted yet."""
    byte, head, tail = sp_ids(sp)
    ids = head + [sp.convert_tokens_to_ids("<0x0A>"), byte[0xE4]] + tail
    assert sp.decode(ids, skip_special_tokens=True) == FFFD * 8 + " the sea is deep"
    pieces, _, text, offsets = assemble(sp, ids)
    assert "".join(pieces) == text == "你好\n" + FFFD + " the sea is deep" == unstreamed(sp, ids)
    check_offsets(text, offsets, len(ids))


def test_byte_fallback_run_that_completes_reads_as_decoding_it_all(sp):
    """你好 + <0xE4><0xBD> + <0xA0> is 你好你: valid, and the text is exactly the tokenizer's decoding."""
    byte, head, tail = sp_ids(sp)
    ids = head + [byte[0xE4], byte[0xBD], byte[0xA0]] + tail
    pieces, _, text, offsets = assemble(sp, ids)
    assert "".join(pieces) == text == sp.decode(ids, skip_special_tokens=True) == "你好你 the sea is deep"
    assert unstreamed(sp, ids) == text
    check_offsets(text, offsets, len(ids))


@pytest.mark.parametrize("stop, want, stops", [
    ([FFFD * 2], "你好" + FFFD + " the sea is deep", False),  # only in HF's decoding
    ([" sea"], "你好" + FFFD + " the", True),
    ([FFFD + " the"], "你好", True),
])
def test_stop_strings_around_an_invalid_byte_run(sp, stop, want, stops):
    byte, head, tail = sp_ids(sp)
    ids = head + [byte[0xE4], byte[0xBD]] + tail
    pieces, stopped, text, offsets = assemble(sp, ids, stop=stop)
    assert "".join(pieces) == text == want and stopped == stops
    assert all(0 <= o <= len(text) for o in offsets) and offsets == sorted(offsets)


def test_prompt_ending_in_byte_tokens_reads_on_as_continuation_text(sp):
    """The few prompt tokens the text reads on from may start inside a character (the last byte of
    你): they are not allowed to garble the new bytes (你 after a prompt ending in 你好)."""
    from steering.generation import continuation_text

    byte, head, tail = sp_ids(sp)
    prompt = [sp.bos_token_id, *head]
    new = [byte[0xE4], byte[0xBD], byte[0xA0]] + tail
    want = continuation_text(sp, prompt, new)
    assert want == "你 the sea is deep"
    pieces, _, text, offsets = assemble(sp, new, context_ids=prompt)
    assert "".join(pieces) == text == want == unstreamed(sp, new, context_ids=prompt)
    check_offsets(text, offsets, len(new))


def gpt2_bytes(gpt2):
    ni = gpt2("你", add_special_tokens=False)["input_ids"]
    assert len(ni) == 3 and gpt2.decode(ni) == "你"  # E4 BD A0, one token each
    return {0xE4: ni[0], 0xBD: ni[1]}


@pytest.mark.parametrize("case", ["stray continuation byte", "incomplete character", "bad run at the end",
                                  "two stray bytes then CJK"])
def test_byte_level_bpe_invalid_bytes_leave_the_characters_around_them(gpt2, case):
    """Byte-level BPE decodes invalid bytes as U+FFFD without rewriting the characters before them:
    the text is the tokenizer's decoding of all the tokens, streamed or not."""
    byte = gpt2_bytes(gpt2)
    head = gpt2("你好", add_special_tokens=False)["input_ids"]
    tail = gpt2(" the sea", add_special_tokens=False)["input_ids"]
    ids = {"stray continuation byte": head + [byte[0xBD]] + tail,
           "incomplete character": head + [byte[0xE4]] + tail,
           "bad run at the end": head + [byte[0xE4], byte[0xBD]],
           "two stray bytes then CJK": head + [byte[0xBD], byte[0xBD]] + head}[case]
    whole = gpt2.decode(ids)
    for k in range(len(head), len(ids)):  # no decoding of a prefix rewrites an earlier character
        assert whole.startswith(gpt2.decode(ids[:k]).rstrip(FFFD)), k
    assert whole.startswith("你好" + FFFD)
    pieces, _, text, offsets = assemble(gpt2, ids)
    assert "".join(pieces) == text == whole == unstreamed(gpt2, ids)
    check_offsets(text, offsets, len(ids))


@pytest.mark.parametrize("name", ["sp", "gpt2"])
def test_random_mixes_of_characters_stray_bytes_and_words(name, request):
    """Seeded random rows of whole characters, single byte tokens, words, line breaks and EOS, with
    and without a prompt and stop strings: pieces joined are the text, streamed or not, offsets in
    order and inside the text, and where decoding all the tokens gives no U+FFFD the text is it."""
    import random

    tok = request.getfixturevalue(name)

    def enc(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    whole_chunks = [enc(w) for w in ["你", "好", "🙂", "é", " the", " sea", "\n", ",", " "]] + [[tok.eos_token_id]]
    byte_tokens = sorted(set(enc("你🙂é")))
    rng = random.Random(1)
    compared = 0
    for _ in range(300):
        ids = [i for _ in range(rng.randint(1, 8))
               for i in ([rng.choice(byte_tokens)] if rng.random() < 0.2 else rng.choice(whole_chunks))]
        stop = rng.choice([(), (), (" sea",), (FFFD * 2,), ("\n",)])
        prompt = rng.choice([(), (), tuple(enc("你好")), tuple(enc("the 你"))])
        pieces, stopped, text, offsets = assemble(tok, ids, stop=stop, context_ids=prompt)
        assert "".join(pieces) == text, ids
        n = len(ids) if not stopped else len(offsets)
        check_offsets(text, offsets, n)
        if stop:
            continue
        assert unstreamed(tok, ids, context_ids=prompt) == text, ids
        whole = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if not prompt and FFFD not in whole:
            assert text == whole, ids
            compared += 1
    assert compared > 15  # rows compared with the whole decoding (28 and 22 of the 300 with this seed)
