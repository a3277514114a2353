"""Token text: what a window of token ids reads as, and which part of it each token contributes.

One function, `token_text(tokenizer, ids)`, is the only place token ids become display text; the
feature store keeps its result for every example, and the judge prompts, the CLI and the web app
show those pieces (joined with nothing in between: the pieces carry their own spaces).

    tt = token_text(tokenizer, [464, 1110, 3797])   # a GPT-2 window
    tt.text     # 'The quick brown', tokenizer.decode(ids) (special tokens kept, no clean-up; but see below)
    tt.pieces   # ['The', ' quick', ' brown'], one per token; "".join(tt.pieces) == tt.text

The pieces partition the text, for every kind of tokenizer:
  * byte-level BPE (GPT-2, Llama 3, Qwen): a token's bytes; spaces are part of the token (" quick");
  * SentencePiece (Llama 2, Mistral, Gemma): "▁" becomes a space, <0xNN> byte tokens are bytes, and
    the one leading space the decoder strips from the text is taken from the first piece;
  * word-level (the toy tokenizer): every token after the first carries the space before it;
  * a character whose bytes are split over several tokens (CJK, emoji under byte-level BPE) belongs
    to the token that completes it; the tokens before it have an empty piece. A window that starts
    or ends inside a character has U+FFFD for the cut bytes, and its other characters as they are.
    Byte-level BPE decoders do exactly that. SentencePiece's byte fallback decoder does not: a run of
    byte tokens that is not valid UTF-8 as a whole becomes one U+FFFD per byte, so a window cut
    inside the first character of a CJK sentence or an emoji run (all <0xNN> tokens) would lose the
    whole run; there the text is the decoder's with that run read as the bytes it is (the only
    difference from `tokenizer.decode(ids)`).

A token shown on its own (the store's vocabulary, so the logit-effect lists of the CLI and the web
app; the API's logprob `token`) is `token_label(tokenizer, id)`: the text it adds to a text, as
`token_bytes` has it (SentencePiece's "▁the" is " the", as GPT-2's "Ġthe" is), and part of a
character as U+FFFD followed by its bytes escaped ("\ufffd\\xe6\\x97", never mistaken for code that
spells "\\xe6": `label_of_bytes`).

How: a per-tokenizer table of the bytes (or word) each token contributes gives the pieces in one
pass; they are used only when they join to exactly `tokenizer.decode(ids)`. Otherwise (another
decoder, clean-up rules, a slow tokenizer) the pieces come from decoding every prefix of the window
(`pieces_by_prefix`, the reference implementation: slower, always right by construction).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Iterable, Sequence

from features.drawing import draw_controls
from saes.bytefallback import ByteFallback, built_once, byte_fallback, decoder_parts, split_characters, vocabulary

__all__ = ["TokenText", "token_text", "token_texts", "token_bytes", "token_label", "token_labels", "label_of_bytes",
           "PART_OF_A_CHARACTER", "LABEL_RULE", "label_from_rule_1",
           "pieces_by_prefix", "align_pieces", "mark_pieces", "character_groups", "character_spans", "visible"]


@dataclass(frozen=True)
class TokenText:
    """A window's text and where each token's piece starts in it (`offsets[i]`, characters)."""

    text: str
    offsets: tuple[int, ...]

    @property
    def pieces(self) -> list[str]:
        return pieces_from_offsets(self.text, self.offsets)


def pieces_from_offsets(text: str, offsets: Sequence[int]) -> list[str]:
    """Token i's piece is text[offsets[i]:offsets[i+1]] (the last one runs to the end)."""
    ends = list(offsets[1:]) + [len(text)]
    return [text[a:b] for a, b in zip(offsets, ends)]


def _offsets_of(pieces: Sequence[str]) -> tuple[int, ...]:
    return tuple(accumulate(map(len, pieces[:-1]), initial=0)) if pieces else ()


def decode_all(tokenizer, windows: Sequence[Sequence[int]]) -> list[str]:
    """Each window's text as the tokenizer decodes it: special tokens kept, no clean-up of spaces."""
    if not windows:
        return []
    backend = _plain_backend(tokenizer)
    if backend is not None:  # the same decoder in one call (transformers calls it once per window)
        return backend.decode_batch([list(w) for w in windows], skip_special_tokens=False)
    return list(tokenizer.batch_decode([list(w) for w in windows], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False))


