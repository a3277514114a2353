"""SentencePiece byte fallback read as bytes: the text of token ids of a Llama-2 / Mistral / Gemma
style tokenizer ("▁" for spaces, <0xNN> tokens for the bytes of characters outside the vocabulary,
and for line breaks and tabs), with every whole character kept.

    bf = byte_fallback(tokenizer)          # None unless its decoder is SentencePiece's byte fallback
    bf.text(tokenizer, ids)                # the decoding, a cut byte run read as its bytes
    text_of(tokenizer, ids)                # the same for any tokenizer (its own decoding where it is not one)

HF's decoder (Replace "▁", ByteFallback, Fuse, Strip) turns a run of byte tokens that is not valid
UTF-8 as a whole into one U+FFFD per byte: a run cut at its start (a window of a text) or with one
stray byte in it (a sampled reply) loses every character of the run, line breaks and tabs
included. Here a run is decoded as Python decodes bytes (U+FFFD for the invalid bytes only); the
rest of the text is the decoder's: `text` checks on each call that the same reading, with a run
decoded as the decoder does it, gives `tokenizer.decode` exactly, else returns that decoding.

It lives in `saes` because `features` (token text) and `steering` (text streams) both need it and
neither may import the other (as `saes.bos`).
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["ByteFallback", "byte_fallback", "text_of", "pieces", "split_characters", "built_once", "decoder_parts",
           "vocabulary"]

_DECODER = [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}]
_STRIP = [{"type": "Strip", "content": " ", "start": 1, "stop": 0}]
_BYTE_TOKEN = re.compile("<0x[0-9A-Fa-f]{2}>")


@dataclass(frozen=True)
class ByteFallback:
    entries: tuple  # per token id: its text ("▁" as a space; an added token as it is) or its byte (int)
    strip_first_space: bool  # the decoder drops the text's first space
    special: frozenset  # ids skip_special_tokens leaves out

    def text(self, tokenizer: Any, ids: Sequence[int], skip_special_tokens: bool = False,
             decoded: str | None = None) -> str:
        """`tokenizer.decode(ids)` (no clean-up; `decoded` when the caller has it), but for the
        characters of an invalid byte run, which are kept (U+FFFD for its invalid bytes only)."""
        if decoded is None:
            decoded = tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens,
                                       clean_up_tokenization_spaces=False)
        if "\ufffd" not in decoded:
            return decoded
        found = self.pieces_of(ids, decoded, skip_special_tokens)
        return decoded if found is None else "".join(found)  # None: not what this reading says the decoder does

    def pieces_of(self, ids: Sequence[int], decoded: str, skip_special_tokens: bool = False) -> list[str] | None:
        """Each token's piece of the text (`text`), given the tokenizer's decoding of `ids`; None when
        this reading, with byte runs decoded as the decoder does, does not give that decoding."""
        entries = self.entries_of(ids, skip_special_tokens)
        if entries is None or self.stripped("".join(pieces(entries)), decoded) is None:
            return None
        out = pieces(entries, as_decoder=False)
        # the decoder drops the text's first space: take it from its piece (a <0x20> at the head of a
        # bad byte run too, which the decoder had made a U+FFFD)
        if self.strip_first_space and "".join(out)[:1] == " ":
            k = next(k for k, piece in enumerate(out) if piece)
            out[k] = out[k][1:]
        return out

    def entries_of(self, ids: Sequence[int], skip_special_tokens: bool = False) -> list | None:
        n = len(self.entries)
        ids = [int(i) for i in ids if not (skip_special_tokens and int(i) in self.special)]
        return None if any(not 0 <= i < n for i in ids) else [self.entries[i] for i in ids]

    def stripped(self, joined: str, decoded: str) -> bool | None:
        """False: `joined` is `decoded`; True: it is, less the first space the decoder strips; else None."""
        if joined == decoded:
            return False
        if self.strip_first_space and joined[:1] == " " and joined[1:] == decoded:
            return True
        return None


def byte_fallback(tokenizer: Any) -> ByteFallback | None:
    """The tokenizer's byte-fallback reading (built once, kept on the tokenizer object), or None when
    its decoder is not SentencePiece's (byte-level BPE, word level, a slow tokenizer)."""
    return built_once(tokenizer, "_saesteer_byte_fallback", _build)


