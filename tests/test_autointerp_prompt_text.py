"""What the judge reads of an example: whole characters when a store window cuts one (byte-level
BPE splits CJK characters and emoji into byte tokens), tabs kept visible, and a prompt version
that changes whenever the prompts do."""

from __future__ import annotations

import hashlib
import json

import pytest

from autointerp.examples import Example
from autointerp.prompts import (FuzzItem, build_detection_messages, build_explain_messages, build_fuzz_messages,
                                render_tokens)

TEXT = "The 日本語 text 🙂 and 你好\tend"


@pytest.fixture(scope="module")
def byte_bpe():
    """A tiny real byte-level BPE (GPT-2 style) trained on English only: every CJK character and
    emoji of TEXT is 3 or 4 byte tokens."""
    from helpers.real_models import build_family_tokenizer

    english = ["The quick brown fox jumps over the lazy dog, and the end of the text. " * 20,
               "def f(x):\n\treturn x + 1\n" * 10]
    return build_family_tokenizer("gpt2", english, vocab_size=300)


@pytest.fixture(scope="module")
def byte_fallback():
    """A Llama-2 style SentencePiece BPE with <0xNN> byte fallback (no CJK in its training text)."""
    from helpers.text_tokenizers import sentencepiece_bpe

    return sentencepiece_bpe()


def _windows(tok):
    """(token bytes, pieces as the feature store keeps them) for every window of 2..10 tokens."""
    from features.tokentext import token_bytes, token_texts

    ids = tok.encode(TEXT, add_special_tokens=False)
    spans = [(a, b) for a in range(len(ids)) for b in range(a + 2, min(a + 10, len(ids)) + 1)]
    texts = token_texts(tok, [ids[a:b] for a, b in spans])
    return [([token_bytes(tok, i) for i in ids[a:b]], tt) for (a, b), tt in zip(spans, texts)]


def _shown(raw: bytes) -> str:
    """The window's whole characters: the text's bytes are valid UTF-8, so the only invalid bytes
    of a window are those of a character cut at its edges."""
    return raw.decode("utf-8", errors="ignore").replace("\t", "\u21e5").strip()


def _prompts_of(pieces):
    ex = Example(pieces, [1.0] * len(pieces))
    return [m[1]["content"] for m in (build_explain_messages([ex], 0.3), build_detection_messages("x", [ex]),
                                      build_fuzz_messages("x", [FuzzItem(ex, (0,), True)]))]


def test_windows_cut_inside_a_character_show_its_whole_characters_only(byte_bpe):
    windows = _windows(byte_bpe)
    cut = [tt for _, tt in windows if "\ufffd" in tt.text]
    assert len(cut) > len(windows) // 3  # what the store keeps for such windows: U+FFFD at an edge
    for chunks, tt in windows:
        assert render_tokens(tt.pieces) == _shown(b"".join(chunks)), (tt.text, tt.pieces)
        assert not any("\ufffd" in p for p in _prompts_of(tt.pieces))
    assert any(_shown(b"".join(c)).startswith("\u8a9e") for c, _ in windows)  # a character after a cut one is kept
    assert any(_shown(b"".join(c)).endswith("\U0001f642") for c, _ in windows)


def test_byte_fallback_windows_show_no_cut_character_either(byte_fallback):
    """SentencePiece's byte fallback decodes an invalid run of byte tokens as one U+FFFD per byte,
    whole characters of the run included: all of them go, and what is shown is the text's."""
    windows = _windows(byte_fallback)
    assert sum("\ufffd" in tt.text for _, tt in windows) > len(windows) // 3
    for _, tt in windows:
        shown = render_tokens(tt.pieces)
        assert "\ufffd" not in shown and shown.replace("\u21e5", "\t") in TEXT, (tt.text, shown)
        assert not any("\ufffd" in p for p in _prompts_of(tt.pieces))


def test_marks_on_cut_bytes_go_with_them_and_marks_on_a_whole_character_stay(byte_bpe):
    from features.tokentext import token_bytes, token_text

    ids = byte_bpe.encode(TEXT, add_special_tokens=False)
    e = [token_bytes(byte_bpe, i) for i in ids].index(b"\xf0")  # the emoji's first byte; " text", " " before it
    assert b"".join(token_bytes(byte_bpe, i) for i in ids[e - 2:e + 6]) == " text \U0001f642 and ".encode()
    whole = token_text(byte_bpe, ids[e - 2:e + 4]).pieces
    assert render_tokens(whole, marked=[2]) == "text <<\U0001f642>>"  # a mark on its first byte moves to it
    head = token_text(byte_bpe, ids[e - 2:e + 2]).pieces  # ends after two of its four bytes
    assert head[2:] == ["\ufffd", ""]
    assert render_tokens(head, marked=[2]) == render_tokens(head, marked=[3]) == "text"  # no "<<>>"
    assert render_tokens(head, marked=[0]) == "<<text>>"
    tail = token_text(byte_bpe, ids[e + 2:e + 6]).pieces  # starts at its third byte
    assert tail[:2] == ["\ufffd", "\ufffd"]
    assert render_tokens(tail, marked=[0]) == render_tokens(tail, marked=[1]) == "and"  # not moved onto " and"
    assert render_tokens(tail, marked=[1, 2]) == "<<and>>"


