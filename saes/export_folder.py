"""The one rule of every export folder (delphi explanations, HTML dashboards, a Neuronpedia source):
FOLDER/saesteer_export.json records the files an export wrote there (path under FOLDER -> SHA-256),
and the next export into FOLDER removes those it no longer writes, so a smaller export leaves no
stale page, batch or label that a browser, an upload or delphi would take for current. A file the
record does not list (the user's, another tool's) or that changed since it was written (edited,
or rewritten by another tool) is never removed.

    folder = ExportFolder(out)               # reads the earlier record (refuses a damaged one)
    path.write_bytes(data); folder.wrote(path, data)
    removed = folder.finish()                # removes the stale files, writes the new record
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

from saes.fileio import atomic_write_bytes, sha256_file

__all__ = ["ExportFolder", "RECORD"]

RECORD = "saesteer_export.json"


class ExportFolder:
    """The files one export writes into `folder`, and the record the earlier export left there."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.earlier = _read_record(self.folder / RECORD)
        self.written: dict[str, str] = {}

    def wrote(self, path: str | os.PathLike, data: bytes | None = None) -> None:
        """Record a file this export wrote under the folder: `data` its bytes (None: read it)."""
        path = Path(path)
        name = path.relative_to(self.folder).as_posix()
        self.written[name] = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)

    def finish(self) -> list[Path]:
        """Remove the files the earlier export wrote that this one did not (unchanged since), then
        record this export's; returns the files removed."""
        removed = []
        for name, digest in sorted(self.earlier.items()):
            path = self.folder / name
            if name not in self.written and _inside(name) and path.is_file() and not path.is_symlink() \
                    and sha256_file(path) == digest:
                path.unlink()
                removed.append(path)
        record = json.dumps({"files": self.written}, indent=1, sort_keys=True) + "\n"
        atomic_write_bytes(self.folder / RECORD, record.encode())
        return removed


def _inside(name: str) -> bool:
    """A recorded name is a relative path that stays in the folder (a damaged record removes nothing outside it)."""
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and name not in ("", ".", RECORD)


def _read_record(path: Path) -> dict[str, str]:
    """name -> SHA-256 of the files the last export into a folder wrote ({} without a record)."""
    if not path.is_file():
        return {}
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not the record an export writes; remove it (the next export writes it "
                         "again)") from None
    return {str(k): str(v) for k, v in files.items()}
