"""Shard buffers and the writer thread of the activation cache.

`ShardBuffer` is preallocated storage for one shard; `fill_batch` copies one forward pass's
activations (kept positions only) and their token ids, positions and context indices straight
into it. `ShardWriter` writes filled buffers in order, in a background thread (double buffering:
the model fills one buffer while the other is written) or inline, each shard atomically with its
SHA-256s (whole file and per part, `training.shards`), and appends it to the build log
(`training.manifest`). A write failure (disk full, no permission, read-only disk, file size
limit) surfaces in the caller's thread as a `CacheWriteError` that says what to do; nothing
partial is left under a final name.

Shape key: B batch (contexts), L context length, D d_in, R rows (cached token positions).
"""

from __future__ import annotations

import errno
import queue
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saes.errors import SaesteerError
from saes.fileio import temp_target
from training.manifest import FORMAT_NAME, FORMAT_VERSION, ShardInfo, append_progress
from training.shards import write_safetensors_atomic


class CacheWriteError(SaesteerError, OSError):
    """Writing the cache failed (disk full, no permission, read-only disk, file size limit).

    Nothing partial is left under a final name; finished shards are kept, and re-running the same
    command once the cause is fixed resumes with them. `errno` is the system's error code."""

    def __init__(self, message: str, *, code: int, file: str | Path | None = None, hint: str | None = None) -> None:
        super().__init__(message, file=file, hint=hint)
        self.errno = code
        self.filename = self.file


class CacheNonFiniteError(SaesteerError, ValueError):
    """A shard's activations hold Inf or NaN: fp16's range overflowed (a real model's massive
    activations) or the model itself produced them. Nothing of that shard is written."""


def refuse_non_finite(buf: ShardBuffer, shard_file: str) -> None:
    """Refuse a filled shard buffer whose activations are not all finite, naming the hook and the fix:
    a model's outliers (BOS positions, a few massive dimensions of Gemma / Llama residual streams)
    exceed fp16's +-65,504 and were stored as Inf, and every later reader (training, eval, the
    feature store) would get them."""
    for hook, acts in buf.acts.items():
        rows = acts[:buf.rows]
        # one pass, under half of isfinite's CPU (Inf and NaN propagate into the sum)
        if bool(torch.isfinite(rows.sum(dtype=torch.float32))):
            continue
        n = int((~torch.isfinite(rows).all(dim=1)).sum())
        if n == 0:  # finite values whose float32 sum overflowed (a bf16 / fp32 cache has fp32's range)
            continue
        if acts.dtype == torch.float16:
            why = (f"values beyond fp16's range (+-65,504) became Inf: cache with --dtype bf16 (fp32's range) or "
                   f"fp32, into a new folder")
        else:
            why = f"the model produced non-finite activations ({acts.dtype}); check the model's weights"
        raise CacheNonFiniteError(f"{hook}: {n:,} of the {buf.rows:,} rows of {shard_file} hold Inf or NaN "
                                  f"activations: {why}")


class CacheDiskFullError(CacheWriteError):
    """The disk filled up (or a quota or file size limit was reached) while writing the cache."""


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(path: Path) -> int:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


class ShardBuffer:
    """Preallocated storage for one shard; the model's activations are copied straight in."""

    def __init__(self, d_in: dict[str, int], dtype: torch.dtype, contexts: int, L: int, pin: bool):
        cap = contexts * L
        self.acts = {h: torch.empty(cap, d, dtype=dtype, pin_memory=pin) for h, d in d_in.items()}
        self.token_ids = torch.empty(cap, dtype=torch.int32)
        self.positions = torch.empty(cap, dtype=torch.int32)
        self.seq_index = torch.empty(cap, dtype=torch.int64)
        self.context_tokens = torch.empty(contexts, L, dtype=torch.int32)
        self.rows = 0
        self.contexts = 0

    def tensors(self) -> dict[str, torch.Tensor]:
        r, c = self.rows, self.contexts
        out = {f"acts/{h}": a[:r] for h, a in self.acts.items()}
        out.update(token_ids=self.token_ids[:r], positions=self.positions[:r], seq_index=self.seq_index[:r],
                   context_tokens=self.context_tokens[:c])
        return out


