"""Text input for the activation cache: where the documents come from (HF `datasets`) and
what the manifest records about them. Tokenizing and packing them into contexts is
`training.packing`.

Sources (`TextConfig.dataset`), read at split `TextConfig.split`:
  * "toy": the toy world's corpus files (jsonl with a "text" field; splits train, validation);
  * local data: a .json / .jsonl / .parquet / .csv / .txt file (the split "train"), a folder whose files
    or sub-folders are named by split (train.jsonl, validation.jsonl, test/...; no split names:
    all of it is "train"), or a mapping "train=PATH,validation=PATH" (see `training.splits`,
    which follows HF `datasets`' rules); one file kind per split;
  * anything else: a HuggingFace hub dataset name (streamed).
A column of token ids instead of text (SAELens's pretokenized datasets) is read row by row as model
inputs, not tokenized again: see `training.pretokenized`.

A .txt file is one document (`txt_documents="file"`: a folder of source files or essays is read as
such, newlines and blank lines kept), or one document per line (`"line"`: blank lines skipped), the
default of HF `datasets`' text builder. The manifest records which (see `dataset_spec`).

A `TextPointer(doc, offset)` names a place in the packed stream: item `doc` (index in the
dataset, counting empty documents too), token `offset` within that item (see `training.packing`).
`datasets` is imported lazily (it is slow to import).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, NamedTuple, get_args

from training.splits import DATA_FILE_BUILDERS, absolute, describe_splits, local_splits, looks_local

# documents are read this many at a time, and a chunk of them ends past this many characters (or
# token ids): enough to tokenize efficiently, few enough that a small cache reads little of a big dataset
READ_DOCS = 16
CHUNK_CHARS = 1 << 20

BosPolicy = Literal["prepend", "doc", "none"]
# what stands between documents: EOS, BOS or nothing after each; "rows": as pretokenized rows hold it
# (unknown: no sae_lens.json says, or none of the others puts it), which packs no text (`training.packing`)
Separator = Literal["eos", "bos", "none", "rows"]
SEPARATORS: tuple[str, ...] = get_args(Separator)


def separators_for(bos_policy: str) -> tuple[str, ...]:
    """The separators that go with a BOS policy: "bos" not under "doc" (a second BOS per document)."""
    return tuple(s for s in SEPARATORS if not (bos_policy == "doc" and s == "bos"))


# a special token written out in a document ("<|endoftext|>", "<s>"): its characters, or that token;
# auto: its characters, unless most of the first documents hold one (text rendered by a chat template)
SpecialTokenText = Literal["auto", "text", "match"]
SPECIAL_TOKEN_TEXT: tuple[str, ...] = get_args(SpecialTokenText)

TxtDocuments = Literal["file", "line"]
TXT_SAMPLE_BY = {"file": "document", "line": "line"}  # our name -> HF datasets' text builder `sample_by`


@dataclass
class TextConfig:
    """Text input: which documents, and how they become fixed-length token contexts."""

    dataset: str = field(
        default="toy",
        metadata={"help": "'toy' (the toy-world corpus), a local .json/.jsonl/.parquet/.csv/.txt file or "
                          "folder of them (split by file name, as HF datasets does), a folder written by "
                          "save_to_disk, a mapping train=PATH,validation=PATH, or a HuggingFace hub dataset name (streamed)"},
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
    text_column: str = field(
        default="text",
        metadata={"help": "column holding the document text, or a pretokenized dataset's token ids (one context per "
                          "row, read as stored); without a 'text' column, SAELens's 'tokens' or 'input_ids' is read"},
    )
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
    separator: Separator = field(
        default="eos",
        metadata={"help": "token put after each document: eos; bos (BOS between documents: SAELens's default with a "
                          "tokenizer whose BOS starts each document, as Llama's; not with bos-policy doc); none (with "
                          "bos-policy doc and a BOS that is the EOS, as GPT-2's: the next BOS alone separates). A "
                          "pretokenized dataset's rows hold their own: read from its sae_lens.json, else recorded as "
                          "rows (then text is packed for its SAEs only with --separator given)"},
    )

    special_tokens: SpecialTokenText = field(
        default="auto",
        metadata={"help": "how a special token written out in a document (<|endoftext|>, <s>, <|im_start|> in web pages "
                          "or code) is read: text = as its characters, as the model's pretraining read text; match = "
                          "as the token it names (text rendered by a chat template); auto = match where at least half "
                          "of the first documents hold one, else text, said when any does. Decided on the training "
                          "text and recorded by the cache and the SAE: eval reads held-out text as recorded"},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ValueError("TextConfig.dataset is empty: give 'toy', a local file/directory, or a hub name")
        if self.bos_policy not in ("prepend", "doc", "none"):
            raise ValueError(f"TextConfig.bos_policy must be prepend, doc or none; got {self.bos_policy!r}")
        if self.separator not in SEPARATORS:
            raise ValueError(f"TextConfig.separator must be one of {', '.join(SEPARATORS)}; got {self.separator!r}")
        if self.separator not in separators_for(self.bos_policy):
            raise ValueError(f"TextConfig.separator {self.separator}: under bos-policy {self.bos_policy} BOS starts "
                             f"every document already, and it would put a second BOS before each; use none")
        if self.special_tokens not in SPECIAL_TOKEN_TEXT:
            raise ValueError(f"TextConfig.special_tokens must be auto, text or match; got {self.special_tokens!r}")
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


class MissingSplitError(ValueError):
    """A local dataset without the split asked for. `missing` says so without the advice (how to pick
    another split), for a caller that offers a fix of its own."""

    def __init__(self, missing: str, advice: str) -> None:
        super().__init__(f"{missing}; {advice}")
        self.missing = missing


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
            raise MissingSplitError(
                f"dataset {cfg.dataset!r} has no split {cfg.split!r}"
                + (" (a single file is the split 'train')" if single else ""),
                f"its splits: {describe_splits(splits)}. Pick one with --split, or name the files of "
                f"each split: --dataset train=PATH,{cfg.split}=PATH"
            )
        files = splits[cfg.split]
    kinds = {p: DATA_FILE_BUILDERS.get(p.suffix) for p in files}
    bad = [p.name for p, k in kinds.items() if k is None]
    if bad:
        raise ValueError(f"unsupported data file type(s) {bad}; use {', '.join(sorted(DATA_FILE_BUILDERS))}")
    builders = set(kinds.values())
    if len(builders) != 1:
        raise ValueError(f"split {cfg.split!r} of dataset {cfg.dataset!r} mixes file kinds {sorted(builders)}; "
                         f"use one kind per split")
    files = [absolute(p) for p in files]  # symlinked files keep their names (HF hub cache snapshots)
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


class TextColumnError(ValueError):
    """A dataset's text column that cannot be read: `problem` says why; the message adds the fix
    (--text-column), which a caller that reads the column from a record words its own way."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}{'; ' if fix[0].islower() else '. '}{fix}")
        self.problem = problem