_NOTHING = object()  # kept on a tokenizer for which a build gave None


def built_once(tokenizer: Any, key: str, build: Any) -> Any:
    """`build(tokenizer)` (None where it raises: an unusual tokenizer gets its own decoding), built
    once and kept on the tokenizer object under `key` (a tokenizer without a __dict__: built each time)."""
    cached = tokenizer.__dict__.get(key) if hasattr(tokenizer, "__dict__") else None
    if cached is not None:
        return None if cached is _NOTHING else cached
    try:
        found = build(tokenizer)
    except Exception:
        found = None
    if hasattr(tokenizer, "__dict__"):
        tokenizer.__dict__[key] = _NOTHING if found is None else found
    return found


def decoder_parts(tokenizer: Any) -> list[dict] | None:
    """The steps of a fast tokenizer's decoder as its JSON spells them (a Sequence's steps, or the
    one decoder); [] without a decoder; None for a tokenizer with no `backend_tokenizer` (slow)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    if backend.decoder is None:
        return []
    spec = json.loads(backend.decoder.__getstate__())
    return spec.get("decoders", []) if spec.get("type") == "Sequence" else [spec]


def vocabulary(tokenizer: Any) -> tuple[list[str], set[int]]:
    """(every token id's string, "" for none; the ids of added tokens, which decoders leave as written)."""
    strings = [s or "" for s in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))]
    return strings, {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {}) or {}}


def text_of(tokenizer: Any, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    """`tokenizer.decode(ids)` with no clean-up of spaces, but a byte run that is not valid UTF-8
    read as UTF-8 reads it where the decoder is SentencePiece's byte fallback (`ByteFallback.text`)."""
    ids = [int(i) for i in ids]
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)
    found = byte_fallback(tokenizer) if "\ufffd" in text else None
    return text if found is None else found.text(tokenizer, ids, skip_special_tokens, text)


def _build(tokenizer: Any) -> ByteFallback | None:
    parts = decoder_parts(tokenizer)
    if not parts or parts[:3] != _DECODER or parts[3:] not in ([], _STRIP):
        return None
    strings, added = vocabulary(tokenizer)
    entries: list[str | int] = []
    for i, s in enumerate(strings):
        if _BYTE_TOKEN.fullmatch(s):
            entries.append(int(s[3:5], 16))
        else:
            entries.append(s if i in added else s.replace("\u2581", " "))
    # what skip_special_tokens leaves out: every added token marked special, not only the named ones
    # (Mistral-v0.3's [INST] and [/INST] are in no all_special_ids)
    special = frozenset({int(i) for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items()
                         if getattr(t, "special", False)} | set(getattr(tokenizer, "all_special_ids", None) or ()))
    return ByteFallback(tuple(entries), bool(parts[3:]), special)


def pieces(entries: Sequence[str | int], as_decoder: bool = True) -> list[str]:
    """Each token's piece: its text, or its byte's share of a character (the token completing a
    character holds it; the bytes before hold ""). A byte run that is not valid UTF-8 is one U+FFFD
    per byte `as_decoder` (HF's ByteFallback), else its characters with U+FFFD for the invalid
    bytes only."""
    out: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if as_decoder and not _is_utf8(bytes(run)):
            out.extend("\ufffd" for _ in run)
        elif run:
            out.extend(split_characters([bytes([b]) for b in run]))
        run.clear()

    for e in entries:
        if isinstance(e, int):
            run.append(e)
        else:
            flush()
            out.append(e)
    flush()
    return out


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def split_characters(chunks: list[bytes]) -> list[str]:
    """Decode the joined bytes, giving each character to the chunk that completes it; bytes cut
    off by the end (one U+FFFD) go to the chunk where they began."""
    dec = codecs.getincrementaldecoder("utf-8")("replace")
    out: list[str] = []
    pending_from = None
    for k, c in enumerate(chunks):
        out.append(dec.decode(c))
        buf = dec.getstate()[0]
        if not buf:
            pending_from = None
        elif len(buf) <= len(c):  # a new unfinished character began in this chunk (else one goes on)
            pending_from = k
    tail = dec.decode(b"", final=True)
    if tail and out:
        out[len(out) - 1 if pending_from is None else pending_from] += tail
    return out
