"""What an output path refuses before the work that fills it: the commands that write a folder (train,
eval, sweep) make it with its parents only once there is something to write, after the model loaded
or the whole run, where a path that cannot be a folder would fail with a bare OSError; those that
write one file (steer-eval's scorecard, label's --report) write it then too."""

from __future__ import annotations

import os
from pathlib import Path


def check_out_folder(out: str | os.PathLike, writes: str) -> None:
    """Refuse (ValueError) --out `out` that cannot become a folder: a file, or a path under a file or
    under a link to nothing (the first part of it that is there is no folder). `writes` says what the
    command writes into it ('the sweep writes ... into a folder')."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file; {writes}: give a folder")
    for part in (path, *path.parents):
        if os.path.lexists(part):
            if not part.is_dir():
                what = "a link to nothing" if part.is_symlink() and not part.exists() else "a file"
                raise ValueError(f"--out {out}: {part} is {what}, not a folder; {writes}: give a folder")
            return


def check_out_file(out: str | os.PathLike, flag: str, writes: str, example: str) -> Path:
    """`out` as a Path; refused (ValueError) when it cannot become the file `flag` names: a folder (`example`:
    a file name to suggest in it), or in a folder that does not exist. `writes` says what the file is
    ('the scorecard is a JSON file')."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"{flag} {out} is a folder; {writes}: give its name (e.g. {path / example})")
    if not path.parent.is_dir():
        raise ValueError(f"{flag} {out}: the folder {path.parent} does not exist")
    return path