def _plain_backend(tokenizer):
    """The `tokenizers` object behind a transformers fast tokenizer whose decoding, without clean-up,
    is exactly that object's `decode` (no subclass changes decode, batch_decode or _decode); else None."""
    try:
        from transformers import PreTrainedTokenizerFast as Fast
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    cls = type(tokenizer)
    if not isinstance(tokenizer, Fast) or any(getattr(cls, m, None) is not getattr(Fast, m, None)
                                              for m in ("decode", "batch_decode", "_decode")):
        return None
    return getattr(tokenizer, "_tokenizer", None)


def token_text(tokenizer, ids: Sequence[int]) -> TokenText:
    """The text of `ids` (exactly `tokenizer.decode`) and each token's piece of it."""
    ids = [int(i) for i in ids]
    return _with_text(tokenizer, ids, decode_all(tokenizer, [ids])[0])


def token_bytes(tokenizer, token_id: int, decoded: str | None = None) -> bytes:
    """The UTF-8 bytes one token contributes to a text: for a byte-level BPE or byte-fallback token
    that holds part of a character, those bytes themselves (decoding it alone gives U+FFFD, whose
    bytes say nothing); for a SentencePiece token its text with "▁" as a space (decoding it alone
    strips a word's leading space: "▁a" gives "a"); otherwise the token decoded on its own (or
    `decoded`, that decoding when the caller has it): for a word-level tokenizer the bare word, as
    the space between words is the decoder's, not the token's."""
    table = _table(tokenizer)
    if table is not None and 0 <= token_id < len(table.entries):
        entry = table.entries[token_id]
        if table.kind == "bytes":
            return entry
        if table.kind == "spm":
            return bytes([entry]) if isinstance(entry, int) else entry.encode("utf-8")
    if decoded is None:
        decoded = tokenizer.decode([token_id], skip_special_tokens=False)
    return decoded.encode("utf-8")


PART_OF_A_CHARACTER = "\ufffd"  # starts the escaped bytes of a token's part of a character (`label_of_bytes`)
_CUT = re.compile("[\udc80-\udcff]+")  # bytes that are no UTF-8, as the "surrogateescape" decoding holds them


def label_of_bytes(raw: bytes) -> str:
    """How a token with these bytes is shown on its own: their text, where a run of bytes that is only
    part of a character (not valid UTF-8) is written as U+FFFD followed by the bytes as Python escapes
    them (b" \\xe6\\x97" is shown as a space, U+FFFD and the 8 characters \\xe6\\x97). The U+FFFD makes the
    mark unambiguous: text that merely spells an escape (the code "\\x9f") has none, and a label with
    a U+FFFD never reads as text (`autointerp.offline.readable_token`)."""
    text = raw.decode("utf-8", errors="surrogateescape")
    return _CUT.sub(lambda m: PART_OF_A_CHARACTER + "".join(f"\\x{ord(c) - 0xDC00:02x}" for c in m.group()), text)


def token_label(tokenizer, token_id: int) -> str:
    """One token shown on its own, the same everywhere (the store's vocabulary, so the logit-effect
    lists of `features show` and the web app; the API's logprob `token`): its own text (`token_bytes`:
    a SentencePiece "▁the" is " the" as GPT-2's "Ġthe" is, a byte-fallback <0x0A> is "\\n", a
    word-level token the bare word), part of a character marked and escaped (`label_of_bytes`)."""
    return label_of_bytes(token_bytes(tokenizer, int(token_id)))


def token_labels(tokenizer, ids: Iterable[int] | None = None) -> list[str]:
    """`token_label` of each of `ids` (default: the whole vocabulary), with one batched decode where
    the tokenizer's table does not know the tokens' bytes."""
    ids = [int(i) for i in (range(len(tokenizer)) if ids is None else ids)]
    table = _table(tokenizer)
    knows_bytes = table is not None and table.kind in ("bytes", "spm")
    decoded = [None] * len(ids) if knows_bytes else decode_all(tokenizer, [[i] for i in ids])
    return [label_of_bytes(token_bytes(tokenizer, i, d)) for i, d in zip(ids, decoded)]


# The version of the rule `token_label` follows, recorded in a store's meta as "vocab_labels". 1 (no
# key): part of a character as its bare escaped bytes, a SentencePiece word without its space.
LABEL_RULE = 2
_OLD_ESCAPES = re.compile(r"(?:\\x[89a-f][0-9a-f])+")  # rule 1's part of a character: escaped bytes >= 0x80


def label_from_rule_1(label: str) -> str:
    """A label a store wrote by rule 1, read where no tokenizer can recompute it: runs of escaped bytes
    0x80-0xff get the U+FFFD mark (so they never read as text; text that only spells such an escape
    is marked too: the safe side). A SentencePiece word's lost space cannot be told from the label."""
    return _OLD_ESCAPES.sub(lambda m: PART_OF_A_CHARACTER + m.group(), label)