def test_a_real_replacement_character_inside_the_window_stays():
    assert render_tokens(["a", " \ufffd", " b"]) == "a \ufffd b"
    assert render_tokens(["\ufffd", "\ufffdx", "\ufffd", ""], marked=[1]) == "<<x>>"


def test_a_cropped_window_that_ends_inside_a_character_shows_no_empty_mark(byte_bpe):
    """Store windows are one token longer than `max_example_tokens`: the crop drops the token that
    completes a character, and the window ends on its first bytes, empty pieces with no U+FFFD."""
    from autointerp.examples import crop_example
    from features.tokentext import token_bytes, token_text

    ids = byte_bpe.encode(TEXT, add_special_tokens=False)
    e = [token_bytes(byte_bpe, i) for i in ids].index(b"\xf0")  # the emoji's first byte
    pieces = token_text(byte_bpe, ids[e - 2:e + 4]).pieces  # " text", " ", then the emoji's four byte tokens
    ex = crop_example(Example(pieces, [5.0, 0, 1.0, 1.0, 1.0, 1.0]), len(pieces) - 1)
    assert ex.tokens[2:] == ("", "", "") and "\ufffd" not in "".join(ex.tokens)
    for marked in ([2], [3], [4], [2, 3, 4]):
        assert render_tokens(ex.tokens, marked) == "text"
    assert render_tokens(ex.tokens, [0, 4]) == "<<text>>"
    lead = Example(("", "", "\U0001f642", " and"), (1.0, 1.0, 0, 0))  # a crop that starts after its first byte
    assert render_tokens(lead.tokens, [0]) == "\U0001f642 and"
    on_cut = Example(ex.tokens, (0, 0, 1.0, 1.0, 1.0))  # active only where nothing is left to show
    assert build_explain_messages([on_cut, lead, Example(("sea",), (1.0,))], 0.3)[1]["content"].count("Example ") == 1
    from autointerp.contrastive import build_contrastive_messages

    assert build_contrastive_messages([on_cut, Example(("sea",), (1.0,))], [], 0.3)[1]["content"].count("Example ") == 1


def test_a_mark_never_lands_on_a_lone_space():
    assert render_tokens(["a", " b", " \ufffd", ""], marked=[2]) == "a b"
    assert render_tokens(["\ufffd ", "a", " b"], marked=[0]) == "a b"
    assert render_tokens(["a", " b", " \ufffd", ""], marked=[1, 2]) == "a <<b>>"


def test_fuzzing_marks_only_what_the_judge_sees():
    """A wrong marking drawn on cut bytes rendered with no mark at all (judged 0: right for free);
    a true marking on cut bytes only rendered bare too. Every item's marks are all shown."""
    import random

    from autointerp.examples import ExampleSplit
    from autointerp.interp import fuzz_items
    from autointerp.prompts import MARK_CLOSE, MARK_OPEN, shown_pieces

    rng = random.Random(0)
    words = [" the", " sea", " and", " crab", "s", ",", " swim"]
    exs = []
    for _ in range(40):
        head = rng.choice([[], ["\ufffd"], ["\ufffd", "\ufffd"], ["\ufffd "], ["", ""]])
        tail = rng.choice([[], ["\ufffd", ""], [" \ufffd"], ["", "", ""], ["\ufffd", "", ""]])
        toks = head + [rng.choice(words) for _ in range(rng.randint(1, 4))] + tail
        acts = [rng.choice([0.0, 0.0, 2.0]) for _ in toks]
        acts[0] = acts[-1] = 3.0  # the strongest on the cut bytes
        exs.append(Example(tuple(toks), tuple(acts)))
    only_cut = Example(("\ufffd", " sea", " \ufffd", ""), (2.0, 0.0, 2.0, 2.0))  # true marks all on cut bytes
    split = ExampleSplit((), (), (), tuple(exs) + (only_cut,))
    n_wrong = 0
    for latent in range(20):
        items = fuzz_items(split, latent, seed=0, mark_threshold=0.3)
        assert only_cut not in [it.example for it in items]
        for it in items:
            line = render_tokens(it.example.tokens, it.marked)
            assert line.count(MARK_OPEN) == line.count(MARK_CLOSE) == len(it.marked) > 0, (it, line)
            assert "<<>>" not in line and "<< >>" not in line
            assert not set(it.marked) & shown_pieces(it.example.tokens)[1]
            n_wrong += not it.correct
    assert n_wrong > 50


