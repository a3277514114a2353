"""Example windows cut where a store cuts them (inside a character at either edge), from a real
byte-level BPE and a real SentencePiece byte-fallback tokenizer (<0xE6> tokens), drawn by the web
app's example rows, its fire row, the HTML export and `features show`: every span holds text a
reader can see and hover (a cut character is its U+FFFD, with all its tokens' activations), the
spans read as the window, and all four draw it with one rule."""

from __future__ import annotations

import pytest

from features.tokentext import character_groups, character_spans, token_bytes, token_text, visible
from helpers.token_spans import fire_row, tok_spans

TEXT = "日本語のテキスト 🐳 naïve"


def _tokenizer(family: str):
    from helpers.text_tokenizers import byte_level_bpe, sentencepiece_bpe

    return byte_level_bpe() if family == "bpe" else sentencepiece_bpe()


def _windows(family: str):
    """Every window of TEXT's tokens of 2..6 tokens: cut inside a character at the start, the end, both."""
    tok = _tokenizer(family)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    return [token_text(tok, ids[a:b]).pieces for a in range(len(ids)) for b in range(a + 2, min(a + 7, len(ids) + 1))]


def _render_example(pieces, acts, centre):
    from saesteer.web.pages import make_templates

    return tok_spans(make_templates().from_string('{% from "_macros.html" import tokens %}{{ tokens(ex) }}').render(
        ex={"tokens": pieces, "acts": acts, "shade": [min(10, int(a)) for a in acts], "centre": centre}))


def _render_export(pieces, acts, centre):
    from features.export import _example_html
    from features.records import Example

    ex = Example(id=1, latent=0, kind="top", rank=0, activation=acts[centre], quantile=None, seq_index=0,
                 position=centre, centre=centre, token_ids=list(range(len(pieces))), tokens=pieces, acts=acts,
                 text="".join(pieces))
    return tok_spans(_example_html(ex, max(acts)))


def _render_fire(pieces, acts):
    from saesteer.web.schemas import FeatureAct, FireResult

    per_token = [[FeatureAct(latent=i, act=a)] for i, a in enumerate(acts)]
    return fire_row(FireResult(tokens=pieces, token_shade=[1] * len(pieces), features=[], per_token=per_token))


def test_a_window_cut_inside_its_last_character_draws_the_cut_bytes_as_one_visible_span():
    """Byte-level BPE: the window ends on the first two of 日's three byte tokens; they read "\ufffd" +
    "". The second was a span of its own with no text: nothing to see or hover, and an underline on
    nothing when it was the example's centre."""
    pieces = _windows("bpe")[0][:2]
    assert pieces == ["\ufffd", ""], pieces  # the tokenizer really cuts 日 in two tokens here
    pieces = ["x"] + pieces  # a token before the cut, as in a store's window
    acts = [0.0, 1.0, 3.0]
    for render in (_render_example, _render_export):
        spans = render(pieces, acts, 2)
        assert [s[2] for s in spans] == ["x", "\ufffd"], spans
        cls, title, _ = spans[-1]
        assert "centre" in cls.split() and title.split(" · ") == ["1", "3"], spans
    spans = _render_fire(pieces, acts)
    assert [s[2] for s in spans] == ["x", "\ufffd"] and spans[-1][1] == "#2 3\n#1 1", spans
    assert character_groups(["a", "\ufffd", "", ""]) == [[0], [1, 2, 3]]
    assert character_groups(["", ""]) == [[0], [1]]  # no text at all (a store without a tokenizer)


