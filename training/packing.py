"""Text to model inputs: documents tokenized and packed into fixed-length contexts under an
explicit BOS policy; the tokenizer facts a cache records.

Packing. Each non-empty document becomes an *item* of tokens: `[BOS]` first when
`bos_policy="doc"`, then the document's tokens, then the separator: `[EOS]` when `separator="eos"`
-- except where EOS is the BOS token (GPT-2's `<|endoftext|>` is both) under "doc": the next
document's BOS already separates, so one token stands between documents, as in SAELens's packing
(see `eos_is_next_bos`) -- or `[BOS]` when `separator="bos"` (what SAELens's default separator
leaves between documents with a tokenizer that starts each with its BOS, as Llama's and Mistral's
do; not under "doc", where BOS already starts each document). `separator="rows"` (pretokenized rows'
own, unknown or none of these: `training.pretokenized`) packs no text.
Items are concatenated into one stream, cut into contexts of `context_length` tokens:
  * "prepend": every context is `[BOS]` + the next `context_length - 1` stream tokens (one
    separator between documents inside a context; a context that starts just after a document
    begins `[BOS] [EOS]`, two `<|endoftext|>` with GPT-2, where SAELens writes one);
  * "doc":     contexts are plain slices of the stream (BOS marks document starts inside it);
  * "none":    contexts are plain slices, no BOS anywhere.
The tail of the stream shorter than one context is dropped.

A `TextPointer(doc, offset)` (`training.text`) names a place in the stream. Packing restarted at
a pointer continues exactly where an uninterrupted run would be; this is what makes cache resume
exact.

Shape key: N contexts, L context_length.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from training.text import (START, DocumentSample, DocumentSource, TextConfig, TextPointer, is_conversation,
                           sample_documents)

if TYPE_CHECKING:
    from training.pretokenized import RowPacker


# ----------------------------------------------------------------------------------------------
# Tokenizer facts


@dataclass(frozen=True)
class SpecialTokens:
    bos: int | None
    eos: int | None
    pad: int | None
    all: tuple[int, ...]


def special_tokens(tokenizer) -> SpecialTokens:
    ids = sorted({int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])})
    get = lambda name: None if getattr(tokenizer, name, None) is None else int(getattr(tokenizer, name))
    return SpecialTokens(get("bos_token_id"), get("eos_token_id"), get("pad_token_id"), tuple(ids))


def tokenizer_name(tokenizer) -> str:
    """The name or folder a tokenizer was loaded from (its class name when it records none)."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


# the hub revision (a commit) a model's tokenizer was loaded at: transformers records none on the tokenizer,
# and the published tokenizer is loaded again by name (`_adds_bos_as_published`, training.pretokenized)
_REVISION_ATTR = "_saesteer_hub_revision"


def pin_tokenizer_revision(tokenizer, revision: str | None) -> None:
    """Record on `tokenizer` the hub revision it was loaded at, so that every later load of it by name
    (`tokenizer_revision`) reads that revision's files, not the default branch's."""
    if tokenizer is not None and revision:
        setattr(tokenizer, _REVISION_ATTR, revision)


def tokenizer_revision(tokenizer) -> str | None:
    """The hub revision `pin_tokenizer_revision` recorded on `tokenizer`; None: the default branch (or a
    local folder, a tokenizer built in memory)."""
    return getattr(tokenizer, _REVISION_ATTR, None)