def token_texts(tokenizer, windows: Sequence[Sequence[int]]) -> list[TokenText]:
    """`token_text` for many windows: each distinct window once, in one batched decode."""
    keys = [tuple(int(i) for i in w) for w in windows]
    distinct = list(dict.fromkeys(keys))
    done = {k: _with_text(tokenizer, list(k), t) for k, t in zip(distinct, decode_all(tokenizer, distinct))}
    return [done[k] for k in keys]


def _with_text(tokenizer, ids: list[int], text: str) -> TokenText:
    table = _table(tokenizer)
    pieces = table.pieces(ids, text) if table is not None else None
    if pieces is None:
        pieces = pieces_by_prefix(tokenizer, ids, text)
    return TokenText("".join(pieces), _offsets_of(pieces))


def pieces_by_prefix(tokenizer, ids: Sequence[int], text: str | None = None) -> list[str]:
    """The reference: token i starts where the decoded prefix ids[:i] stops agreeing with the
    window's text (a prefix ending inside a character decodes to U+FFFD there, so the character
    falls to a later token). Decodes every prefix, O(len(ids)^2); the pieces always join to `text`."""
    ids = [int(i) for i in ids]
    text = decode_all(tokenizer, [ids])[0] if text is None else text
    starts, prev = [], 0
    for i, prefix in enumerate([""] + decode_all(tokenizer, [ids[:i] for i in range(1, len(ids))])):
        if i:
            n = 0
            for a, b in zip(prefix, text):
                if a != b:
                    break
                n += 1
            prev = max(prev, n)
        starts.append(prev)
    return pieces_from_offsets(text, starts[:len(ids)])


# ------------------------------------------------------------------------------------------------
# The fast path: what each token contributes, from the tokenizer's decoder


