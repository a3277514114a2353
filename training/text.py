"""Text input for the activation cache: documents from HF `datasets`, tokenized and packed into
fixed-length contexts under an explicit BOS policy.

Sources (`TextConfig.dataset`), read at split `TextConfig.split`:
  * "toy": the toy world's corpus files (jsonl with a "text" field; splits train, validation);
  * local data: a .json / .jsonl / .parquet / .txt file (the split "train"), a folder whose files
    or sub-folders are named by split (train.jsonl, validation.jsonl, test/...; no split names:
    all of it is "train"), or a mapping "train=PATH,validation=PATH" (see `training.splits`,
    which follows HF `datasets`' rules); one file kind per split;
  * anything else: a HuggingFace hub dataset name (streamed).

A .txt file is one document (`txt_documents="file"`: a folder of source files or essays is read as
such, newlines and blank lines kept), or one document per line (`"line"`: blank lines skipped), the
default of HF `datasets`' text builder. The manifest records which (see `dataset_spec`).

Packing. Each non-empty document becomes an *item* of tokens: `[BOS]` first when
`bos_policy="doc"`, then the document's tokens, then `[EOS]` when `separator="eos"`. Items are
concatenated into one stream, cut into contexts of `context_length` tokens:
  * "prepend": every context is `[BOS]` + the next `context_length - 1` stream tokens;
  * "doc":     contexts are plain slices of the stream (BOS marks document starts inside it);
  * "none":    contexts are plain slices, no BOS anywhere.
The tail of the stream shorter than one context is dropped.

A `TextPointer(doc, offset)` names a place in the stream: item `doc` (index in the dataset,
counting empty documents too), token `offset` within that item. Packing restarted at a pointer
continues exactly where an uninterrupted run would be; this is what makes cache resume exact.
`datasets` is imported lazily (it is slow to import).

Shape key: N contexts, L context_length.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, NamedTuple, Sequence

import numpy as np

from training.splits import describe_splits, local_splits, looks_local

BosPolicy = Literal["prepend", "doc", "none"]
TxtDocuments = Literal["file", "line"]
TXT_SAMPLE_BY = {"file": "document", "line": "line"}  # our name -> HF datasets' text builder `sample_by`
LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


@dataclass
class TextConfig:
    """Text input: which documents, and how they become fixed-length token contexts."""

    dataset: str = field(
        default="toy",
        metadata={"help": "'toy' (the toy-world corpus), a local .json/.jsonl/.parquet/.txt file or "
                          "folder of them (split by file name, as HF datasets does), a mapping "
                          "train=PATH,validation=PATH, or a HuggingFace hub dataset name (streamed)"},
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "hub dataset configuration (subset) name, if it has several"}
    )
    split: str = field(
        default="train",
        metadata={"help": "dataset split to read; local data: a single file is the split 'train', a folder's "
                          "splits come from its file names (train.jsonl, validation.jsonl, test/...), or give "
                          "--dataset train=PATH,validation=PATH"},
    )
    text_column: str = field(default="text", metadata={"help": "column holding the document text"})
    streaming: bool = field(
        default=True,
        metadata={"help": "stream documents instead of building an Arrow copy first "
                          "(false: local files are converted once into the HF datasets cache)"},
    )
    txt_documents: TxtDocuments = field(
        default="file",
        metadata={"help": "local .txt files: file = each file is one document (newlines kept); line = each "
                          "line is one document (blank lines skipped)"},
    )
    context_length: int = field(default=128, metadata={"help": "tokens per context (model input length)"})
    bos_policy: BosPolicy = field(
        default="prepend",
        metadata={"help": "prepend: BOS starts every context; doc: BOS starts every document "
                          "(contexts are plain slices); none: no BOS"},
    )
    separator: Literal["eos", "none"] = field(
        default="eos", metadata={"help": "token appended after each document: eos, or none"}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ValueError("TextConfig.dataset is empty: give 'toy', a local file/directory, or a hub name")
        if self.bos_policy not in ("prepend", "doc", "none"):
            raise ValueError(f"TextConfig.bos_policy must be prepend, doc or none; got {self.bos_policy!r}")
        if self.separator not in ("eos", "none"):
            raise ValueError(f"TextConfig.separator must be eos or none; got {self.separator!r}")
        if self.txt_documents not in TXT_SAMPLE_BY:
            raise ValueError(f"TextConfig.txt_documents must be file or line; got {self.txt_documents!r}")
        if not isinstance(self.context_length, int) or self.context_length < 2:
            raise ValueError(f"TextConfig.context_length must be an integer >= 2; got {self.context_length!r}")
        if not self.text_column:
            raise ValueError("TextConfig.text_column is empty: name the column that holds the text")


class TextPointer(NamedTuple):
    """A place in the packed token stream: item `doc` (dataset row index), token `offset` in it."""

    doc: int
    offset: int


START = TextPointer(0, 0)


# ----------------------------------------------------------------------------------------------
# Locating the data


def toy_corpus_files(split: str = "train") -> list[Path]:
    """The toy world's corpus file(s) for `split` (jsonl with a "text" field; `toyworld` writes the
    default corpus once, deterministically, the first time it is asked for)."""
    try:
        import toyworld
    except ImportError as e:  # pragma: no cover - toyworld ships with saesteer
        raise ValueError(f"dataset 'toy' needs the toyworld package, which failed to import: {e}") from None
    return [Path(p) for p in toyworld.corpus_files(split)]


@dataclass(frozen=True)
class ResolvedData:
    """Where documents come from: a `datasets` builder with the local files of one split, or a hub name."""

    builder: str  # "json" | "parquet" | "text" | hub dataset name
    files: tuple[Path, ...]  # the split's files, absolute (empty for hub datasets)
    is_local: bool
    split: str = "train"  # the split these files are
    root: Path | None = None  # the folder the files are named relative to in the manifest


def resolve_data(cfg: TextConfig) -> ResolvedData:
    """Map `cfg.dataset` and `cfg.split` to a builder and the split's files (see `training.splits`
    for local files, folders and split=path mappings); clear errors for unusable local paths and
    for a split the data does not have."""
    if cfg.dataset == "toy":
        files = toy_corpus_files(cfg.split)
    elif not looks_local(cfg.dataset):
        return ResolvedData(cfg.dataset, (), False, cfg.split)
    else:
        splits = local_splits(cfg.dataset)
        if cfg.split not in splits:
            single = len(splits) == 1 and Path(cfg.dataset).expanduser().is_file()
            raise ValueError(
                f"dataset {cfg.dataset!r} has no split {cfg.split!r}"
                + (" (a single file is the split 'train')" if single else "")
                + f"; its splits: {describe_splits(splits)}. Pick one with --split, or name the files of "
                f"each split: --dataset train=PATH,{cfg.split}=PATH"
            )
        files = splits[cfg.split]
    kinds = {p: LOCAL_SUFFIXES.get(p.suffix) for p in files}
    bad = [p.name for p, k in kinds.items() if k is None]
    if bad:
        raise ValueError(f"unsupported data file type(s) {bad}; use {', '.join(sorted(LOCAL_SUFFIXES))}")
    builders = set(kinds.values())
    if len(builders) != 1:
        raise ValueError(f"split {cfg.split!r} of dataset {cfg.dataset!r} mixes file kinds {sorted(builders)}; "
                         f"use one kind per split")
    files = [Path(p).resolve() for p in files]
    root = Path(os.path.commonpath([p.parent for p in files]))
    return ResolvedData(builders.pop(), tuple(files), True, cfg.split, root)


def dataset_spec(cfg: TextConfig, data: ResolvedData | None = None) -> dict[str, Any]:
    """What the manifest records about the text source (compared on resume): the split really
    read, its files, and for .txt files whether a document is a file or a line (`txt_documents`).

    Local files are named by their path below the folder that holds them all, and their size
    (not the absolute path), so a moved corpus still matches while an edited one does not."""
    data = data or resolve_data(cfg)
    spec: dict[str, Any] = {
        "name": cfg.dataset,
        "config": cfg.dataset_config,
        "split": data.split,
        "text_column": cfg.text_column,
    }
    if data.is_local:
        spec["files"] = [[p.relative_to(data.root).as_posix(), p.stat().st_size] for p in data.files]
    if data.builder == "text" and data.is_local:
        spec["txt_documents"] = cfg.txt_documents
    return spec


# ----------------------------------------------------------------------------------------------
# Documents


class DocumentSource:
    """Documents of one dataset split, in a fixed order, readable from any document index."""

    def __init__(self, cfg: TextConfig):
        self.cfg = cfg
        self.data = resolve_data(cfg)
        self._ds = self._load()
        self._check_column()

    def _load(self):
        import datasets

        cfg, data = self.cfg, self.data
        try:
            if data.is_local:
                # json: parse 1 MB at a time (default 10 MB) so the first documents come quickly
                extra = {"chunksize": 1 << 20} if data.builder == "json" else {}
                if data.builder == "text":
                    extra = {"sample_by": TXT_SAMPLE_BY[cfg.txt_documents]}
                return datasets.load_dataset(
                    data.builder,
                    data_files={cfg.split: [str(p) for p in data.files]},
                    split=cfg.split,
                    streaming=cfg.streaming,
                    **extra,
                )
            return datasets.load_dataset(
                data.builder, cfg.dataset_config, split=cfg.split, streaming=cfg.streaming
            )
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"could not open dataset {cfg.dataset!r} (split {cfg.split!r}): {e}") from e

    def columns(self) -> list[str]:
        names = getattr(self._ds, "column_names", None)
        if names:
            return list(names)
        try:  # streaming datasets may not know their columns before the first row
            first = next(iter(self._ds))
        except StopIteration:
            return []
        return list(first.keys())

    def _check_column(self) -> None:
        cols = self.columns()
        if cols and self.cfg.text_column not in cols:
            raise ValueError(
                f"dataset {self.cfg.dataset!r} has no column {self.cfg.text_column!r}; "
                f"available columns: {', '.join(cols)}. Pass --text-column with one of them."
            )

    @property
    def num_docs(self) -> int | None:
        """Number of documents if known without reading them all (non-streaming only)."""
        try:
            return len(self._ds)
        except TypeError:
            return None

    def chunks(self, start_doc: int = 0, chunk_docs: int = 256) -> Iterator[list[str]]:
        """Lists of document texts, in dataset order, beginning at document index `start_doc`."""
        col = self.cfg.text_column
        ds = self._ds
        n = self.num_docs
        if n is not None:  # random access
            sub = ds.select_columns([col])
            for i in range(start_doc, n, chunk_docs):
                yield [t if isinstance(t, str) else "" for t in sub[i:i + chunk_docs][col]]
            return
        if start_doc:
            ds = ds.skip(start_doc)
        ds = ds.select_columns([col])
        for batch in ds.iter(batch_size=chunk_docs):
            yield [t if isinstance(t, str) else "" for t in batch[col]]


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
        "name": str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
        "vocab_size": int(len(tokenizer)),
        "bos_id": sp.bos,
        "eos_id": sp.eos,
        "pad_id": sp.pad,
        "sha256": h.hexdigest(),
    }


def make_tokenize(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """A function mapping a list of texts to lists of token ids, adding no special tokens.

    For HF fast tokenizers it calls the Rust backend's `encode_batch_fast` directly (about 1.5x
    less CPU than `tokenizer(...)`), after checking on the first batch that it gives exactly the
    ids `tokenizer(...)` gives; on any difference it uses `tokenizer(...)` throughout."""

    def slow(texts: list[str]) -> list[list[int]]:
        out = tokenizer(
            texts,
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        return out["input_ids"]

    backend = getattr(tokenizer, "backend_tokenizer", None)
    fast_fn = getattr(backend, "encode_batch_fast", None)
    if fast_fn is None:
        return slow
    # the check's verdict is remembered on the tokenizer object (one check per tokenizer)
    state = tokenizer.__dict__.setdefault("_saesteer_fast_tokenize", {"checked": False, "use_fast": True})

    def tokenize(texts: list[str]) -> list[list[int]]:
        if not state["use_fast"]:
            return slow(texts)
        ids = [e.ids for e in fast_fn(texts, add_special_tokens=False)]
        if not state["checked"] and texts:
            ref = slow(texts)
            state["checked"] = True
            if [list(x) for x in ref] != ids:
                state["use_fast"] = False
                return ref
        return ids

    return tokenize


# ----------------------------------------------------------------------------------------------
# Packing


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
    ):
        self.cfg = cfg
        self._chunks = chunks
        self._tokenize = tokenize
        if cfg.bos_policy in ("prepend", "doc") and specials.bos is None:
            raise ValueError(
                f"bos_policy {cfg.bos_policy!r} needs a BOS token, but the tokenizer has none; "
                "use --bos-policy none"
            )
        if cfg.separator == "eos" and specials.eos is None:
            raise ValueError("separator 'eos' needs an EOS token, but the tokenizer has none; use --separator none")
        self._bos = specials.bos
        self._eos = specials.eos
        self.K = cfg.context_length - 1 if cfg.bos_policy == "prepend" else cfg.context_length
        self._next_doc = start.doc
        self._skip = start.offset
        self._last = start  # pointer just past the last consumed token
        self._tok = np.empty(0, np.int64)
        self._doc = np.empty(0, np.int64)
        self._off = np.empty(0, np.int64)
        self._pos = 0
        self._exhausted = False

    @property
    def pointer(self) -> TextPointer:
        return self._last

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
        pre = int(self.cfg.bos_policy == "doc")
        post = int(self.cfg.separator == "eos")
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
            tok[item_start[nonempty] + item_len[nonempty] - 1] = self._eos
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


def open_packer(
    cfg: TextConfig, tokenizer, start: TextPointer = START, source: DocumentSource | None = None
) -> ContextPacker:
    """A `ContextPacker` over `cfg`'s documents, from `start`."""
    source = source or DocumentSource(cfg)
    return ContextPacker(
        source.chunks(start.doc), make_tokenize(tokenizer), cfg, special_tokens(tokenizer), start
    )


