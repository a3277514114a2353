"""The toy-world corpus as local files that HF `datasets` reads, and the token packing for training.

`python -m toyworld.corpus --out DIR` writes

    DIR/train.jsonl, DIR/validation.jsonl, DIR/test.jsonl     {"text", "topic", "tense", "characters"}
    DIR/tags/<split>.jsonl                                       {"words": [...], "tags": ["a|b|c", ...]}
    DIR/corpus.json                                              seed, split sizes, format

Row i of tags/<split>.jsonl belongs to row i of <split>.jsonl; word j of a row carries the tags
`tags[j].split("|")`. Tags are written for validation and test (and for train with
--train-tags). Load the text with

    datasets.load_dataset("json", data_files={"train": "DIR/train.jsonl", ...})

or `toyworld.corpus.load_corpus(DIR)`. Document i of a split depends only on (seed, split, i),
so the same seed gives the same files on any machine, and `toyworld.train` trains on exactly the
documents of train.jsonl (it regenerates them instead of reading the file).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator

from toyworld.grammar import Document, iter_documents

SPLITS = ("train", "validation", "test")
CORPUS_FORMAT = 1

# Shape key: S sequence (positions within a packed row), N rows.


@dataclass
class CorpusConfig:
    """What `python -m toyworld.corpus` writes."""

    out: str = field(default="toyworld_corpus", metadata={"help": "output directory"})
    seed: int = field(default=0, metadata={"help": "corpus seed (document i of a split depends on seed, split, i)"})
    train_docs: int = field(default=100_000, metadata={"help": "documents in train.jsonl"})
    validation_docs: int = field(default=2_000, metadata={"help": "documents in validation.jsonl"})
    test_docs: int = field(default=2_000, metadata={"help": "documents in test.jsonl"})
    train_tags: bool = field(default=False, metadata={"help": "also write tags/train.jsonl (large)"})

    def __post_init__(self) -> None:
        for f in ("train_docs", "validation_docs", "test_docs"):
            if getattr(self, f) < 0:
                raise ValueError(f"CorpusConfig.{f} must be >= 0, got {getattr(self, f)}")

    def n_docs(self, split: str) -> int:
        return {"train": self.train_docs, "validation": self.validation_docs, "test": self.test_docs}[split]


def document_row(doc: Document) -> dict:
    return {"text": doc.text, "topic": doc.topic, "tense": doc.tense, "characters": list(doc.characters)}


def tags_row(doc: Document) -> dict:
    return {"words": doc.words, "tags": ["|".join(sorted(t)) for t in doc.tags]}


class _AtomicLines:
    """Write lines to `path` through a temp file in the same directory, fsync and rename on close."""

    def __init__(self, path: Path):
        self.path = path
        fd, self.tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(self.tmp, 0o644)  # by name: os.fchmod is POSIX-only before Python 3.13 (Windows)
        self.f = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, obj: dict) -> None:
        self.f.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def write_corpus(cfg: CorpusConfig, progress: bool = True) -> Path:
    """Write the corpus files described by `cfg`; returns the output directory."""
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    (out / "tags").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        n = cfg.n_docs(split)
        text_w = _AtomicLines(out / f"{split}.jsonl")
        want_tags = split != "train" or cfg.train_tags
        tags_w = _AtomicLines(out / "tags" / f"{split}.jsonl") if want_tags else None
        try:
            for doc in tqdm(iter_documents(cfg.seed, split, 0, n), total=n, desc=f"toyworld {split}",
                            disable=not progress):
                text_w.write(document_row(doc))
                if tags_w is not None:
                    tags_w.write(tags_row(doc))
        except BaseException:
            text_w.abort()
            if tags_w is not None:
                tags_w.abort()
            raise
        text_w.commit()
        if tags_w is not None:
            tags_w.commit()
    from toyworld.tokenizer import atomic_write_json

    atomic_write_json(out / "corpus.json", {"format": CORPUS_FORMAT, **asdict(cfg)})
    return out


def load_corpus(directory: str | os.PathLike):
    """The corpus at `directory` as a `datasets.DatasetDict` (splits present on disk)."""
    import datasets

    directory = Path(directory)
    files = {s: str(directory / f"{s}.jsonl") for s in SPLITS if (directory / f"{s}.jsonl").exists()}
    if not files:
        raise FileNotFoundError(f"no toyworld corpus in {directory}; write one with "
                                f"`python -m toyworld.corpus --out {directory}`")
    return datasets.load_dataset("json", data_files=files)


def default_corpus_dir(seed: int = 0) -> Path:
    """Where `corpus_files` keeps the default corpus: $SAESTEER_CACHE_DIR, else
    $XDG_CACHE_HOME/saesteer, else ~/.cache/saesteer; then toyworld/corpus-v{format}-seed{seed}."""
    base = os.environ.get("SAESTEER_CACHE_DIR")
    if not base:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "saesteer")
    return Path(base) / "toyworld" / f"corpus-v{CORPUS_FORMAT}-seed{seed}"


def corpus_files(split: str = "train", directory: str | os.PathLike | None = None, seed: int = 0,
                 progress: bool = True) -> list[Path]:
    """Paths of the toy corpus's jsonl file(s) for `split` ("text" field), writing the default-size
    corpus (CorpusConfig defaults: 100k train documents, ~4.4M tokens, ~40 MB; about a minute) into
    `directory` (default `default_corpus_dir(seed)`) the first time."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    d = Path(directory) if directory is not None else default_corpus_dir(seed)
    manifest = d / "corpus.json"
    if manifest.exists():
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        if meta.get("seed") != seed or meta.get("format") != CORPUS_FORMAT:
            raise ValueError(f"{d} holds a toy corpus with seed {meta.get('seed')} / format {meta.get('format')}, "
                             f"not seed {seed} / format {CORPUS_FORMAT}; pass another directory")
    else:
        write_corpus(CorpusConfig(out=str(d), seed=seed), progress=progress)
    return [d / f"{split}.jsonl"]


