"""What a local checkpoint directory holds, as `saes.identity` compares it: the SHA-256 of its weight
files (a 'local' model identity's `weights_sha256`: a directory copied elsewhere has the same one), and
the hub repo an HF-cache snapshot directory is a copy of. Standard library only."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path, PurePath

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
FULL_HASH_LIMIT_BYTES = 4 << 30  # above this, local weights get a sampled hash (see hash_files)


def hash_files(paths: list[Path]) -> str:
    """SHA-256 over (name, size, content) of files; above FULL_HASH_LIMIT_BYTES in total, over
    (name, size, first and last 16 MiB) instead, marked with a 'sampled-' prefix."""
    total = sum(p.stat().st_size for p in paths)
    sampled = total > FULL_HASH_LIMIT_BYTES
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        size = p.stat().st_size
        h.update(f"{p.name}\0{size}\0".encode())
        with open(p, "rb") as f:
            if not sampled:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(f.read(16 << 20))
                f.seek(max(0, size - (16 << 20)))
                h.update(f.read())
    return ("sampled-" if sampled else "") + h.hexdigest()


def local_weights_sha256(directory: str | os.PathLike) -> str | None:
    """SHA-256 of the weight files of a local checkpoint directory (what a 'local' identity records).
    Read once per process while the files keep their size and modification time: every steering
    request's model check (`saes.identity.check_named_model`) asks it again, and a full hash reads
    up to FULL_HASH_LIMIT_BYTES."""
    files = [p for p in Path(directory).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    if not files:
        return None
    return _hash_unchanged(tuple((str(p), st.st_size, st.st_mtime_ns) for p in files
                                 for st in [p.stat()]))


@functools.lru_cache(maxsize=16)
def _hash_unchanged(files: tuple[tuple[str, int, int], ...]) -> str:
    """`hash_files` of the files (path, size, mtime_ns) name; cached on all three."""
    return hash_files([Path(path) for path, _, _ in files])


def hub_snapshot_repo(path: str | os.PathLike) -> str | None:
    """The hub repo ('ORG/NAME', or a legacy 'NAME') whose checkpoint an HF-cache snapshot directory
    (`.../models--ORG--NAME/snapshots/COMMIT`, as `snapshot_download` returns it) holds; None elsewhere."""
    parts = PurePath(os.path.expanduser(str(path))).parts
    return cache_folder_repo(parts[-3]) if len(parts) >= 3 and parts[-2] == "snapshots" else None


def cache_folder_repo(name: str) -> str | None:
    """The hub repo whose files an HF-cache folder named `name` holds ('models--ORG--NAME' -> 'ORG/NAME',
    a legacy 'models--NAME' -> 'NAME': huggingface_hub writes a repo id's '/' as '--'); None for another
    name. The one reading of the cache's layout (`saes.formats.base.snapshot_place` reads it too)."""
    if not name.startswith("models--"):
        return None
    return name.removeprefix("models--").replace("--", "/") or None