def _utf8_or_none(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _gpt2_byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character for each byte, inverted (char -> byte).
    Printable Latin-1 bytes stand for themselves; the others map to U+0100 upwards, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class _Table:
    """What each token adds to the text, for three decoder families:

    "bytes" (byte-level BPE): the token's bytes; the window's bytes are decoded as a whole
        (invalid or cut-off sequences become U+FFFD, as the tokenizer's decoder does);
    "spm" (SentencePiece with "▁" and <0xNN> byte fallback): the token's text, or one byte; a run
        of byte tokens is read as UTF-8 reads it (`saes.bytefallback`);
    "words" (word level): the token, after a space unless it is the first or a continuation.
    """

    def __init__(self, kind: str, entries: list[Any], fallback: ByteFallback | None = None):
        self.kind = kind
        self.entries = entries  # bytes ("bytes"), str or int byte ("spm"), (word, continues) ("words")
        self.fallback = fallback  # "spm": its reading (`saes.bytefallback`)
        if kind == "bytes":  # each token's text when its bytes are whole characters, else None
            self.texts = [_utf8_or_none(b) for b in entries]

    def pieces(self, ids: list[int], text: str) -> list[str] | None:
        """Each token's piece, joining to `text` (the tokenizer's decoding of `ids`), or None when the
        table does not describe that decoding; "spm": with a cut byte run read as its bytes (see
        the module docstring), so joining to `text` but there."""
        if ids and (min(ids) < 0 or max(ids) >= len(self.entries)):
            return None
        if self.kind == "bytes":
            pieces = [self.texts[i] for i in ids]
            if None in pieces:  # a character split over tokens
                pieces = split_characters([self.entries[i] for i in ids])
        elif self.kind == "spm":
            return self.fallback.pieces_of(ids, text)
        else:
            pieces = []
            for k, i in enumerate(ids):
                word, continues = self.entries[i]
                pieces.append(word if continues or k == 0 else " " + word)
        return pieces if "".join(pieces) == text else None


def _table(tokenizer) -> _Table | None:
    """The tokenizer's contribution table (built once, kept on the tokenizer object), or None when
    its decoder is of a kind the table cannot describe (the prefix reference handles it)."""
    return built_once(tokenizer, "_saesteer_token_table", _build_table)


def _build_table(tokenizer) -> _Table | None:
    parts = decoder_parts(tokenizer)
    if parts is None:
        return None
    strings, added = vocabulary(tokenizer)
    types = [p.get("type") for p in parts]
    if types == ["ByteLevel"]:
        alphabet = _gpt2_byte_alphabet()
        return _Table("bytes", [s.encode("utf-8") if i in added or any(c not in alphabet for c in s)
                                else bytes(alphabet[c] for c in s) for i, s in enumerate(strings)])
    fallback = byte_fallback(tokenizer)
    if fallback is not None:
        return _Table("spm", list(fallback.entries), fallback)
    if not parts or (types == ["WordPiece"] and not parts[0].get("cleanup")):
        prefix = parts[0].get("prefix") if parts else None
        return _Table("words", [(s[len(prefix):], True) if prefix and s.startswith(prefix) else (s, False)
                                for s in strings])
    return None


# ------------------------------------------------------------------------------------------------
# Stores written before the pieces were kept


def align_pieces(text: str, strings: Sequence[str]) -> list[str]:
    """Pieces for a window of an older store, which kept only the window's text and each token
    decoded on its own (best effort; the pieces always join to `text`): each token's string,
    stripped, is looked for from the current place in `text`; the whitespace before it becomes part
    of its piece; tokens that cannot be found (e.g. U+FFFD for part of a character) share the text
    between their neighbours, the first of them taking all of it."""
    starts: list[int] = []
    pending: list[int] = []  # tokens not found yet
    at = 0
    for i, s in enumerate(strings):
        core = s.strip()
        if not core:
            if s and text.startswith(s, at):  # a whitespace token: " ", "\n"
                starts.append(at)
                at += len(s)
            else:
                pending.append(i)
                starts.append(at)
            continue
        j = text.find(core, at)
        if j < 0:
            pending.append(i)
            starts.append(at)
            continue
        k = j
        while k > at and text[k - 1].isspace():
            k -= 1
        for p in pending[1:]:
            starts[p] = k
        starts.append(k if pending else at)
        pending = []
        at = j + len(core)
    return pieces_from_offsets(text, starts)


def visible(piece: str, following: str = "") -> str:
    """A piece as the CLI and the web pages show it: line breaks and tabs drawn (↵ ⇥), and every other
    control, bidi or invisible character as a mark (`features.drawing.draw_controls`: ␛, ⟨RLO⟩, ⟨ZWJ⟩), the rest as is.
    `following` is the next piece: the "\r" of a CRLF cut between two tokens ("\r", "\n") is drawn
    as ␍ and the "\n" as ↵, so the pair reads as one line break, not two (a blank line the text does
    not have), and neither token is drawn empty (a latent may peak on either)."""
    cr = piece.endswith("\r") and following.startswith("\n")
    if cr:
        piece = piece[:-1]
    shown = piece.replace("\r\n", "\u21b5").replace("\n", "\u21b5").replace("\r", "\u21b5").replace("\t", "\u21e5")
    shown = draw_controls(shown)
    return shown + "\u240d" if cr else shown


def mark_pieces(pieces: Sequence[str], marked: Iterable[int], open_mark: str, close_mark: str) -> str:
    """The pieces joined, each character group (`character_groups`, what the web pages draw as one
    span) that holds a marked token wrapped in `open_mark` ... `close_mark` (its leading whitespace
    left outside): a mark on an empty piece (part of a character) marks the character it is part of."""
    marks = set(marked)
    out = []
    for group in character_groups(pieces):
        text = "".join(pieces[i] for i in group)
        if marks.intersection(group):
            core = text.lstrip() or text
            text = f"{text[:len(text) - len(core)]}{open_mark}{core}{close_mark}"
        out.append(text)
    return "".join(out)


def character_groups(pieces: Sequence[str]) -> list[list[int]]:
    """The tokens as a reader sees them: each token on its own, except that the tokens with an empty
    piece (the first bytes of a character) go with the token that completes the character, so one
    group per piece of visible text. A window cut inside its last character has U+FFFD on the first
    of the cut tokens and empty pieces after it: those go with the U+FFFD (the cut character is one
    group, never an empty one that cannot be seen or hovered). Only a window with no text at all (a
    store built without a tokenizer) has empty groups: one per token.
    [" a", "", "", "日", "x"] -> [[0], [1, 2, 3], [4]];  ["a", "\ufffd", ""] -> [[0], [1, 2]]."""
    groups: list[list[int]] = []
    run: list[int] = []
    for i, p in enumerate(pieces):
        run.append(i)
        if p:
            groups.append(run)
            run = []
    if run and groups:
        groups[-1].extend(run)
        run = []
    return groups + [[i] for i in run]


def character_spans(pieces: Sequence[str]) -> list[tuple[list[int], str]]:
    """Each character group (`character_groups`) with its text as drawn (`visible`): what the web
    app's and the HTML export's token spans hold, one span per group."""
    groups = character_groups(pieces)
    spans = []
    for k, g in enumerate(groups):
        following = "".join(pieces[groups[k + 1][0]:groups[k + 1][-1] + 1]) if k + 1 < len(groups) else ""
        spans.append((g, visible("".join(pieces[i] for i in g), following)))
    return spans
