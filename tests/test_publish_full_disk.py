"""`saesteer features export` onto a full disk: a one-line error naming the file it was writing, no
traceback, no partial or temporary file left (a file size limit makes the writes fail as a full disk
does, EFBIG, portably; a tmpfs needs root). The SAE exporters' safetensors writes:
tests/test_publish_sparsify.py."""

from __future__ import annotations

import shutil

import pytest

from helpers.full_disk import file_size_limit


@pytest.mark.parametrize("fmt", ["neuronpedia", "html"])
def test_a_full_disk_during_an_export_is_one_line_naming_the_file(tmp_path, fmt):
    from helpers.real_cli import saesteer
    from helpers.web_app import shared_store

    store = tmp_path / "tiny.db"
    shutil.copy(shared_store().path, store)
    out = tmp_path / "out"
    with file_size_limit(40 * 1024):  # the store opens (its 32 KiB WAL index), the export does not fit
        r = saesteer("features", "export", store, out, "--format", fmt, "--source-set", "res-48", "--no-progress")
    assert r.rc != 0
    r.no_traceback()
    lines = [line for line in r.text.splitlines() if line.strip()]
    assert len(lines) <= 2 and "bug" not in r.text, r.text[-1500:]
    assert lines[0].removeprefix("error: ").startswith(str(out)) and "File too large" in r.text, r.text[-1500:]
    assert "file size limit" in r.text, r.text[-1500:]
    left = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in left if p.name.endswith(".tmp")]  # no temporary file left behind
    assert all(p.stat().st_size < 40 * 1024 for p in left)  # nor one cut off at the limit


def test_a_page_cut_off_by_a_full_disk_is_removed_and_named(tmp_path):
    from features.export import _write_page

    page = tmp_path / "f" / "00042.html"
    page.parent.mkdir()
    with file_size_limit(1024):
        with pytest.raises(OSError) as caught:
            _write_page(page, b"<p>" * 4096)
    assert caught.value.filename == str(page) and not page.exists()


def test_a_store_that_cannot_be_opened_on_a_full_disk_is_not_called_no_store(tmp_path):
    """SQLite writes `<store>-shm` (32 KiB) to read a WAL store: on a full disk opening fails with "disk
    I/O error", which was reported as "<store> is not a saesteer feature store"."""
    from helpers.real_cli import saesteer
    from helpers.web_app import shared_store

    store = tmp_path / "tiny.db"
    shutil.copy(shared_store().path, store)
    with file_size_limit(2048):
        r = saesteer("features", "export", store, tmp_path / "out", "--format", "neuronpedia", "--no-progress")
    assert r.rc != 0
    r.no_traceback()
    assert f"could not open {store}" in r.text and "free some disk space" in r.text, r.text[-1000:]
    assert "is not a saesteer feature store" not in r.text