def sample_documents(source: DocumentSource, n: int = 512) -> list[str]:
    """The first `n` documents (fewer if the dataset is smaller)."""
    try:
        return next(source.chunks(0, chunk_docs=n))
    except StopIteration:
        return []


def estimate_stream_tokens(cfg: TextConfig, tokenizer, source: DocumentSource, texts: list[str], sample_docs: int = 512) -> int | None:
    """Rough number of stream tokens in the whole dataset from `texts`, its first documents (from
    `sample_documents(source, sample_docs)`). None when it cannot be guessed (e.g. a streamed hub
    dataset). Scales by the document count (non-streaming) or by file bytes (local files)."""
    if not texts:
        return 0
    ids = make_tokenize(tokenizer)(texts)
    extra = (cfg.bos_policy == "doc") + (cfg.separator == "eos")
    sample_tokens = sum(len(x) + extra for x in ids if x)
    if len(texts) < sample_docs:
        return sample_tokens  # we saw everything
    if source.num_docs is not None:
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
            sample_bytes = sum(len(t.encode()) for t in texts)
        return int(sample_tokens * total_bytes / max(1, sample_bytes))
    if source.data.is_local and source.data.builder == "parquet":
        try:
            import pyarrow.parquet as pq

            rows = sum(pq.ParquetFile(p).metadata.num_rows for p in source.data.files)
            return int(sample_tokens * rows / max(1, len(texts)))
        except Exception:
            return None
    return None


def contexts_as_text(tokens_NL: Sequence[Sequence[int]], tokenizer) -> list[str]:
    """Decode contexts back to text (debugging and tests)."""
    return [tokenizer.decode(list(map(int, row))) for row in tokens_NL]
