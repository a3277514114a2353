"""Tokenizers of every kind we show text for, built here (no downloads, deterministic), and the
text they are trained on: Python source, English prose and CJK.

    bpe = byte_level_bpe()          # GPT-2 style: byte-level BPE, spaces inside tokens ("Ġthe")
    sp = sentencepiece_bpe()        # Llama-2 style: "▁" for spaces, <0xNN> byte fallback, leading space stripped
    sp = sentencepiece_bpe(1024, extra=docs, add_bos=True, max_alphabet=120)   # as Mistral-7B's: adds <s> itself
    toy = toyworld.tokenizer.load_tokenizer()   # word level (not here: it ships with toyworld)
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache

PYTHON_SOURCE = '''\
def boundary_localization(tokens, offsets):
    """Find the boundary of every token in the decoded text."""
    starts = []
    for i, (lo, hi) in enumerate(offsets):
        if hi <= lo:
            continue
        starts.append((i, lo))
    return {"starts": starts, "count": len(starts)}


class TokenWindow:
    def __init__(self, ids: list[int], text: str = "") -> None:
        self.ids = ids
        self.text = text

    def __repr__(self) -> str:
        return f"TokenWindow({len(self.ids)} tokens)"
'''

PROSE = [
    "The localization of a boundary is what the tokenizer decides, not the reader.",
    "Anna saw two red boats near the reef, and the crabs swam in the deep harbour.",
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software.",
    "café, naïve, résumé: accents are several bytes in UTF-8.",
]

CJK = [
    "日本語のテキストを分かち書きせずに書きます。",
    "你好，世界。机器学习很有趣。",
    "한국어 문장도 있습니다.",
    "emoji 🙂 and 🐳 span four bytes each",
]

CORPUS = [PYTHON_SOURCE] * 3 + PROSE * 3 + CJK


@lru_cache(maxsize=None)
def _bpe_object(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok.to_str()


def byte_level_bpe(vocab_size: int = 420):
    """GPT-2 style byte-level BPE trained on `CORPUS` (small: CJK characters stay split into bytes)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_bpe_object(vocab_size)),
                                   bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   clean_up_tokenization_spaces=False)


_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


def sentencepiece_bytes(tok, ids) -> bytes:
    """The bytes a SentencePiece tokenizer's tokens spell ("▁" a space, <0xNN> its byte, any other
    token its text), read off the token strings: what `saes.bytefallback` is checked against."""
    return b"".join(bytes([int(t[3:5], 16)]) if _BYTE_TOKEN.fullmatch(t) else t.replace("\u2581", " ").encode()
                    for t in tok.convert_ids_to_tokens(list(ids)))


@lru_cache(maxsize=None)
def _sp_object(vocab_size: int, extra: tuple[str, ...], add_bos: bool = False, max_alphabet: int | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    texts = [PYTHON_SOURCE] * 3 + PROSE * 3 + list(extra)
    # max_alphabet: only the most frequent characters get a token of their own (SentencePiece's
    # character_coverage), the rare ones (CJK, emoji) are spelled with <0xNN> byte tokens, and so are
    # line breaks and tabs, as in Llama-2's and Mistral's vocabularies (<0x0A>, <0x09>). Chosen here,
    # ties by code point (the trainer's limit_alphabet breaks ties in hash order: not reproducible)
    alphabet = {}
    if max_alphabet is not None:
        counts = Counter(ch for t in texts for ch in t.replace(" ", "\u2581") if ch not in "\n\r\t")
        chars = sorted(counts, key=lambda ch: (-counts[ch], ch))[:max_alphabet]
        alphabet = dict(initial_alphabet=chars, limit_alphabet=len(chars))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False, **alphabet)
    # no CJK in the default training text: those characters are spelled with <0xNN> byte tokens
    tok.train_from_iterator(texts, trainer=trainer)
    if add_bos:  # Llama-2 / Mistral: the tokenizer itself prepends <s> (add_bos_token true)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    # the trainer puts the byte tokens first in the vocabulary, as Llama-2 has them, but as special
    # added tokens, which Llama-2's are not: decode(..., skip_special_tokens=True) would drop them
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not _BYTE_TOKEN.fullmatch(t["content"])]
    return json.dumps(spec)


def sentencepiece_bpe(vocab_size: int = 600, extra: tuple[str, ...] = (), *, add_bos: bool = False,
                      max_alphabet: int | None = None, **kwargs):
    """A Llama-2 style tokenizer: BPE over "▁"-marked words, <0xNN> byte fallback, a decoder that
    turns "▁" into spaces and strips the text's first space (trained on the code and prose, and `extra`).
    `add_bos`: its post-processor prepends <s> (Llama-2's and Mistral's add_bos_token); `max_alphabet`:
    the number of characters with a token of their own; `kwargs` go to PreTrainedTokenizerFast
    (e.g. chat_template, model_max_length)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = _sp_object(vocab_size, tuple(extra), add_bos, max_alphabet)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spec), bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False, **kwargs)
