"""Local datasets and their splits, named the way HF `datasets` names them.

A local `--dataset` is one of:
  * a file: one split, "train" (what `load_dataset("json", data_files=FILE)` calls it);
  * a folder: its splits found by HF's own rules (`datasets.data_files.get_data_patterns`): files or
    sub-folders named train* / training*, validation* / valid* / val* / dev*, test* / testing* /
    eval* / evaluation*, or data/<split>-00000-of-00001.* shards. A folder without split names is
    one split, "train", of all its data files (sub-folders included);
  * a mapping "train=PATH,validation=PATH" (HF's `data_files={"train": ..., "validation": ...}`);
    each PATH is a file, a folder (all its data files) or a glob;
  * a folder written by `DatasetDict.save_to_disk` (dataset_dict.json: one split per sub-folder, its
    .arrow files) or `Dataset.save_to_disk` (state.json: the split "train", like a single file). Only
    the .arrow files are data: the JSON files beside them describe the copy and were once read as
    documents.

Every split holds the data files of one kind (.json/.jsonl, .parquet, .csv or .txt), sorted by path.
`datasets` is imported lazily (it is slow to import).
"""

from __future__ import annotations

import os

import re
from pathlib import Path

__all__ = ["DATA_FILE_BUILDERS", "DATA_SUFFIXES", "looks_local", "parse_mapping", "mapping_spec", "local_splits", "describe_splits"]

# a data file's suffix -> the HF datasets builder that reads it (.arrow: the files of a save_to_disk folder)
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text",
                      ".arrow": "arrow"}
DATA_SUFFIXES = tuple(DATA_FILE_BUILDERS)
_SPLIT_NAME = re.compile(r"\w+(\.\w+)*")  # HF's rule for split names


def parse_mapping(spec: str) -> dict[str, list[str]] | None:
    """{"train": [PATH, ...], ...} for "train=PATH,validation=PATH" (a split named twice gets both
    paths); None when `spec` is not a mapping."""
    if "=" not in spec or Path(spec).expanduser().exists():
        return None
    out: dict[str, list[str]] = {}
    for part in spec.split(","):
        name, sep, path = part.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not path or not _SPLIT_NAME.fullmatch(name):
            raise ValueError(f"dataset {spec!r}: {part.strip()!r} is not SPLIT=PATH; write e.g. "
                             f"train=data/train.jsonl,validation=data/valid.jsonl")
        out.setdefault(name, []).append(path)
    return out


def mapping_spec(splits: dict[str, list[str]]) -> str:
    """The `--dataset` string of a split -> files mapping (inverse of `parse_mapping`)."""
    return ",".join(f"{name}={path}" for name, paths in splits.items() for path in paths)


def looks_local(spec: str) -> bool:
    """Whether `spec` names local data (an existing path, a path-like string, or a mapping)."""
    path = Path(spec).expanduser()
    return (path.exists() or spec.startswith((".", "/", "~")) or path.suffix in DATA_SUFFIXES
            or parse_mapping(spec) is not None)


def local_splits(spec: str) -> dict[str, list[Path]]:
    """Split name -> its data files (absolute, sorted), for a local file, folder or mapping."""
    mapping = parse_mapping(spec)
    if mapping is not None:
        return {name: sorted({f for p in paths for f in _files_of(p, spec)}) for name, paths in mapping.items()}
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset {spec!r}: no such file or directory")
    if path.is_file():
        return {"train": [absolute(path)]}
    saved = _saved_to_disk(path)
    if saved is not None:
        return saved
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(str(path.resolve()))
        found = DataFilesDict.from_local_or_remote(patterns, base_path=str(path.resolve()),
                                                   allowed_extensions=list(DATA_SUFFIXES))
    except FileNotFoundError:
        raise ValueError(f"dataset directory {path} holds no {'/'.join(DATA_SUFFIXES)} files") from None
    splits = {str(name): sorted(absolute(f) for f in files) for name, files in found.items()}
    splits = {name: files for name, files in splits.items() if files}
    if not splits:
        raise ValueError(f"dataset directory {path} holds no {'/'.join(DATA_SUFFIXES)} files")
    return splits


def _saved_to_disk(path: Path) -> dict[str, list[Path]] | None:
    """The splits of a `save_to_disk` folder (None for any other folder): their .arrow files in the
    order state.json lists them (the rows' order)."""
    import json

    def arrow_files(folder: Path) -> list[Path]:
        try:
            state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            names = [f["filename"] for f in state["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"dataset folder {folder} looks written by save_to_disk but its state.json is "
                             f"unreadable ({e}); save it again") from None
        return [absolute(folder / n) for n in names]

    if (path / "dataset_dict.json").is_file():
        try:
            names = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"dataset folder {path}: dataset_dict.json is unreadable ({e}); save it again") from None
        return {str(name): arrow_files(path / name) for name in names}
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return {"train": arrow_files(path)}
    return None


def _files_of(path_or_glob: str, spec: str) -> list[Path]:
    from datasets.data_files import resolve_pattern

    path = Path(path_or_glob).expanduser()
    if path.is_file():
        return [absolute(path)]
    saved = _saved_to_disk(path) if path.is_dir() else None
    if saved is not None:  # its .arrow files, not its JSON bookkeeping
        if len(saved) > 1:
            raise ValueError(f"dataset {spec!r}: {path_or_glob} holds the splits {', '.join(saved)}; name one split's "
                             f"folder, or give the folder itself as --dataset and pick with --split")
        return next(iter(saved.values()))
    pattern, base = ("**", str(path.resolve())) if path.is_dir() else (str(path), str(Path.cwd()))
    try:
        files = resolve_pattern(pattern, base_path=base, allowed_extensions=list(DATA_SUFFIXES))
    except FileNotFoundError:
        raise FileNotFoundError(f"dataset {spec!r}: {path_or_glob!r} matches no {'/'.join(DATA_SUFFIXES)} file") from None
    return sorted(absolute(f) for f in files)


def absolute(path) -> Path:
    """`path` made absolute without following symlinks: a data file's name and suffix are its own even
    when it links elsewhere (the HF hub cache's snapshot files link to content-named blobs)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def describe_splits(splits: dict[str, list[Path]]) -> str:
    """"train (train.jsonl), validation (2 files)" for messages."""
    def files(fs: list[Path]) -> str:
        return fs[0].name if len(fs) == 1 else f"{len(fs)} files"

    return ", ".join(f"{name} ({files(fs)})" for name, fs in splits.items())
