"""What an --out folder refuses before the work that fills it: the commands that write a folder (train,
eval, sweep) make it with its parents only once there is something to write, after the model loaded
or the whole run, where a path that cannot be a folder would fail with a bare OSError."""

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