# ----------------------------------------------------------------------------------------------
# token packing

def encode_document(doc_text: str, tokenizer) -> list[int]:
    """<bos> words <eos> as token ids."""
    ids = tokenizer(doc_text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    return ids + [tokenizer.eos_token_id]


def iter_packed(doc_ids: Iterable[list[int]], n_ctx: int) -> Iterator[list[int]]:
    """Rows of exactly n_ctx tokens. Each row starts at a document's <bos> and holds whole documents
    in order; the document that overflows is cut at the row's end and its rest is dropped (the next
    row starts at the next document). Documents longer than n_ctx are cut."""
    row: list[int] = []
    for ids in doc_ids:
        row.extend(ids)
        if len(row) >= n_ctx:
            yield row[:n_ctx]
            row = []
    # a final partial row is dropped


def packed_rows(seed: int, split: str, n_rows: int, n_ctx: int, tokenizer, start_doc: int = 0):
    """`n_rows` packed rows (LongTensor [N, S]) from documents start_doc.. of a split, and the index
    of the first document not used."""
    import torch

    next_doc = start_doc
    rows = []

    def docs():
        nonlocal next_doc
        for doc in iter_documents(seed, split, start_doc):
            next_doc += 1
            yield encode_document(doc.text, tokenizer)

    for row in iter_packed(docs(), n_ctx):
        rows.append(row)
        if len(rows) == n_rows:
            break
    return torch.tensor(rows, dtype=torch.long), next_doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toyworld.corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(CorpusConfig):
        if f.type in ("bool", bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", action="store_true", help=f.metadata["help"])
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                           help=f"{f.metadata['help']} (default: {f.default})")
    args = p.parse_args(argv)
    cfg = CorpusConfig(**{f.name: getattr(args, f.name) for f in fields(CorpusConfig)})
    out = write_corpus(cfg)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