class DocumentSource:
    """Documents of one dataset split, in a fixed order, readable from any document index."""

    def __init__(self, cfg: TextConfig):
        self.cfg = cfg
        self.data = resolve_data(cfg)
        self._ds = self._load()
        self._check_column()
        self.token_record: dict | None = None  # a pretokenized source's rows as checked (`checked_rows`)

    def read_as(self, cfg: TextConfig, token_record: dict | None = None) -> "DocumentSource":
        """This source, its dataset already open, under `cfg`: the same dataset and split, read as
        `cfg` says (the column found, the separator its rows hold); `token_record`: its rows as
        checked under `cfg`, if they were. A new source: the one at hand is left as it is."""
        source = copy.copy(self)
        source.cfg, source.token_record = cfg, token_record
        return source

    def _load(self):
        import datasets

        cfg, data = self.cfg, self.data
        try:
            if data.is_local and data.builder in ("json", "csv", "text"):
                from saes.fileio import refuse_wide_text

                for p in data.files:  # read as UTF-8 a UTF-16 file is an unreadable-JSON error, or garbage
                    refuse_wide_text(p, "data file")
            if data.is_local and data.builder == "text" and cfg.txt_documents == "file":
                return _whole_txt_files(data.files, cfg.split, cfg.streaming)
            if data.is_local:
                # json: parse 1 MB at a time (default 10 MB) so the first documents come quickly
                extra = {"chunksize": 1 << 20} if data.builder == "json" else {}
                if data.builder == "csv":  # text such as "NA" or "null" stays text; an empty cell is ""
                    extra = {"keep_default_na": False}
                if data.builder == "text":  # utf-8-sig: a BOM (Windows Notepad writes one) is not text
                    extra = {"sample_by": TXT_SAMPLE_BY[cfg.txt_documents], "encoding": "utf-8-sig"}
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
        except ConnectionError as e:
            from saes.hf_offline import hf_offline

            if data.is_local or not hf_offline("datasets"):
                raise
            raise ValueError(_offline_hub_dataset_hint(cfg.dataset, e)) from None

    def columns(self) -> list[str]:
        names = getattr(self._ds, "column_names", None)
        if names:
            return list(names)
        try:  # streaming datasets may not know their columns before the first row
            first = next(iter(self._ds))
        except StopIteration:
            return []
        except ValueError as e:  # a streamed file is parsed only now (pyarrow's ArrowInvalid)
            raise self._read_error(e, 0) from e
        return list(first.keys())

    def _check_column(self) -> None:
        """Fix the column read (`column`) and whether it holds token ids (`pretokenized`): the text
        column asked for, or, when the default "text" is absent, SAELens's token column."""
        from training.pretokenized import TOKEN_COLUMNS

        cols = self.columns()
        self.column, self.pretokenized = self.cfg.text_column, False
        if not cols:
            return
        if self.column not in cols:
            tokens = [c for c in TOKEN_COLUMNS if c in cols]
            if self.cfg.text_column != "text" or not tokens:
                raise TextColumnError(f"dataset {self.cfg.dataset!r} has no column {self.cfg.text_column!r}; "
                                      f"available columns: {', '.join(cols)}", "Pass --text-column with one of them.")
            self.column = tokens[0]
        self.pretokenized = self._holds_token_ids()

    def _holds_token_ids(self) -> bool:
        from training.pretokenized import is_token_ids

        import datasets

        if isinstance((getattr(self._ds, "features", None) or {}).get(self.column), datasets.Value):
            return False  # a scalar column (text, a number): known without reading a row
        try:
            first = next(iter(self._ds.select_columns([self.column])), None)
        except ValueError as e:  # a streamed file is parsed only now (pyarrow's ArrowInvalid)
            raise self._read_error(e, 0) from e
        return first is not None and is_token_ids(first[self.column])

    @property
    def num_docs(self) -> int | None:
        """Number of documents if known without reading them all (non-streaming only)."""
        try:
            return len(self._ds)
        except TypeError:
            return None

    @property
    def text_bytes(self) -> int | None:
        """UTF-8 bytes of the text column if known without reading the documents (non-streaming:
        summed from Arrow's string offsets), else None."""
        if self.num_docs is None or getattr(self._ds, "_indices", None) is not None:
            return None  # streamed, or rows selected from a larger table
        try:
            import pyarrow.compute as pc

            return int(pc.sum(pc.binary_length(self._ds.data.column(self.column))).as_py() or 0)
        except Exception:  # not a string column (token ids), or not an Arrow-backed dataset
            return None

    def chunks(self, start_doc: int = 0, chunk_docs: int = 256) -> Iterator[list]:
        """Lists of document texts (of token ids when `pretokenized`), in dataset order, beginning at
        document index `start_doc`: `chunk_docs` documents each (a few more or fewer), fewer when
        they hold more than `CHUNK_CHARS` characters, so that book-length documents are not read and
        tokenized hundreds at a time when a few contexts are asked for."""
        pending: list = []
        size, first = 0, start_doc
        for values in self._batches(start_doc, min(chunk_docs, READ_DOCS)):
            pending += self._texts(values, first + len(pending))
            size += sum(len(v) for v in values if v is not None)
            if len(pending) >= chunk_docs or size >= CHUNK_CHARS:
                yield pending
                first += len(pending)
                pending, size = [], 0
        if pending:
            yield pending

    def _batches(self, start_doc: int, batch_docs: int) -> Iterator[list]:
        """The column's raw values, `batch_docs` documents at a time, from `start_doc`."""
        col = self.column
        ds = self._ds
        n = self.num_docs
        if n is not None:  # random access
            sub = ds.select_columns([col])
            for i in range(start_doc, n, batch_docs):
                yield sub[i:i + batch_docs][col]
            return
        if start_doc:
            ds = ds.skip(start_doc)
        batches = iter(ds.select_columns([col]).iter(batch_size=batch_docs))
        first = start_doc
        while True:
            try:  # a streamed file is parsed only now: say which dataset a parse error is in
                batch = next(batches)
            except StopIteration:
                return
            except ValueError as e:  # pyarrow's ArrowInvalid: "JSON parse error: ... in row 1"
                raise self._read_error(e, first) from e
            yield batch[col]
            first += len(batch[col])

    def _read_error(self, error: Exception, first_doc: int) -> ValueError:
        where = f" after document {first_doc}" if first_doc else ""
        return ValueError(f"could not read dataset {self.cfg.dataset!r} (split {self.cfg.split!r}){where}: {error}")

    def _texts(self, values: list, first_doc: int) -> list:
        """One chunk's documents: a missing value (null) is an empty document; a conversation (a
        list of {role, content} messages, as a `messages` column holds) is kept as it is, for the
        model's chat template (`training.packing.document_tokenize`); another value that is not text
        (numbers) is refused, as it would be cached as nothing. Pretokenized rows are returned as
        they are (`training.pretokenized` reads them)."""
        if self.pretokenized:
            return list(values)
        for j, v in enumerate(values):
            if v is not None and not isinstance(v, str) and not is_conversation(v):
                shown = repr(v)
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                raise TextColumnError(
                    f"document {first_doc + j} of dataset {self.cfg.dataset!r}: column {self.cfg.text_column!r} is "
                    f"{type(v).__name__}, not text ({shown})", "pass --text-column with the column that holds the "
                    "documents' text (or fix that document)")
        return ["" if v is None else v for v in values]