def test_tabs_stay_visible_and_every_prompt_says_what_the_signs_mean():
    from autointerp.contrastive import build_contrastive_messages
    from autointerp.intruder import build_intruder_messages
    from autointerp.output_score import build_output_messages
    from autointerp.prompts import DATA_SIGNS
    from autointerp.simulation import build_simulation_messages

    code = Example(("def", " f", "():", "\n", "\t", "return", " 1"), (0, 0, 0, 0, 5.0, 0, 0))
    spaces = Example(("def", " f", "():", "\n", " ", "return", " 1"), (0, 0, 0, 0, 5.0, 0, 0))
    assert render_tokens(code.tokens, marked=[4]) == "def f():\u23ce<<\u21e5>>return 1"
    assert render_tokens(code.tokens) != render_tokens(spaces.tokens)  # tab-indented code reads as such
    every = {
        "explain": build_explain_messages([code], 0.3), "detection": build_detection_messages("tab", [code]),
        "fuzzing": build_fuzz_messages("tab", [FuzzItem(code, (4,), True)]),
        "contrastive": build_contrastive_messages([code], [spaces], 0.3),
        "simulation": build_simulation_messages("tab", [code]), "intruder": build_intruder_messages("tab", [code, spaces]),
        "output": build_output_messages("tab", "a\tb", "c d"),
    }
    for name, msgs in every.items():
        assert DATA_SIGNS in msgs[0]["content"], name
        assert "\u21e5" in msgs[1]["content"] and "\t" not in msgs[1]["content"], name


# -- prompt versions: a change of any prompt's text must come with a new version ----------------

def _fixture_examples() -> list[Example]:
    return [Example(("The", " sea", "\n", "\t", "ret", "<<", "\ufffd"), (0, 3.0, 0, 1.0, 0, 0, 0), ref="1"),
            Example(("\ufffd", "日", " crab", "s", " swim"), (0, 0, 2.0, 2.0, 0), ref="2"),
            Example(("no", " fire", " here"), (0, 0, 0), kind="random", ref="3")]


def _prompt_texts() -> dict[str, object]:
    """version constant -> the prompts it versions, built from fixed examples."""
    from autointerp import contrastive, intruder, output_score, prompts, simulation

    exs = _fixture_examples()
    scoring = [build_detection_messages("sea", exs), build_fuzz_messages("sea", [FuzzItem(e, (1,), True) for e in exs])]
    return {
        prompts.PROMPT_VERSION: [build_explain_messages(exs, 0.3, ["gulls"]), *scoring],
        contrastive.CONTRASTIVE_PROMPT_VERSION: [contrastive.build_contrastive_messages(exs[:2], exs[2:], 0.3, ["gulls"]),
                                                 *scoring],
        simulation.SIMULATION_PROMPT_VERSION: simulation.build_simulation_messages("sea", exs),
        output_score.OUTPUT_PROMPT_VERSION: output_score.build_output_messages("sea", "a\tsea", "a\nland"),
        intruder.INTRUDER_PROMPT_VERSION: intruder.build_intruder_messages("sea", exs),
    }


# sha256 of each version's prompts (`_prompt_texts`). A prompt change makes a new hash: add it with
# the new version (a version may not stand for two texts: labels and scores record only the version)
KNOWN_PROMPTS = {
    "e68d9edbb5a6a68cf615f2946f83f04e80adca4cc6c78375993f3771997e6045": "explain-v3/detect-v2/fuzz-v2",
    "15809256f33c1c6aea75df5694d39085485bccdb5b475439cbed78e1b501aebc": "contrastive-v1/detect-v2/fuzz-v2",
    "6e3c9bebd1203acd5959044f13edd5bc97f1922f109f20519d4be7dec5ea4d84": "simulate-v1",
    "99e00d51b8194e4980641c91e4f10d9fc7c1d03d708bdc0f4c0e97de1386a558": "output-v1",
    "370b09d585b1ce4deecc5848f463fc5785723607013dd9672e7f8aa021497c0e": "explain-v4/detect-v3/fuzz-v3",
    "24590ff19953855e9517da0f5bad7afec06985b2fd0f600f71dab19fd20c07fd": "contrastive-v2/detect-v3/fuzz-v3",
    "21d987b40e57b5ddf35d5041499ea8e17a9213464eda069ec8812ae274e609cb": "simulate-v2",
    "09e8e2d6f77a8ec8c5ce97eb33a5f2097cadc8d7a815e88add8e78d1c225c664": "output-v2",
    "068212842d98e5cd07cc56bf9a390b4528a9317354789a878ecec01f2bf40a77": "intruder-v2",
}


def test_every_prompt_text_has_its_own_version():
    assert len(set(KNOWN_PROMPTS.values())) == len(KNOWN_PROMPTS), "a version stands for two prompt texts"
    for version, texts in _prompt_texts().items():
        digest = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()
        assert KNOWN_PROMPTS.get(digest) == version, (
            f"the prompts of {version} changed (sha256 {digest}): give them a new version string and add it to "
            "KNOWN_PROMPTS")
