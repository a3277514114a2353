"""Build an activation cache on disk: text -> contexts -> one model pass per batch, reading one or
several hook points -> fp16/bf16/fp32 shards with token ids, positions and checksums.

    build_cache(model, TextConfig(...), CacheConfig(out=..., hooks=[...]))

The pieces, one module each: `training.plan` (checks and settings), `training.runner` (the
forward pass, stopped after the last needed hook), `training.estimate` (disk and time, the dry
run), `training.writer` (shard buffers and the writer thread), `training.shardset` (reading and
verifying a finished cache). This module is the build itself and its tokenizing prefetcher.

* Shards are written by a background thread while the model computes the next shard
  (double buffering), atomically (temp name, fsync, rename); see `training.shards`.
* Resume: re-running the same call after a crash continues from the first unfinished shard;
  the result is byte-identical to an uninterrupted run. A cache made with other settings is
  refused, naming each differing field. See `training.manifest` for the manifest fields.
* Disk space and a time estimate are logged before starting (`estimate_cache` alone is the
  dry run); a full disk stops with `CacheDiskFullError` and leaves no partial shard.

Shape key: N contexts of a shard, L context length.
"""

from __future__ import annotations

import errno
import queue
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from saes.fileio import TMP_SUFFIX
from saes.processing import processing_record
from training.cache_config import CacheConfig
from training.estimate import CacheEstimate, estimate_plan, fmt_secs
from training.manifest import (
    LOCK_NAME,
    MANIFEST_NAME,
    PROGRESS_NAME,
    Manifest,
    ShardInfo,
    lock_cache_dir,
    read_manifest,
    read_progress,
    shard_file_name,
    write_manifest,
)
from training.plan import CachePlan, identity_record, plan_cache, refuse_mismatch
from training.runner import ActivationRunner
from training.shards import DTYPES
from training.packing import ContextPacker, open_packer
from training.text import DocumentSource, TextConfig, TextPointer
from training.writer import CacheDiskFullError, ShardBuffer, ShardWriter, fill_batch, fmt_bytes, write_failure


class CacheResult(NamedTuple):
    path: Path
    manifest: Manifest
    shards_resumed: int  # shards found finished in the directory
    shards_written: int  # shards written by this call
    tokens_written: int  # model-input tokens processed by this call
    seconds: float  # whole call (checks, estimate, caching, manifest)
    seconds_caching: float  # the caching loop alone (tokenize, forward, copy, write)


def build_cache(
    model,
    text: TextConfig,
    cfg: CacheConfig,
    *,
    tokenizer=None,
    model_id: str | None = None,
    model_revision: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    writer_thread: bool = True,
    source: DocumentSource | None = None,
) -> CacheResult:
    """Build (or resume, or confirm) the activation cache `cfg.out` for `model` on `text`.

    `model_id` / `model_revision` are recorded in the manifest (default: `model.cfg.model_name`);
    `tokenizer` defaults to `model.tokenizer`; `source`: `text`'s dataset already opened
    (`training.text.source_as_read`), else opened here. Raises `CacheMismatchError` when `cfg.out` holds a
    cache with other settings, `UnknownHookError`, `ValueError` for bad input (missing text
    column, context longer than the model's), `CacheDiskFullError` on a full disk, `CacheWriteError`
    when `cfg.out` cannot be written (finished shards are kept: re-run to resume)."""
    try:
        return _build_cache(model, text, cfg, tokenizer=tokenizer, model_id=model_id, model_revision=model_revision,
                            progress=progress, log=log, writer_thread=writer_thread, source=source)
    except OSError as e:
        clear = write_failure(Path(cfg.out), e)
        if clear is None or clear is e:
            raise
        raise clear from e


def _build_cache(model, text: TextConfig, cfg: CacheConfig, *, tokenizer, model_id, model_revision, progress, log,
                 writer_thread, source) -> CacheResult:
    t_start = time.perf_counter()
    say = log or (lambda s: None)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    plan = plan_cache(model, text, cfg, tokenizer, model_id, model_revision, source)
    out = Path(cfg.out)
    existing = _existing_cache(out, plan)
    if existing is not None and existing.complete:
        say(f"{out}: cache already complete ({existing.total_rows:,} rows in {len(existing.shards)} shards); nothing to do")
        return CacheResult(out, existing, len(existing.shards), 0, 0, time.perf_counter() - t_start, 0.0)
    out.mkdir(parents=True, exist_ok=True)
    with lock_cache_dir(out):
        forward = _start_or_resume(plan, model, cfg, text.context_length, out, say)
        done = _finished_shards(out)
        # the estimate's rate probe first, alone: run beside the prefetcher's tokenizing, its small batches stalled
        # (a probe of 4 contexts measured 442 tokens/s on benchmarks/user_scale.py's model, 10x too slow)
        est = _check_estimate(plan, text, cfg, tokenizer, out, done, say)
        shards_in = _open_prefetcher(plan, text, cfg, tokenizer, done, writer_thread)
        try:
            t_loop = time.perf_counter()
            written = _run_build(plan, text, cfg, out, done, est, progress, writer_thread, shards_in)
            t_loop = time.perf_counter() - t_loop
        finally:
            shards_in.close()
        manifest = Manifest(plan.settings, complete=True, shards=read_progress(out), forward=forward,
                            model_identity=identity_record(model),
                            model_processing=processing_record(model), dataset_files=plan.dataset_files)
        write_manifest(out, manifest)
        (out / PROGRESS_NAME).unlink(missing_ok=True)
        (out / LOCK_NAME).unlink(missing_ok=True)
    secs = time.perf_counter() - t_start
    tot = manifest.totals()
    say(f"{out}: {tot['rows']:,} rows, {tot['shards']} shards, {fmt_bytes(tot['bytes'])} ({written[1]:,} tokens this "
        f"run, {fmt_secs(secs)})")
    return CacheResult(out, manifest, len(done), written[0], written[1], secs, t_loop)


