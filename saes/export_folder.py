"""The one rule of every export folder (delphi explanations, HTML dashboards, a Neuronpedia source):
FOLDER/saesteer_export.json records the files each kind of export wrote there (path under FOLDER
-> SHA-256), and the next export of that kind into FOLDER removes those it no longer writes, so a
smaller export leaves no stale page, batch or label that a browser, an upload or delphi would take
for current. A file the record does not list (the user's, another tool's), one that changed since
it was written (edited, or rewritten by another tool), or one another kind of export wrote (HTML
dashboards beside a delphi export) is never removed.

    folder = ExportFolder(out, "html")       # reads the earlier record (refuses a damaged one)
    path.write_bytes(data); folder.wrote(path, data)
    removed = folder.finish()                # removes the stale files, writes the new record
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

from saes.fileio import atomic_write_bytes, read_json, sha256_file

__all__ = ["ExportFolder", "RECORD"]

RECORD = "saesteer_export.json"


class ExportFolder:
    """The files one export of `kind` ('html', 'delphi', 'neuronpedia') writes into `folder`, and
    the record the earlier exports left there."""

    def __init__(self, folder: str | os.PathLike, kind: str) -> None:
        self.folder, self.kind = Path(folder), kind
        self.record = _read_record(self.folder / RECORD)  # kind -> {name: SHA-256}
        self.written: dict[str, str] = {}

    def wrote(self, path: str | os.PathLike, data: bytes | None = None) -> None:
        """Record a file this export wrote under the folder: `data` its bytes (None: read it)."""
        path = Path(path)
        name = path.relative_to(self.folder).as_posix()
        self.written[name] = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)

    def finish(self) -> list[Path]:
        """Remove the files the earlier export of this kind wrote that this one did not (unchanged
        since, and no other kind's), then record this export's; returns the files removed."""
        others = {name for kind, files in self.record.items() if kind != self.kind for name in files}
        removed = []
        for name, digest in sorted(self.record.get(self.kind, {}).items()):
            path = self.folder / name
            if name in self.written or name in others or not _inside(name):
                continue
            if path.is_file() and not path.is_symlink() and sha256_file(path) == digest:
                path.unlink()
                removed.append(path)
        self.record[self.kind] = self.written
        atomic_write_bytes(self.folder / RECORD, (json.dumps(self.record, indent=1, sort_keys=True) + "\n").encode())
        return removed


def _inside(name: str) -> bool:
    """A recorded name is a relative path that stays in the folder (a damaged record removes nothing outside it)."""
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and name not in ("", ".", RECORD)


def _read_record(path: Path) -> dict[str, dict[str, str]]:
    """kind -> {name: SHA-256} of the files the last export of each kind into a folder wrote ({} without a record)."""
    if not path.is_file():
        return {}
    try:
        record = read_json(path, "export record")
        if not isinstance(record, dict) or not all(isinstance(files, dict) for files in record.values()):
            raise TypeError
    except (ValueError, TypeError):
        raise ValueError(f"{path} is not the record an export writes; remove it (the next export writes it "
                         "again)") from None
    return {str(kind): {str(k): str(v) for k, v in files.items()} for kind, files in record.items()}