def fill_batch(buf: ShardBuffer, acts: dict[str, torch.Tensor], tokens_BL: np.ndarray, excluded: np.ndarray,
                first_context: int, non_blocking: bool) -> None:
    """Copy one forward pass's activations (kept positions only) and metadata into `buf`."""
    B, L = tokens_BL.shape
    r, c = buf.rows, buf.contexts
    keep_BL = ~np.isin(tokens_BL, excluded) if len(excluded) else None
    if keep_BL is None or keep_BL.all():
        n = B * L
        for h, a in acts.items():
            buf.acts[h][r:r + n].view(B, L, -1).copy_(a, non_blocking=non_blocking)
        bi, pos = np.divmod(np.arange(n), L)
    elif not keep_BL[:, 0].any() and keep_BL[:, 1:].all():  # BOS first in every context
        n = B * (L - 1)
        for h, a in acts.items():
            buf.acts[h][r:r + n].view(B, L - 1, -1).copy_(a[:, 1:], non_blocking=non_blocking)
        bi, pos = np.divmod(np.arange(n), L - 1)
        pos = pos + 1
    else:
        bi, pos = np.nonzero(keep_BL)
        n = len(bi)
        idx = torch.from_numpy(bi * L + pos).to(next(iter(acts.values())).device)
        for h, a in acts.items():
            buf.acts[h][r:r + n].copy_(a.reshape(B * L, -1).index_select(0, idx), non_blocking=non_blocking)
    buf.token_ids.numpy()[r:r + n] = tokens_BL[bi, pos]
    buf.positions.numpy()[r:r + n] = pos
    buf.seq_index.numpy()[r:r + n] = first_context + c + bi
    buf.context_tokens.numpy()[c:c + B] = tokens_BL
    buf.rows += n
    buf.contexts += B


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _disk_full_message(out: Path, what: str) -> str:
    return (
        f"disk full while writing {what} in {out} ({fmt_bytes(free_bytes(out))} free). Nothing partial "
        "was kept: free some space (or choose another cache folder, CacheConfig.out) and re-run the same command "
        "to resume."
    )


def write_failure(out: Path, e: OSError) -> CacheWriteError | None:
    """The clear error for an OSError met while writing the cache in `out` (None: not a write failure).

    `e._what` (set by the shard writer) or `e.filename` names the file being written."""
    if isinstance(e, CacheWriteError):
        return e
    what = getattr(e, "_what", None)
    if what is None and e.filename and Path(e.filename) != out:
        what = temp_target(e.filename).name
    where = f"{what} in {out}" if what else f"the cache folder {out}"
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return CacheDiskFullError(_disk_full_message(out, what or "the cache folder"), code=errno.ENOSPC, file=out)
    if e.errno == errno.EFBIG:
        return CacheDiskFullError(
            f"the file size limit (ulimit -f) was reached while writing {where}. Nothing partial was kept: "
            "raise the limit and re-run the same command to resume.",
            code=errno.EFBIG, file=out)
    if e.errno in _NOT_WRITABLE:
        why = {errno.EROFS: "the file system is read-only", errno.EPERM: "the operation is not permitted (an "
               "immutable folder?)"}.get(e.errno, "permission denied")
        return CacheWriteError(
            f"cannot write {where}: {why}. Nothing partial was kept: make the folder writable (or choose "
            "another cache folder, CacheConfig.out) and re-run the same command to resume.", code=e.errno, file=out)
    return None


class ShardWriter:
    """Writes filled shard buffers in order, in a background thread (or inline), and appends
    each finished shard to the build log. Errors surface in the caller's thread."""

    def __init__(self, out: Path, buffers: list[ShardBuffer], threaded: bool):
        self.out = out
        self.free: queue.Queue = queue.Queue()
        for b in buffers:
            self.free.put(b)
        self.work: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.written = 0  # shards written so far
        self.threaded = threaded
        self._thread = threading.Thread(target=self._loop, name="cache-writer", daemon=True) if threaded else None
        if self._thread:
            self._thread.start()

    def _raise(self) -> None:
        e = self.error
        if e is None:
            return
        if isinstance(e, OSError):
            clear = write_failure(self.out, e)
            if clear is not None and clear is not e:
                raise clear from e
        raise e

    def acquire(self) -> ShardBuffer:
        while True:
            self._raise()
            try:
                return self.free.get(timeout=0.05)
            except queue.Empty:
                continue

    def submit(self, buf: ShardBuffer, info: dict[str, Any]) -> None:
        self._raise()
        if self._thread:
            self.work.put((buf, info))
        else:
            self._write(buf, info)
            self._raise()

    def _write(self, buf: ShardBuffer, info: dict[str, Any]) -> None:
        try:
            if self.error is None:
                refuse_non_finite(buf, info["file"])
                meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "shard_index": str(info["index"]),
                        "first_context": str(info["first_context"])}
                written = write_safetensors_atomic(self.out / info["file"], buf.tensors(), meta)
                shard = ShardInfo(bytes=written.nbytes, sha256=written.sha256, part_sha256=written.parts, rows=buf.rows,
                                  contexts=buf.contexts, **info)
                append_progress(self.out, shard)
                self.written += 1
        except BaseException as e:  # reported to the main thread
            e._what = info["file"]  # type: ignore[attr-defined]
            self.error = e
        finally:
            buf.rows = buf.contexts = 0
            self.free.put(buf)

    def _loop(self) -> None:
        while True:
            item = self.work.get()
            if item is None:
                return
            self._write(*item)

    def close(self, wait: bool = True) -> None:
        if self._thread:
            self.work.put(None)
            self._thread.join()
            self._thread = None
        if wait:
            self._raise()
