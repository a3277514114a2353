"""Files written and read the way Windows and macOS need them: no POSIX-only calls in the write
path, text files read as UTF-8 whatever the locale, users' files with a BOM or in UTF-16."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest


def test_atomic_writes_work_without_os_fchmod(tmp_path: Path, monkeypatch) -> None:
    """os.fchmod exists on Windows only from Python 3.13: every atomic write (SAE folders,
    manifests, stores' sidecars) and the toy world's files must not need it."""
    import toyworld
    from saes.fileio import atomic_write_bytes, atomic_write_json, new_file_mode
    from toyworld.corpus import CorpusConfig, write_corpus
    from toyworld.model import save_model

    monkeypatch.delattr(os, "fchmod")
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_json(tmp_path / "b.json", {"a": "é"})
    assert (tmp_path / "a.bin").read_bytes() == b"x"
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == new_file_mode(tmp_path / "new")
    write_corpus(CorpusConfig(out=str(tmp_path / "corpus"), train_docs=3, validation_docs=1, test_docs=1),
                 progress=False)
    assert len((tmp_path / "corpus" / "train.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    save_model(toyworld.load_model(device="cpu"), tmp_path / "model")  # also the tokenizer's JSON
    assert {"model.safetensors", "config.json"} <= {p.name for p in (tmp_path / "model").iterdir()}
