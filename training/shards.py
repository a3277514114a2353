"""Shard files of the activation cache: plain safetensors files, written atomically with their
SHA-256 computed while writing, and read back region by region without copies.

A shard `shard_000123.safetensors` holds (R rows, C contexts, L context length, D d_in):
  * `acts/<hook name>`  [R, D]  fp16 / bf16 / fp32 activations, one tensor per cached hook
  * `token_ids`         [R]     int32   the token at each row's position
  * `positions`         [R]     int32   position of the row within its context (0..L-1)
  * `seq_index`         [R]     int64   global index of the row's context in the cache
  * `context_tokens`    [C, L]  int32   the full model input of each context in the shard
Rows are in context order, then position order; positions excluded by the cache's
`exclude_tokens` setting (e.g. BOS) have no row. Any safetensors reader opens these files;
`safetensors.torch.load_file(path)` gives all tensors.

Writing: `saes.fileio.atomic_open` (a temporary `.<final name>.XXXX.tmp` in the same directory,
flushed and fsynced, renamed to the final name, the directory fsynced). A shard is therefore
under its final name only when complete. Any error (e.g. ENOSPC) removes the temporary file.

Checksums: the SHA-256 of the whole file, and one per part (`HEADER_PART`: the 8 length bytes and
the JSON header; then each tensor's bytes), computed while writing. The parts cover every byte, so
a reader of one hook checks the header, its hook's activations and the row tensors
(`part_sha256`) without reading the other hooks' activations.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import BinaryIO, NamedTuple, Sequence

import torch

from saes.errors import SaesteerError
from saes.fileio import atomic_open

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_ST_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
_ST_TYPES = {v: k for k, v in _ST_NAMES.items()}
_CHUNK = 8 << 20
_MAX_HEADER = 100 << 20


class ShardCorruptError(SaesteerError, ValueError):
    """A shard's bytes do not match the manifest (checksum, size or header)."""


HEADER_PART = "header"  # the part name of the length bytes and the JSON header
WHOLE_FILE = "file"  # part_sha256's key for the SHA-256 of the whole file (whole_file=True)


class WrittenFile(NamedTuple):
    sha256: str
    nbytes: int
    parts: dict[str, str]  # part name (HEADER_PART or a tensor's) -> SHA-256 of its bytes


def _write_all(f: BinaryIO, data: memoryview) -> None:
    """Write `data` fully. A separate function so tests can inject disk errors (ENOSPC)."""
    f.write(data)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy (what a shard holds and its SHA-256s read)."""
    assert t.is_contiguous() and t.device.type == "cpu"
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(-1).view(torch.uint8).numpy())


def _header(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[bytes, list[str]]:
    # wider dtypes first keeps every tensor naturally aligned (header is padded to 8 bytes)
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    head: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    off = 0
    for k in order:
        t = tensors[k]
        n = t.numel() * t.element_size()
        head[k] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, order


def write_safetensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> WrittenFile:
    """Write `tensors` as a safetensors file at `path` atomically (`saes.fileio.atomic_open`);
    returns its SHA-256, size and the SHA-256 of each part. The bytes are deterministic for given
    tensors and metadata."""
    head, order = _header(tensors, metadata or {})
    h = hashlib.sha256()
    parts = {}
    nbytes = 0
    with atomic_open(path) as f:
        for name, mv in [(HEADER_PART, memoryview(head))] + [(k, tensor_bytes(tensors[k])) for k in order]:
            hp = hashlib.sha256()
            for i in range(0, len(mv), _CHUNK):
                piece = mv[i:i + _CHUNK]
                h.update(piece)
                hp.update(piece)
                _write_all(f, piece)
                nbytes += len(piece)
            parts[name] = hp.hexdigest()
    return WrittenFile(h.hexdigest(), nbytes, parts)


class TensorEntry(NamedTuple):
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute file offset
    nbytes: int


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse a safetensors header: {name: TensorEntry}, metadata. Validates offsets and sizes."""
    path = Path(path)
    with open(path, "rb") as f:
        return _parse_header(f, path.name)