def _existing_cache(out: Path, plan: CachePlan) -> Manifest | None:
    """The manifest of the cache already in `out` (refused when made with other settings), or None
    for a new or empty folder; a folder holding anything else is refused."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory; choose another cache folder (CacheConfig.out)")
    if (out / MANIFEST_NAME).is_file():
        existing = read_manifest(out)
        refuse_mismatch(out, existing, plan.settings)
        return existing
    if out.is_dir():
        others = [p.name for p in out.iterdir() if p.name not in (LOCK_NAME, PROGRESS_NAME)]
        if others:
            raise ValueError(f"{out} is not empty and holds no activation cache ({', '.join(sorted(others)[:5])} ...); "
                             f"choose an empty or new cache folder (CacheConfig.out)")
    return None


def _start_or_resume(plan: CachePlan, model, cfg: CacheConfig, L: int, out: Path, say: Callable[[str], None]) -> str:
    """Under the lock: write the first (incomplete) manifest, or check the one there again; returns
    the forward pass the build uses."""
    if not (out / MANIFEST_NAME).is_file():
        forward = plan.runner.forward_used(L)
        write_manifest(out, Manifest(plan.settings, complete=False, shards=[], forward=forward,
                                     model_identity=identity_record(model), model_processing=processing_record(model),
                                     dataset_files=plan.dataset_files))
        return forward
    previous = read_manifest(out)
    refuse_mismatch(out, previous, plan.settings)
    return _resume_forward(plan.runner, cfg, L, previous.forward, out, say)


def _finished_shards(out: Path) -> list[ShardInfo]:
    """The shards the build log vouches for; temporary files and unvouched shards (a crash) are removed."""
    for p in out.glob("*" + TMP_SUFFIX):
        p.unlink()
    done = read_progress(out)
    for p in out.glob("shard_*.safetensors"):
        m = re.match(r"^shard_(\d+)\.safetensors$", p.name)
        if m and int(m.group(1)) >= len(done):
            p.unlink()
    return done


def _check_estimate(plan: CachePlan, text: TextConfig, cfg: CacheConfig, tokenizer, out: Path,
                    done: list[ShardInfo], say: Callable[[str], None]) -> CacheEstimate:
    """Log the estimate; refuse to start when the disk is too small for it (`CacheConfig.check_disk`)."""
    contexts_done = sum(s.contexts for s in done)
    est = estimate_plan(plan, text, cfg, tokenizer, out, contexts_done)
    say(est.describe())
    note = plan.special_tokens.note() if plan.special_tokens is not None else None
    if note is not None:  # what auto decided, from the first documents, and the flag for the other reading
        say(f"  text:    {note}")
    elif not plan.settings.get("literal_special_tokens", True) and not plan.source.pretokenized:
        say("  text:    special tokens written out in the documents are matched (read as the tokens they name), as "
            f"{'the cache records' if text.special_tokens == 'auto' else '--special-tokens match says'}")
    if done:
        say(f"  resuming after {len(done)} finished shard(s) ({contexts_done:,} contexts)")
    if cfg.check_disk and est.bytes_needed is not None and est.bytes_needed > est.bytes_free:
        raise CacheDiskFullError(
            f"not enough disk space in {out}: the cache needs ~{fmt_bytes(est.bytes_needed)}, "
            f"{fmt_bytes(est.bytes_free)} free. Free space, choose another cache folder (CacheConfig.out), lower "
            f"CacheConfig.max_tokens, or set CacheConfig.check_disk false to try anyway.", code=errno.ENOSPC, file=out)
    return est


def _resume_forward(runner: ActivationRunner, cfg: CacheConfig, L: int, previous: str | None, out: Path,
                    say: Callable[[str], None]) -> str:
    """The forward for a resumed build: the one its first shards were made with where possible,
    so that the finished cache is byte-identical to an uninterrupted build."""
    now = runner.forward_used(L)
    if previous is None:  # a manifest from before the fused forward existed: TL made its shards
        previous = "transformer_lens"
    if previous == now:
        return now
    if cfg.forward == "auto" and previous == "transformer_lens":
        runner.pin_forward(previous, L)
        say(f"  resuming with the {previous} forward that made the shards already in {out}")
        return previous
    warnings.warn(
        f"the shards already in {out} were made with the {previous} forward; this run uses the {now} forward "
        f"({runner.fast_problem or f'CacheConfig.forward {cfg.forward}'}), so new shards agree with them up to "
        "floating-point rounding, not bit for bit", RuntimeWarning, stacklevel=4)
    return now


class Prefetcher:
    """Packs the next shards' contexts in a background thread (tokenization overlaps the model).

    Yields (tokens [N, L], end pointer) per shard in order; the last one may be short (data ran
    out) and an empty one ends the stream. Errors are re-raised in the consumer."""

    def __init__(self, packer: ContextPacker, contexts_per_shard: int, first_context: int, target: int | None,
                 threaded: bool = True):
        self.packer = packer
        self.C = contexts_per_shard
        self.ctx = first_context
        self.target = target
        self.q: queue.Queue = queue.Queue(maxsize=1)
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cache-tokenizer", daemon=True) if threaded else None
        if self._thread:
            self._thread.start()

    def _next(self) -> tuple[np.ndarray, TextPointer, int] | None:
        want = self.C if self.target is None else min(self.C, self.target - self.ctx)
        if want <= 0:
            return None
        toks, end = self.packer.take(want)
        if len(toks) == 0:
            return None
        self.ctx += len(toks)
        return toks, end, want

    def _loop(self) -> None:
        try:
            while not self.stop.is_set():
                item = self._next()
                self._put(item)
                if item is None or len(item[0]) < item[2]:
                    self._put(None)
                    return
        except BaseException as e:  # handed to the consumer
            self._put(e)

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def __iter__(self):
        while True:
            if self._thread:
                item = self.q.get()
            else:
                item = self._next()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                return
            yield item[0], item[1]
            if len(item[0]) < item[2]:
                return  # the data ran out

    def close(self) -> None:
        self.stop.set()
        if self._thread:
            self._thread.join()


def _open_prefetcher(plan: CachePlan, text: TextConfig, cfg: CacheConfig, tokenizer, done: list[ShardInfo],
                     threaded: bool) -> Prefetcher:
    """The prefetcher of the contexts after the finished shards `done`."""
    start = TextPointer(*done[-1].text_end) if done else TextPointer(0, 0)
    ctx = sum(s.contexts for s in done)
    target = None if cfg.max_tokens is None else cfg.max_tokens // text.context_length
    packer = open_packer(text, tokenizer, start, plan.source, eos_next_bos=plan.settings.get("eos_is_next_bos"),
                         literal_specials=plan.settings.get("literal_special_tokens", True))
    return Prefetcher(packer, int(plan.settings["shard_contexts"]), ctx, target, threaded=threaded)


def _run_build(plan: CachePlan, text: TextConfig, cfg: CacheConfig, out: Path, done: list[ShardInfo],
               est: CacheEstimate, progress: bool, threaded: bool, shards_in: Prefetcher) -> tuple[int, int]:
    """The caching loop: forward, copy into a shard buffer, hand it to the writer; returns (shards
    written, model-input tokens run)."""
    from tqdm.auto import tqdm

    L = text.context_length
    C = int(plan.settings["shard_contexts"])
    start = TextPointer(*done[-1].text_end) if done else TextPointer(0, 0)
    ctx = sum(s.contexts for s in done)
    device = plan.runner.device
    pin = device.type == "cuda"
    dtype = DTYPES[cfg.dtype]
    buffers = [ShardBuffer(plan.d_in, dtype, C, L, pin) for _ in range(2 if threaded else 1)]
    writer = ShardWriter(out, buffers, threaded=threaded)
    bar = tqdm(total=est.tokens, initial=ctx * L, unit="tok", unit_scale=True, desc="caching", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    tokens_run = 0
    index = len(done)
    ok = False
    try:
        for tokens_NL, end in shards_in:
            m = len(tokens_NL)
            buf = writer.acquire()
            for b in range(0, m, cfg.batch_size):
                tb = tokens_NL[b:b + cfg.batch_size]
                acts = plan.runner.run(torch.from_numpy(tb))
                fill_batch(buf, acts, tb, plan.excluded, ctx, non_blocking=pin)
                bar.update(tb.size)
                tokens_run += tb.size
            if pin:
                torch.cuda.synchronize(device)
            writer.submit(buf, {"index": index, "file": shard_file_name(index), "first_context": ctx,
                                "text_start": tuple(start), "text_end": tuple(end)})
            index += 1
            ctx += m
            start = end
        ok = True
        if bar.total != bar.n:  # an estimated total (streamed data): end on the tokens actually run
            bar.total = bar.n
            bar.refresh()
    finally:
        shards_in.close()  # (also closed by the caller; closing twice is fine)
        bar.close()
        writer.close(wait=ok)
    return writer.written, tokens_run
