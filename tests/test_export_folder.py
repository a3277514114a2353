"""saes.export_folder: the record each kind of export keeps of the files it wrote into a folder.
(The exports themselves, through the CLI: test_features_export.py, test_features_publish.py,
test_user_paths12.py's delphi export.)"""

import hashlib
import json

import pytest

from saes.export_folder import RECORD, ExportFolder


def _export(folder, kind: str, files: dict[str, bytes]) -> list:
    done = ExportFolder(folder, kind)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        done.wrote(folder / name, data)
    return done.finish()


def test_one_kind_of_export_never_removes_another_kinds_files(tmp_path):
    """Dashboards exported into the folder of a delphi export removed its explanations (one record
    for the folder: the html export had not written them)."""
    _export(tmp_path, "delphi", {"explanations/layers.2_latent0.txt": b'"ships"', "explanations/layers.2_latent1.txt": b'"x"'})
    assert _export(tmp_path, "html", {"index.html": b"<h1>all</h1>", "f/00000.html": b"0", "f/00001.html": b"1"}) == []
    assert _export(tmp_path, "html", {"index.html": b"<h1>one</h1>", "f/00000.html": b"0"}) == [tmp_path / "f" / "00001.html"]
    assert sorted(p.name for p in (tmp_path / "explanations").iterdir()) == ["layers.2_latent0.txt", "layers.2_latent1.txt"]
    assert _export(tmp_path, "delphi", {"explanations/layers.2_latent0.txt": b'"ships"'}) == [
        tmp_path / "explanations" / "layers.2_latent1.txt"]
    assert (tmp_path / "f" / "00000.html").is_file()


def test_a_record_naming_files_outside_the_folder_removes_nothing_there(tmp_path):
    """A record edited (or damaged) to name ../x or an absolute path would have removed that file."""
    folder = tmp_path / "out"
    folder.mkdir()
    outside = tmp_path / "precious.txt"
    outside.write_bytes("keep — ☕".encode())
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    (folder / RECORD).write_text(json.dumps({"html": {"../precious.txt": digest, str(outside): digest}}))
    assert _export(folder, "html", {"a.txt": b"a"}) == [] and outside.is_file()


@pytest.mark.parametrize("text", ["{not json", "[]", '{"html": ["a.txt"]}'])
def test_a_damaged_record_is_refused_before_anything_is_written(tmp_path, text):
    (tmp_path / RECORD).write_text(text)
    with pytest.raises(ValueError, match=f"{RECORD} is not the record an export writes; remove it"):
        ExportFolder(tmp_path, "html")
