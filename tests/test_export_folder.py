"""saes.export_folder: the record an export keeps of the files it wrote into a folder."""

import json

import pytest

from saes.export_folder import RECORD, ExportFolder


def _export(folder, files: dict[str, bytes]):
    done = ExportFolder(folder)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        done.wrote(folder / name, data)
    return done.finish()


def test_a_record_naming_files_outside_the_folder_removes_nothing_there(tmp_path):
    """A record edited (or damaged) to name ../x or an absolute path would have removed that file."""
    folder = tmp_path / "out"
    folder.mkdir()
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"keep")
    digest = __import__("hashlib").sha256(b"keep").hexdigest()
    (folder / RECORD).write_text(json.dumps({"files": {"../precious.txt": digest, str(outside): digest}}))
    assert _export(folder, {"a.txt": b"a"}) == [] and outside.read_bytes() == b"keep"


def test_a_damaged_record_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / RECORD).write_text("{not json")
    with pytest.raises(ValueError, match=f"{RECORD} is not the record an export writes; remove it"):
        ExportFolder(tmp_path)