@pytest.mark.parametrize("family", ["bpe", "spm"])
def test_every_cut_of_a_real_window_reads_as_its_text_in_visible_spans(family):
    windows = _windows(family)
    if family == "spm":  # <0xE6> byte fallback tokens, some windows starting or ending inside a character
        assert any(w[0] == "\ufffd" for w in windows) and any(w[-1] == "" for w in windows)
    for pieces in windows:
        spans = character_spans(pieces)
        assert sorted(i for g, _ in spans for i in g) == list(range(len(pieces)))  # each token in one span, in order
        assert [i for g, _ in spans for i in g] == list(range(len(pieces)))
        if any(pieces):
            assert all(text for _, text in spans), (pieces, spans)
        drawn = "".join(visible(p, "".join(pieces[i + 1:])) for i, p in enumerate(pieces))
        assert "".join(text for _, text in spans) == drawn
        acts = [float(i) for i in range(len(pieces))]
        web = _render_example(pieces, acts, len(pieces) - 1)
        export = _render_export(pieces, acts, len(pieces) - 1)
        # one rule: the same spans, the same text, the same activations (the export's numbers are %.4g)
        assert [(s[2], s[1]) for s in web] == [(s[2], s[1]) for s in export]
        assert [s[2] for s in web] == [text for _, text in spans]


def test_a_token_completing_one_character_and_starting_the_next_belongs_to_the_first():
    """Byte-level BPE merges across character boundaries ('¥æľ': 日's last byte, 本's first two): its
    activation is shown on 日, the character it completes, and 本's span is the token completing 本."""
    from helpers.real_models import build_family_tokenizer

    tok = build_family_tokenizer("gpt2", ["日本語のテキストを分かち書きせずに書きます。"] * 3, vocab_size=300)
    ids = tok("日本", add_special_tokens=False)["input_ids"]
    pieces = token_text(tok, ids).pieces
    c = pieces.index("日")
    spelled = b"".join(token_bytes(tok, i) for i in ids[:c + 1])
    assert spelled.startswith("日".encode()) and len(spelled) > 3, spelled  # the merge crosses the boundary
    acts = [float(i + 1) for i in range(len(ids))]
    spans = _render_example(pieces, acts, c)
    assert [s[2] for s in spans] == ["日", "本"]
    assert spans[0][1].split(" · ") == [str(i + 1) for i in range(c + 1)]  # its activation on 日, in order
    assert spans[1][1].split(" · ") == [str(i + 1) for i in range(c + 1, len(ids))]
    assert "centre" in spans[0][0].split() and "centre" not in spans[1][0].split()


def test_token_text_that_looks_like_markup_is_escaped_in_every_span():
    pieces = ['<img src=x onerror=alert(1)>', '', '"&', "</span><script>x</script>"]
    acts = [1.0, 2.0, 0.5, 0.0]
    for spans in (_render_example(pieces, acts, 1), _render_export(pieces, acts, 1), _render_fire(pieces, acts)):
        assert "".join(s[2] for s in spans) == "".join(pieces)  # the parser saw text, no tags


def _cli_spans(pieces, acts, centre):
    """(style, text) of each styled run of `saesteer features show`'s example line."""
    from features.records import Example
    from saesteer.commands.features import _example_text

    ex = Example(id=1, latent=0, kind="top", rank=0, activation=acts[centre], quantile=None, seq_index=0,
                 position=centre, centre=centre, token_ids=list(range(len(pieces))), tokens=pieces, acts=acts,
                 text="".join(pieces))
    line = _example_text(ex)
    return line.plain, [(str(s.style), line.plain[s.start:s.end]) for s in line.spans]


def test_the_cli_draws_a_split_character_by_the_same_rule():
    """`features show` coloured each token alone: a latent peaking on a character's first byte tokens
    (empty pieces) coloured nothing, and a centre on the bytes a window's end cut off underlined nothing."""
    pieces = _window_of("bpe", "日本")
    first = pieces.index("")
    whole = next(i for i in range(first, len(pieces)) if pieces[i])
    acts = [0.0] * len(pieces)
    acts[first] = 4.0
    plain, styled = _cli_spans(pieces, acts, first)
    assert plain == "日本" and styled == [("black on #ffb347 bold underline", pieces[whole])], styled
    cut = ["x", "\ufffd", ""]  # the window ends on 日's first two byte tokens
    plain, styled = _cli_spans(cut, [0.0, 1.0, 3.0], 2)
    assert plain == "x\ufffd" and styled == [("black on #ffb347 bold underline", "\ufffd")], styled


def _window_of(family: str, text: str) -> list[str]:
    tok = _tokenizer(family)
    return token_text(tok, tok(text, add_special_tokens=False)["input_ids"]).pieces