def is_conversation(value) -> bool:
    """A chat's list of messages: dicts with a role and a content (OpenAI's and HF's chat format)."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in value))


def text_as_read(cfg: TextConfig, tokenizer=None, separator_given: bool = True) -> TextConfig:
    """`cfg` as its dataset is read, which a record of how the text was read must say:
    `source_as_read(...).cfg` (see there)."""
    return source_as_read(cfg, tokenizer, separator_given).cfg


def source_as_read(cfg: TextConfig, tokenizer=None, separator_given: bool = True) -> DocumentSource:
    """The dataset of `cfg` opened, under `cfg` as it is read (`.cfg`), to read from without
    opening it again: naming the column read (`DocumentSource.column`: a pretokenized dataset given
    the default "text" is read from its token column), and, for a pretokenized dataset checked
    against `tokenizer`, the separator its rows hold between documents
    (`training.pretokenized.rows_separator`: one given that contradicts them is refused).
    `separator_given` False: `cfg.separator` is the flag's default, which says nothing of the rows."""
    source = DocumentSource(cfg)
    read = cfg if source.column == cfg.text_column else dataclasses.replace(cfg, text_column=source.column)
    if not source.pretokenized or tokenizer is None:
        return source.read_as(read)
    from training.pretokenized import checked_rows

    if not separator_given:
        read = dataclasses.replace(read, separator="rows")
    record = checked_rows(source.read_as(read), tokenizer)  # the rows checked as read, from the dataset already open
    return source.read_as(dataclasses.replace(read, separator=record["separator"]), record)