def tokenizer_fingerprint(tokenizer) -> dict[str, Any]:
    """Name, vocabulary size, special token ids and a SHA-256 over the full tokenizer definition
    (fast tokenizers: their JSON; others: the sorted vocabulary)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        vocab = tokenizer.get_vocab()
        h.update(json.dumps(sorted(vocab.items())).encode())
    sp = special_tokens(tokenizer)
    h.update(json.dumps(dataclasses.asdict(sp)).encode())
    return {
        "name": tokenizer_name(tokenizer),
        "vocab_size": int(len(tokenizer)),
        "bos_id": sp.bos,
        "eos_id": sp.eos,
        "pad_id": sp.pad,
        "sha256": h.hexdigest(),
    }


def make_tokenize(tokenizer, literal_specials: bool = True) -> Callable[[list[str]], list[list[int]]]:
    """A function mapping a list of texts to lists of token ids, adding no special tokens.

    `literal_specials` (the default): a special token written out in a
    document ("<|endoftext|>", "<s>", "<|im_start|>" in scraped web pages or in code) is tokenized
    as the characters it is, as HF's `split_special_tokens=True`, tiktoken's `encode_ordinary`
    (nanoGPT's data preparation) and SentencePiece do; matched as the special token it names (HF's
    default, SAELens's and sparsify's tokenization), it would put a fake document boundary or a BOS
    in the middle of a document. False: matched, as caches made before this rule were packed.

    For HF fast tokenizers it calls the Rust backend's `encode_batch_fast` directly (about 1.5x
    less CPU than `tokenizer(...)`), on a copy of the backend of its own (transformers sets
    `encode_special_tokens` on the one it holds at every call), after checking on the first batch
    that it gives exactly the ids `tokenizer(...)` gives; on any difference it uses
    `tokenizer(...)` throughout. That check and that fallback call a shallow copy of the tokenizer
    holding the backend copy: `tokenizer(...)` with another `split_special_tokens` than the
    tokenizer's would set the flag on the shared backend and leave it there, and a prompt tokenized
    meanwhile in another thread (the prefetcher's, a server's request) would read its chat markers
    as text, or these texts match them."""
    reader = tokenizer  # what `tokenizer(...)` is called on

    def slow(texts: list[str]) -> list[list[int]]:
        out = reader(
            texts,
            add_special_tokens=False,
            split_special_tokens=literal_specials,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        return out["input_ids"]

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if getattr(backend, "encode_batch_fast", None) is None:
        return slow
    # the backend copy and the check's verdict are remembered on the tokenizer object (one check per tokenizer and rule)
    states = tokenizer.__dict__.setdefault("_saesteer_fast_tokenize", {})
    state = states.get(literal_specials)
    if state is None:
        own = copy.deepcopy(backend)
        own.encode_special_tokens = literal_specials
        state = states[literal_specials] = {"checked": False, "use_fast": True, "backend": own,
                                            "reader": _reading_with(tokenizer, backend, own)}
    reader = state["reader"]

    def tokenize(texts: list[str]) -> list[list[int]]:
        if not state["use_fast"]:
            return slow(texts)
        ids = [e.ids for e in state["backend"].encode_batch_fast(texts, add_special_tokens=False)]
        if not state["checked"] and texts:
            ref = slow(texts)
            state["checked"] = True
            if [list(x) for x in ref] != ids:
                state["use_fast"] = False
                return ref
        return ids

    return tokenize


def _reading_with(tokenizer, backend, own):
    """A shallow copy of the HF fast `tokenizer` whose backend is `own` (its attribute found by
    identity with `backend`); the tokenizer itself where that cannot be done."""
    for name, value in vars(tokenizer).items():
        if value is backend:
            reader = copy.copy(tokenizer)
            setattr(reader, name, own)
            if getattr(reader, "backend_tokenizer", None) is own:
                return reader
    return tokenizer


def document_tokenize(tokenizer, cfg: TextConfig, literal_specials: bool = True
                      ) -> Callable[[list], list[list[int]]]:
    """`make_tokenize`, for documents that may also be conversations (a `messages` column: lists of
    {role, content}, `training.text.is_conversation`): each is written by the tokenizer's own chat
    template, its markers the special tokens they name and the messages' text read as text
    (transformers' `sanitize_control_tokens`), less the BOS a template writes first where packing
    puts BOS itself (`bos_policy` prepend or doc). A tokenizer without a chat template is refused:
    a chat dataset is for a chat model."""
    plain = make_tokenize(tokenizer, literal_specials)
    bos = getattr(tokenizer, "bos_token_id", None)
    drop_bos = cfg.bos_policy in ("prepend", "doc") and bos is not None

    def chat(conversation: list) -> list[int]:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"column {cfg.text_column!r} of {cfg.dataset!r} holds chat conversations (lists of role and "
                             f"content), but the tokenizer {tokenizer_name(tokenizer)} has no chat template: it is not a "
                             f"chat model's. Cache a chat model on it, or pass --text-column with a column of text")
        ids = tokenizer.apply_chat_template(conversation, tokenize=True, sanitize_control_tokens=True)
        ids = list(ids["input_ids"] if not isinstance(ids, list) else ids)
        return ids[1:] if drop_bos and ids[:1] == [bos] else ids

    def tokenize(docs: list) -> list[list[int]]:
        text_at = [i for i, d in enumerate(docs) if not is_conversation(d)]  # the positions of plain texts
        if len(text_at) == len(docs):
            return plain(docs)
        out: list[list[int]] = [chat(d) if is_conversation(d) else [] for d in docs]
        for i, ids in zip(text_at, plain([docs[i] for i in text_at]) if text_at else []):
            out[i] = ids
        return out

    return tokenize


def document_bytes(doc) -> int:
    """UTF-8 bytes of a document (a conversation: of its messages' text)."""
    if isinstance(doc, str):
        return len(doc.encode())
    return sum(len(str(m.get("content", "")).encode()) for m in doc if isinstance(m, dict))


@dataclass(frozen=True)
class SpecialTokensReading:
    """How special tokens written out in a dataset's documents are read (`decide_special_tokens`):
    `reading` "text" (as their characters) or "match" (as the tokens they name); under "auto",
    `holding` of the `sampled` first non-empty documents held one."""

    reading: str
    auto: bool = False
    holding: int = 0
    sampled: int = 0

    @property
    def literal(self) -> bool:
        """`make_tokenize`'s `literal_specials`."""
        return self.reading == "text"

    def note(self) -> str | None:
        """What auto decided, for the user, with how to choose the other; None when nothing was
        decided (the flag given) or no first document holds a special token written out."""
        if not self.auto or not self.holding:
            return None
        how = ("read as text (their characters)" if self.literal else
               "matched (read as the special tokens they name: text rendered by a chat template)")
        other = "match" if self.literal else "text"
        return (f"special tokens written out in {self.holding} of the first {self.sampled} documents: {how}, as "
                f"--special-tokens auto decides (matched when at least half hold one); --special-tokens {other} reads "
                f"them the other way")


def decide_special_tokens(cfg: TextConfig, tokenizer, texts: Sequence) -> SpecialTokensReading:
    """How `make_tokenize` reads a special token written out in `cfg`'s documents
    (`TextConfig.special_tokens`): "auto" decides from `texts`, the first documents: matched when at
    least half of the non-empty ones hold one (a corpus rendered by a chat template,
    "<|im_start|>user..." in every row, was written for the tokenizer to match), else text. The one
    place "auto" is decided: `training.text.source_as_read` records its answer in the text config
    (what an SAE trained on it records, so that eval reads held-out text the same way), a cache in
    its manifest (`literal_special_tokens`)."""
    if cfg.special_tokens != "auto":
        return SpecialTokensReading(cfg.special_tokens)
    written = sorted({s for s in (getattr(tokenizer, "all_special_tokens", None) or []) if s}, key=len, reverse=True)
    docs = [t for t in texts if isinstance(t, str) and t]
    if not written or not docs:
        return SpecialTokensReading("text", True, 0, len(docs))
    marker = re.compile("|".join(map(re.escape, written)))
    holding = sum(marker.search(t) is not None for t in docs)
    return SpecialTokensReading("text" if 2 * holding < len(docs) else "match", True, holding, len(docs))


def read_special_tokens(cfg: TextConfig, tokenizer, source: DocumentSource | None = None
                        ) -> tuple[TextConfig, SpecialTokensReading]:
    """(`cfg` with `special_tokens` decided, "text" or "match", what was decided): "auto" from the
    first documents of `source` (`cfg`'s dataset, opened here when not given), by
    `decide_special_tokens`. A pretokenized dataset's ids are read as they are: `cfg` unchanged."""
    if cfg.special_tokens != "auto":
        return cfg, SpecialTokensReading(cfg.special_tokens)
    source = source or DocumentSource(cfg)
    if source.pretokenized:
        return cfg, SpecialTokensReading("text")
    got = decide_special_tokens(cfg, tokenizer, sample_documents(source).texts)
    return dataclasses.replace(cfg, special_tokens=got.reading), got


def literal_specials_for(cfg: TextConfig, tokenizer, texts: Sequence) -> bool:
    """`decide_special_tokens(...).literal`: whether a special token written out is read as text."""
    return decide_special_tokens(cfg, tokenizer, texts).literal


# ----------------------------------------------------------------------------------------------
# Packing


def eos_is_next_bos(cfg: TextConfig, specials: SpecialTokens) -> bool:
    """True when the EOS separator is left out because the next document's BOS is the same token
    (`bos_policy="doc"`, `separator="eos"`, BOS == EOS): `[BOS] doc [EOS]` items would put two
    `<|endoftext|>` between every two GPT-2 documents. A cache records it (a setting, so a cache
    packed with two separators is not resumed with one)."""
    return (cfg.bos_policy == "doc" and cfg.separator == "eos" and specials.bos is not None
            and specials.bos == specials.eos)


TOKEN_SEPARATORS = ("eos", "bos")  # the separators that put a token after each document


def _item_extra(cfg: TextConfig, specials: SpecialTokens, next_bos: bool | None = None) -> tuple[int, int]:
    """(tokens before, tokens after) each document's own in its item. `next_bos`: whether the EOS
    is left out (default: `eos_is_next_bos`; a resumed cache: what it records)."""
    pre = int(cfg.bos_policy == "doc")
    next_bos = eos_is_next_bos(cfg, specials) if next_bos is None else next_bos
    post = int(cfg.separator in TOKEN_SEPARATORS and not next_bos)
    return pre, post


def separator_id(separator: str, specials: SpecialTokens) -> int | None:
    """The token a separator puts after each document (None: none, or the tokenizer lacks it)."""
    return {"eos": specials.eos, "bos": specials.bos}.get(separator)


def between_documents(cfg: TextConfig, specials: SpecialTokens) -> list[int]:
    """The ids packing puts between two documents inside a context: the separator after the first,
    BOS before the next under "doc"."""
    pre, post = _item_extra(cfg, specials)
    return [separator_id(cfg.separator, specials)] * post + [specials.bos] * pre


class UnknownSeparatorError(ValueError):
    """Text to be packed with separator "rows": what pretokenized rows held between documents, not
    known, so text cannot be packed alike (the message names --separator, the flag that says it)."""


class ContextPacker:
    """Cut the document stream into contexts, starting at a `TextPointer`.

    `take(n)` returns up to `n` contexts [N, L] (int64) and the pointer just past the last
    stream token they used; fewer than `n` only when the data ran out. The returned pointer is
    canonical (it depends only on what was consumed, not on how far ahead we tokenized).
    """

    def __init__(
        self,
        chunks: Iterator[list[str]],
        tokenize: Callable[[list[str]], list[list[int]]],
        cfg: TextConfig,
        specials: SpecialTokens,
        start: TextPointer = START,
        eos_next_bos: bool | None = None,
    ):
        self.cfg = cfg
        self._chunks = chunks
        self._tokenize = tokenize
        if cfg.bos_policy in ("prepend", "doc") and specials.bos is None:
            raise ValueError(
                f"bos_policy {cfg.bos_policy!r} needs a BOS token, but the tokenizer has none; "
                "use --bos-policy none"
            )
        if cfg.separator == "rows":
            raise UnknownSeparatorError(
                f"separator 'rows' (recorded for pretokenized rows whose separator is not known: no sae_lens.json said "
                f"it, or none of eos, bos, none puts it) cannot pack the text of {cfg.dataset!r}: pass --separator eos, "
                f"bos or none, the nearest to what those rows held (eos: EOS after each document; bos: BOS between "
                f"them, SAELens's default with a Llama-style tokenizer)")
        if cfg.separator in TOKEN_SEPARATORS and separator_id(cfg.separator, specials) is None:
            raise ValueError(f"separator {cfg.separator!r} needs a {cfg.separator.upper()} token, but the tokenizer has "
                             f"none; use --separator none")
        self._bos = specials.bos
        self._sep = separator_id(cfg.separator, specials)
        self._pre, self._post = _item_extra(cfg, specials, eos_next_bos)
        self.K = cfg.context_length - 1 if cfg.bos_policy == "prepend" else cfg.context_length
        self._next_doc = start.doc
        self._skip = start.offset
        self._last = start  # pointer just past the last consumed token
        self._tok = np.empty(0, np.int64)
        self._doc = np.empty(0, np.int64)
        self._off = np.empty(0, np.int64)
        self._pos = 0
        self._exhausted = False

    def _refill(self) -> bool:
        """Tokenize the next chunk of documents into the pending buffer. False when out of data."""
        while True:
            try:
                texts = next(self._chunks)
            except StopIteration:
                self._exhausted = True
                return False
            ids = self._tokenize(texts)
            d0 = self._next_doc
            skip = self._skip
            self._next_doc += len(ids)
            self._skip = 0
            tok, doc, off = self._items(ids, d0, skip)
            if len(tok):
                keep = slice(self._pos, None)
                self._tok = np.concatenate([self._tok[keep], tok])
                self._doc = np.concatenate([self._doc[keep], doc])
                self._off = np.concatenate([self._off[keep], off])
                self._pos = 0
                return True

    def _items(self, ids: list[list[int]], d0: int, skip: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items of documents d0, d0+1, ... (vectorized): tokens, their document index, their
        offset in the item; the first `skip` tokens of document d0's item dropped."""
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
        pre, post = self._pre, self._post
        nonempty = lens > 0  # empty documents contribute nothing (not even BOS/EOS)
        item_len = np.where(nonempty, lens + pre + post, 0)
        item_start = np.cumsum(item_len) - item_len
        total = int(item_len.sum())
        tok = np.empty(total, dtype=np.int64)
        tok_start = np.cumsum(lens) - lens
        within = np.arange(flat.size, dtype=np.int64) - np.repeat(tok_start, lens)
        tok[np.repeat(item_start + pre, lens) + within] = flat
        if pre:
            tok[item_start[nonempty]] = self._bos
        if post:
            tok[item_start[nonempty] + item_len[nonempty] - 1] = self._sep
        doc = np.repeat(np.arange(d0, d0 + len(ids), dtype=np.int64), item_len)
        off = np.arange(total, dtype=np.int64) - np.repeat(item_start, item_len)
        if skip and len(ids):
            cut = min(skip, int(item_len[0]))  # item 0 comes first in the stream
            tok, doc, off = tok[cut:], doc[cut:], off[cut:]
        return tok, doc, off

    def take(self, n: int) -> tuple[np.ndarray, TextPointer]:
        K, L = self.K, self.cfg.context_length
        need = n * K
        while len(self._tok) - self._pos < need and not self._exhausted:
            self._refill()
        m = min(n, (len(self._tok) - self._pos) // K)
        if m == 0:
            return np.empty((0, L), np.int64), self._last
        end = self._pos + m * K
        block = self._tok[self._pos:end].reshape(m, K)
        if self.cfg.bos_policy == "prepend":
            block = np.concatenate([np.full((m, 1), self._bos, np.int64), block], axis=1)
        self._last = TextPointer(int(self._doc[end - 1]), int(self._off[end - 1]) + 1)
        self._pos = end
        return np.ascontiguousarray(block), self._last


def warn_bos_left_out(cfg: TextConfig, tokenizer) -> None:
    """Warn when contexts go without BOS (`bos_policy="none"`) for a model whose own tokenizer starts
    every text with it (Llama's, Gemma's, Mistral's add it; GPT-2's, NeoX's and Qwen2's add none):
    the model was trained and is used with it, and without it every activation after it differs
    (Gemma's far off). A warning, not a refusal: leaving it out can be meant."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if cfg.bos_policy != "none" or bos is None or not _adds_bos_as_published(tokenizer, bos):
        return
    import warnings

    warnings.warn(f"bos-policy none: the contexts start without BOS, but this model's tokenizer ({tokenizer_name(tokenizer)}) "
                  f"starts every text with BOS {tokenizer.bos_token!r} (id {bos}), as the model is trained and used; "
                  f"without it every activation differs (Gemma's are far off). Use --bos-policy prepend (the default) "
                  f"or doc unless you mean it", UserWarning, stacklevel=3)


def _adds_bos_as_published(tokenizer, bos: int) -> bool:
    """Whether the tokenizer as its model publishes it (loaded again from where it came from:
    TransformerLens sets add_bos_token on every one it loads) starts a text with BOS; False when
    that cannot be told."""
    name = getattr(tokenizer, "name_or_path", None)
    if not name:  # built in memory: nothing published to load
        return False
    return _published_starts_with(name, tokenizer_revision(tokenizer), bos)


@functools.lru_cache(maxsize=16)
def _published_starts_with(name: str, revision: str | None, bos: int) -> bool:
    """`_adds_bos_as_published`, remembered per tokenizer name or folder and revision: loading one again
    takes about a second at Gemma's size, and each `open_packer` asks. A hub tokenizer is loaded at the
    revision its model was (`tokenizer_revision`: `--model NAME@REV`), whose tokenizer may add BOS
    otherwise than the default branch's."""
    probe = "A probe of what the tokenizer adds."
    try:
        from transformers import AutoTokenizer

        published = AutoTokenizer.from_pretrained(name, revision=revision)
        full = published(probe, verbose=False)["input_ids"]
        plain = published(probe, add_special_tokens=False, verbose=False)["input_ids"]
    except Exception:  # not loadable from its name (the toy tokenizer)
        return False
    return full[:1] == [bos] and plain[:1] != [bos]


def open_packer(
    cfg: TextConfig, tokenizer, start: TextPointer = START, source: DocumentSource | None = None,
    eos_next_bos: bool | None = None, literal_specials: bool | None = None,
) -> ContextPacker | RowPacker:
    """A `ContextPacker` over `cfg`'s documents, from `start` (`eos_next_bos`: a resumed cache's
    recorded `eos_is_next_bos`; default: the rule's; `literal_specials`: `make_tokenize`'s, a resumed
    cache's recorded `literal_special_tokens`; default: `literal_specials_for` the first documents).
    A pretokenized dataset's rows are checked against the tokenizer and read as they are
    (`training.pretokenized`)."""
    source = source or DocumentSource(cfg)
    if source.pretokenized:
        from training.pretokenized import RowPacker, checked_rows

        checked_rows(source, tokenizer)
        return RowPacker(source.chunks(RowPacker.first_row(start)), cfg, start)
    warn_bos_left_out(cfg, tokenizer)
    if literal_specials is None:
        literal_specials = literal_specials_for(cfg, tokenizer, sample_documents(source).texts)
    return ContextPacker(
        source.chunks(start.doc), document_tokenize(tokenizer, cfg, literal_specials), cfg, special_tokens(tokenizer), start,
        eos_next_bos
    )


def estimate_stream_tokens(cfg: TextConfig, tokenizer, source: DocumentSource, sample: DocumentSample,
                           eos_next_bos: bool | None = None, literal_specials: bool = True) -> int | None:
    """Rough number of stream tokens in the whole dataset from `sample`, its first documents (from
    `sample_documents`), packed as the build packs them (`eos_next_bos`, `literal_specials`: as `open_packer`'s). None
    when it cannot be guessed (e.g. a streamed hub dataset). Scales by the text's bytes where they are
    known (non-streaming: Arrow's offsets; parquet: the column's bytes in the footers), else by the
    document count (non-streaming, parquet) or by file bytes (local JSON and text files)."""
    texts = sample.texts
    if not texts:
        return 0
    if source.pretokenized:  # a row is a context: (rows) x (tokens used of each)
        rows = len(texts) if sample.complete else source.num_docs
        if rows is None and source.data.is_local and source.data.builder == "parquet":
            rows = _parquet_rows(source.data.files)
        return None if rows is None else rows * cfg.context_length
    ids = document_tokenize(tokenizer, cfg, literal_specials)(texts)
    extra = sum(_item_extra(cfg, special_tokens(tokenizer), eos_next_bos))
    sample_tokens = sum(len(x) + extra for x in ids if x)
    if sample.complete:
        return sample_tokens  # we saw everything
    if source.num_docs is not None:
        text_bytes = source.text_bytes
        if text_bytes is not None:
            return _scaled_by_bytes(ids, texts, sample_tokens, text_bytes, source.num_docs)
        return int(sample_tokens * source.num_docs / max(1, len(texts)))
    if source.data.is_local and source.data.builder in ("json", "text"):
        total_bytes = sum(p.stat().st_size for p in source.data.files)
        first = source.data.files[0]
        if source.data.builder == "text" and cfg.txt_documents == "file":  # one document per file
            sample_bytes = sum(p.stat().st_size for p in source.data.files[:len(texts)])
        elif source.data.builder == "text" or first.suffix == ".jsonl":  # one document per line
            with open(first, "rb") as f:
                sample_bytes = sum(len(next(f, b"")) for _ in range(len(texts)))
        else:
            sample_bytes = sum(map(document_bytes, texts))
        return int(sample_tokens * total_bytes / max(1, sample_bytes))
    if source.data.is_local and source.data.builder == "parquet":
        # by the text column's bytes (from the footers), not its rows: the first rows are often not typical;
        # those bytes only bound the text from below when stored as a dictionary (repeated strings counted once)
        rows = _parquet_rows(source.data.files)
        if rows is None:
            return None
        by_rows = int(sample_tokens * rows / max(1, len(texts)))
        stored = _parquet_column_bytes(source.data.files, source.column)
        if stored is None:
            return by_rows
        column_bytes, lower_bound = stored  # parquet stores a string as 4 length bytes + its UTF-8
        by_bytes = _scaled_by_bytes(ids, texts, sample_tokens, max(0, column_bytes - 4 * rows), rows)
        return max(by_bytes, by_rows) if lower_bound else by_bytes
    return None


def _scaled_by_bytes(ids, texts, sample_tokens: int, total_bytes: int, total_docs: int) -> int:
    """The stream's tokens from a sample's: text tokens scale with the text's UTF-8 bytes, the
    separators with the documents. (Scaled by documents alone, a sample of short first rows, as in a
    file sorted by length, put a dataset at ~1% of its size.)"""
    text_tokens = sum(len(x) for x in ids)
    tokens_per_byte = text_tokens / max(1, sum(map(document_bytes, texts)))
    return int(tokens_per_byte * total_bytes + (sample_tokens - text_tokens) * total_docs / max(1, len(texts)))


def _parquet_column_bytes(files, column: str) -> tuple[int, bool] | None:
    """(uncompressed bytes of the top-level string column `column` in parquet files, whether that is
    only a lower bound of its strings' bytes), from their footers; None when one cannot be read or
    the column is not a plain string column. A chunk with a dictionary page (pyarrow's default) holds
    each distinct string once: far fewer bytes than its text when strings repeat."""
    try:
        import pyarrow.parquet as pq

        total, lower_bound = 0, False
        for p in files:
            meta = pq.ParquetFile(p).metadata
            paths = [meta.schema.column(i).path for i in range(meta.num_columns)]
            i = paths.index(column) if column in paths else None
            if i is None or meta.schema.column(i).physical_type != "BYTE_ARRAY":
                return None
            for g in range(meta.num_row_groups):
                chunk = meta.row_group(g).column(i)
                total += chunk.total_uncompressed_size
                lower_bound = lower_bound or chunk.has_dictionary_page
        return total, lower_bound
    except Exception:
        return None


def _parquet_rows(files) -> int | None:
    """Rows in parquet files, from their footers (None when one cannot be read)."""
    try:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(p).metadata.num_rows for p in files)
    except Exception:
        return None


def contexts_as_text(tokens_NL: Sequence[Sequence[int]], tokenizer) -> list[str]:
    """Decode contexts back to text (debugging and tests)."""
    return [tokenizer.decode(list(map(int, row))) for row in tokens_NL]
