"""Held-out text for the CE evaluation of a training run, and the check that it is held out.

    eval_text = eval_text_config(train_text, eval_dataset=None, eval_split="validation")
    held = heldout_contexts(train_text, eval_text, tokenizer, 64, train_docs=1200)
    held.tokens_NL          # the first 64 packed contexts of the eval text
    held.provenance()       # what was read: dataset, split, files, documents, overlap

The eval text is `--eval-dataset` when given (its split `--eval-split` when it has several, else
its only one), else the split `--eval-split` of the training data. A split the data does not have
is an error (no label-only split: a single file is the split "train").

The overlap check compares the eval text with the training text:
  * files: an eval file that is also a training file (same path, or same size and SHA-256);
  * documents: how many of the documents the eval contexts came from also appear, with the same
    text (surrounding whitespace aside), among the training documents - the first `train_docs`
    of them (what the cache read) or all.
Eval text entirely inside the training text is refused (`EvalOverlapError`) unless
`allow_overlap`; a partial overlap is reported (in the provenance, and as a note by the CLI).
Documents are compared only when the training data is local (a hub dataset's splits are taken as
published, and the provenance says the check did not run).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saes.fileio import sha256_file
from training.splits import describe_splits, local_splits, looks_local
from training.packing import open_packer
from training.text import DocumentSource, TextConfig

__all__ = ["EvalOverlapError", "OverlapReport", "HeldOut", "eval_text_config", "heldout_contexts"]


class EvalOverlapError(ValueError):
    """The evaluation text is (entirely) text the SAE was trained on."""


@dataclass(frozen=True)
class OverlapReport:
    checked: bool
    eval_documents: int = 0  # non-empty documents the eval contexts came from
    in_training: int = 0  # of them, found among the training documents
    training_documents: int = 0  # training documents compared
    shared_files: tuple[str, ...] = ()  # eval files that are training files
    note: str = ""  # why it was not checked

    @property
    def total(self) -> bool:
        """The eval text is all training text."""
        return self.checked and self.eval_documents > 0 and self.in_training == self.eval_documents

    def describe(self) -> str:
        if not self.checked:
            return f"train/eval overlap not checked ({self.note})"
        files = f"; files read by both: {', '.join(self.shared_files)}" if self.shared_files else ""
        return (f"{self.in_training} of the {self.eval_documents} eval documents are among the "
                f"{self.training_documents:,} training documents{files}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"shared_files": list(self.shared_files)}


@dataclass
class HeldOut:
    tokens_NL: torch.Tensor
    text: TextConfig  # the eval text read
    files: list[str]  # its local files (absolute), empty for hub datasets
    documents: int  # documents the contexts came from
    overlap: OverlapReport = field(default_factory=lambda: OverlapReport(False, note="not run"))

    def provenance(self) -> dict[str, Any]:
        return {"dataset": self.text.dataset, "split": self.text.split, "files": list(self.files),
                "documents": self.documents, "contexts": int(self.tokens_NL.shape[0]),
                "overlap": self.overlap.to_json()}


def eval_text_config(train: TextConfig, eval_dataset: str | None, eval_split: str) -> TextConfig:
    """The eval text: `eval_dataset` (its `eval_split` when it has several splits, else its only
    one), or split `eval_split` of the training data; read from the training text's column (but
    see `other_dataset_column`) and packed like the training text."""
    if not eval_dataset:
        return dataclasses.replace(train, split=eval_split)
    split = eval_split
    if eval_dataset != "toy" and looks_local(eval_dataset):
        splits = local_splits(eval_dataset)
        if eval_split not in splits:
            if len(splits) != 1:
                raise ValueError(f"the eval dataset {eval_dataset!r} has no split {eval_split!r}; its splits: "
                                 f"{describe_splits(splits)}. Pick one with --eval-split")
            split = next(iter(splits))
    return dataclasses.replace(train, dataset=eval_dataset, dataset_config=None, split=split,
                               text_column=other_dataset_column(train))


def other_dataset_column(train: TextConfig) -> str:
    """The column another dataset than the training text's is read from: the training text's, except
    a pretokenized dataset's token column (held-out text may be text: the default "text" reads it,
    or, where there is no text, SAELens's token column)."""
    from training.pretokenized import TOKEN_COLUMNS

    return "text" if train.text_column in TOKEN_COLUMNS else train.text_column