def _header_bytes(f: BinaryIO, name: str) -> bytes:
    """The length bytes and the JSON header of the open safetensors file `f` (HEADER_PART)."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    first = f.read(8)
    if len(first) < 8:
        raise ShardCorruptError(f"{name}: too short to be a safetensors file")
    n = int.from_bytes(first, "little")
    if n > min(_MAX_HEADER, size - 8):
        raise ShardCorruptError(f"{name}: bad safetensors header length {n}")
    return first + f.read(n)


def _parse_header(f: BinaryIO, name: str, raw: bytes | None = None) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    raw = _header_bytes(f, name) if raw is None else raw
    size = os.fstat(f.fileno()).st_size
    try:
        head = json.loads(raw[8:])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardCorruptError(f"{name}: unreadable safetensors header ({e})") from None
    if not isinstance(head, dict):
        raise ShardCorruptError(f"{name}: unreadable safetensors header (not a JSON object)")
    meta = head.pop("__metadata__", {}) or {}
    out: dict[str, TensorEntry] = {}
    base = len(raw)
    for k, v in head.items():
        try:
            dt = _ST_TYPES[v["dtype"]]
            shape = tuple(int(s) for s in v["shape"])
            b, e = (int(x) for x in v["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ShardCorruptError(f"{name}: bad header entry for {k!r}") from None
        numel = 1
        for s in shape:
            numel *= s
        itemsize = torch.empty((), dtype=dt).element_size()
        if b < 0 or e - b != numel * itemsize or base + e > size:
            raise ShardCorruptError(f"{name}: header entry {k!r} does not fit the file")
        out[k] = TensorEntry(dt, shape, base + b, e - b)
    return out, meta


def part_sha256(path: Path, names: Sequence[str], *, whole_file: bool = False) -> dict[str, str]:
    """The SHA-256 of the header part (HEADER_PART) and of each tensor in `names` that the header
    lists, each hashed over its own bytes only: what a reader of those tensors checks against the
    manifest. A header that cannot be parsed gives its own hash only (the comparison then fails).

    whole_file: also the whole file's SHA-256 (under WHOLE_FILE), in the same pass: the file is
    then read once from start to end and each part's bytes are split off by the header's offsets.
    Otherwise only the parts' bytes are read (not the tensors left out of `names`)."""
    path = Path(path)
    with open(path, "rb", buffering=0) as f:
        try:
            raw = _header_bytes(f, path.name)
        except ShardCorruptError:  # a damaged length: hash what it is
            f.seek(0)
            raw = f.read(8)
        regions = {HEADER_PART: (0, len(raw))}
        try:
            entries, _ = _parse_header(f, path.name, raw)
        except ShardCorruptError:
            entries = {}
        regions |= {k: (entries[k].start, entries[k].start + entries[k].nbytes) for k in names if k in entries}
        spans = [(0, os.fstat(f.fileno()).st_size)] if whole_file else _merged(regions.values())
        hashes = {k: hashlib.sha256() for k in regions}
        whole = hashlib.sha256()
        buf = bytearray(max(1, min(_CHUNK, max(b - a for a, b in spans))))
        mv = memoryview(buf)
        for a, b in spans:
            f.seek(a)
            while a < b:
                n = f.readinto(mv[:min(b - a, len(buf))])
                if not n:
                    break
                if whole_file:
                    whole.update(mv[:n])
                for k, (start, end) in regions.items():  # the part of this chunk in each region
                    lo, hi = max(start, a), min(end, a + n)
                    if lo < hi:
                        hashes[k].update(mv[lo - a:hi - a])
                a += n
    out = {k: h.hexdigest() for k, h in hashes.items()}
    return out | {WHOLE_FILE: whole.hexdigest()} if whole_file else out


def _merged(regions) -> list[tuple[int, int]]:
    """The byte ranges [start, end) covering `regions`, overlaps joined (each byte read once)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(regions):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out or [(0, 0)]


def read_into(f: BinaryIO, entry: TensorEntry, out: torch.Tensor, first: int = 0, count: int | None = None) -> None:
    """Read rows [first, first+count) of the tensor `entry` straight into contiguous `out`."""
    row_bytes = entry.nbytes // entry.shape[0] if entry.shape and entry.shape[0] else 0
    count = entry.shape[0] - first if count is None else count
    want = row_bytes * count
    dst = tensor_bytes(out)
    assert len(dst) == want, (len(dst), want)
    f.seek(entry.start + first * row_bytes)
    got = 0
    while got < want:
        n = f.readinto(dst[got:])
        if not n:
            raise ShardCorruptError(f"{getattr(f, 'name', '?')}: file ends early")
        got += n


def load_tensors(path: Path, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Load some (default all) tensors of a safetensors file into fresh CPU tensors."""
    entries, _ = read_header(path)
    keys = list(entries) if keys is None else keys
    missing = [k for k in keys if k not in entries]
    if missing:
        raise KeyError(f"{Path(path).name} has no tensor {missing[0]!r}; it has {', '.join(sorted(entries))}")
    with open(path, "rb", buffering=0) as f:
        return read_tensors(f, [entries[k] for k in keys], keys)


def read_tensors(f: BinaryIO, entries: list[TensorEntry], names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors `entries` of the open file `f`, in fresh CPU tensors, under `names`."""
    out = {}
    for name, e in zip(names, entries):
        t = torch.empty(e.shape, dtype=e.dtype)
        if t.numel():
            read_into(f, e, t)
        out[name] = t
    return out