def _offline_hub_dataset_hint(name: str, error: Exception) -> str:
    """Why a hub dataset cannot be read offline, and the local folder to give instead when the HF
    cache holds a snapshot of it (`huggingface-cli download --repo-type dataset NAME` puts one there)."""
    head = f"dataset {name!r}: hub datasets are read from the hub, which offline mode (HF_HUB_OFFLINE / " \
           f"HF_DATASETS_OFFLINE) forbids ({error})"
    try:
        from huggingface_hub import snapshot_download

        snap = snapshot_download(name, repo_type="dataset", local_files_only=True)
    except Exception:  # not in the cache (or not a repo name at all)
        return f"{head}; give its files as a local path (--dataset DIR), or unset offline mode"
    return f"{head}; the HF cache holds a copy of its files: --dataset {snap}"


def _whole_txt_files(files, split: str, streaming: bool):
    """One document per .txt file, its text exactly as stored (UTF-8, less a byte-order mark). Not HF datasets' text builder:
    it opens files in text mode, which turns CRLF and CR line ends into LF, so the tokens cached would
    not be the file's. The files' sizes and modification times go into the generator's arguments, so
    the Arrow copy of a non-streaming read is rebuilt when a file changes."""
    import datasets

    stamped = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    kwargs = dict(features=datasets.Features({"text": datasets.Value("string")}), gen_kwargs={"files": stamped},
                  split=split)
    if streaming:
        return datasets.IterableDataset.from_generator(_read_txt_files, **kwargs)
    try:
        return datasets.Dataset.from_generator(_read_txt_files, **kwargs)
    except datasets.exceptions.DatasetGenerationError as e:  # say what went wrong in the generator
        raise (e.__cause__ if isinstance(e.__cause__, ValueError) else e) from None


def _read_txt_files(files):
    from saes.fileio import read_text_file

    for path, _size, _mtime in files:
        yield {"text": read_text_file(path, "data file")}  # as stored, less a BOM (Windows Notepad writes one)


class DocumentSample(NamedTuple):
    """The first documents of a dataset, and whether they are all of it."""

    texts: list
    complete: bool


def sample_documents(source: DocumentSource, n: int = 512) -> DocumentSample:
    """The first `n` documents, or fewer: those in the first `CHUNK_CHARS` characters, or all there are."""
    texts = next(source.chunks(0, chunk_docs=n), [])
    # a chunk ends early only at the character bound or at the end of the data
    return DocumentSample(texts, complete=len(texts) < n and sum(map(len, texts)) < CHUNK_CHARS)