def heldout_contexts(
    train: TextConfig, eval_text: TextConfig, tokenizer, n: int, *, train_docs: int | None = None,
    allow_overlap: bool = False, fix: str = "give held-out text with --eval-dataset PATH or --eval-split NAME, or "
                                            "pass --allow-eval-overlap true to measure it anyway",
) -> HeldOut:
    """The first `n` contexts of `eval_text`, with what was read and how much of it is training text.
    Raises ValueError/OSError when the eval text cannot be read, EvalOverlapError when it is all
    training text (unless allow_overlap), ending with `fix` (how to fix it, in the caller's flags)."""
    source = DocumentSource(eval_text)
    toks, end = open_packer(eval_text, tokenizer, source=source).take(n)
    if len(toks) == 0:
        raise ValueError(f"no contexts in split {eval_text.split!r} of {eval_text.dataset!r}")
    n_docs = end.doc + (1 if end.offset else 0)
    docs = _first_documents(source, n_docs)
    files = [str(p) for p in source.data.files]
    overlap = check_overlap(train, source.data.files, docs, train_docs)
    held = HeldOut(torch.from_numpy(np.ascontiguousarray(toks)).long(), eval_text, files, n_docs, overlap)
    if overlap.total and not allow_overlap:
        raise EvalOverlapError(
            f"the evaluation text ({_name(eval_text)}) is training text ({_name(train)}): {overlap.describe()}. "
            f"The figures (CE loss recovered, ...) would be measured on what the SAE was trained on; {fix}"
        )
    return held


def _name(text: TextConfig) -> str:
    return f"{text.dataset!r} split {text.split!r}"


def _first_documents(source: DocumentSource, n: int) -> list[str]:
    out: list[str] = []
    for chunk in source.chunks(0, chunk_docs=min(max(n, 1), 1024)):
        out.extend(chunk)
        if len(out) >= n:
            break
    return out[:n]


def _digest(doc) -> bytes | None:
    """A document's fingerprint: its stripped text, or a pretokenized row's ids; None when empty."""
    if isinstance(doc, str):
        data = doc.strip().encode("utf-8")
    else:
        data = np.asarray(doc, dtype=np.int64).tobytes()
    return hashlib.blake2b(data, digest_size=16).digest() if data else None


def check_overlap(train: TextConfig, eval_files, eval_docs: list[str], train_docs: int | None) -> OverlapReport:
    """How much of `eval_docs` (the eval text's first documents, read from `eval_files`) is training
    text (see the module doc)."""
    try:
        train_source = DocumentSource(train)
    except (ValueError, OSError) as e:
        return OverlapReport(False, note=f"the training data cannot be read here: {e}")
    if not train_source.data.is_local:
        return OverlapReport(False, note=f"the training data {train.dataset!r} is a hub dataset; its splits are "
                                         "taken as published")
    shared = _shared_files(train_source.data.files, eval_files)
    digests = [h for h in map(_digest, eval_docs) if h is not None]
    wanted = set(digests)
    found: set[bytes] = set()
    seen = 0
    for chunk in train_source.chunks(0, chunk_docs=1024):
        if train_docs is not None:
            chunk = chunk[: max(0, train_docs - seen)]
        seen += len(chunk)
        found.update(h for h in map(_digest, chunk) if h in wanted)
        if len(found) == len(wanted) or (train_docs is not None and seen >= train_docs):
            break
    in_training = sum(1 for h in digests if h in found)
    return OverlapReport(True, len(digests), in_training, seen, tuple(shared))


def _shared_files(train_files, eval_files) -> list[str]:
    by_size: dict[int, list[Path]] = {}
    for p in train_files:
        by_size.setdefault(p.stat().st_size, []).append(p)
    out = []
    for p in eval_files:
        same = [q for q in by_size.get(p.stat().st_size, []) if q == p or sha256_file(q) == sha256_file(p)]
        if same:
            out.append(str(p))
    return out
