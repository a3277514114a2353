"""What a cache build will cost, before it starts (the dry run): tokens, shards, disk and time.

    est = estimate_cache(model, text, cfg)      # validates everything a build would; writes nothing
    print(est.describe())

The time comes from a probe of the build's own loop (`measure_rate`): real contexts at the
build's batch size (smaller when one batch takes a while) through the forward it will use,
copied into a shard buffer, and the shards' SHA-256s on that buffer (`caching_time` adds them up).
The build logs the same estimate before it starts; the dry run adds its own start-up (model load,
checks, the probe), which the build pays again (`CacheEstimate.setup_seconds`).

Shape key: B batch (contexts), L context length.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from training.cache_config import CacheConfig
from training.manifest import MANIFEST_NAME, read_manifest, read_progress
from training.pretokenized import RowPacker
from training.plan import CachePlan, bytes_per_row, plan_cache, refuse_mismatch
from training.shards import DTYPES, tensor_bytes
from training.packing import ContextPacker, document_tokenize, estimate_stream_tokens, special_tokens
from training.text import DocumentSource, TextConfig
from training.writer import ShardBuffer, fill_batch, fmt_bytes, free_bytes


def fmt_secs(s: float) -> str:
    """A duration for people: 42 s, 3 min 05 s, 2 h 07 min."""
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


@dataclass
class CacheEstimate:
    """What a build will cost, computed before it starts (the dry run)."""

    out: str
    hooks: list[str]
    d_in: dict[str, int]
    dtype: str
    context_length: int
    contexts: int | None  # total contexts (None: unknown, e.g. a streamed hub dataset without max_tokens)
    contexts_done: int  # already in the cache (resume)
    rows_per_context: float
    shard_contexts: int
    bytes_needed: int | None  # for the contexts still to do
    bytes_free: int
    forward_tokens_per_s: float  # the caching loop's rate on a probe (`measure_rate`): mean of its batches
    seconds: float | None  # the caching loop (`caching_time`)
    exact: bool  # contexts known exactly (max_tokens given and the data suffices)
    forward: str = "transformer_lens"  # the forward pass used: "fast" or "transformer_lens"
    forward_note: str | None = None  # why not the fast one
    probe_contexts: int = 0  # contexts per batch of the probe that measured forward_tokens_per_s
    seconds_range: tuple[float, float] | None = None  # caching at the probe's fastest and slowest batch
    setup_seconds: float | None = None  # the dry run's time before caching (start-up, model load, checks, probe)

    @property
    def tokens(self) -> int | None:
        return None if self.contexts is None else self.contexts * self.context_length

    def describe(self) -> str:
        lines = [f"activation cache {self.out}: hooks {', '.join(f'{h} (d_in {self.d_in[h]})' for h in self.hooks)}, {self.dtype}, context {self.context_length}"]
        if self.contexts is None:
            lines.append("  tokens:  unknown (streamed dataset of unknown size; set --max-tokens for an estimate)")
        else:
            approx = "" if self.exact else "~"
            n_shards = -(-self.contexts // self.shard_contexts)
            lines.append(
                f"  tokens:  {approx}{self.tokens:,} in {approx}{self.contexts:,} contexts, "
                f"{approx}{n_shards:,} shards of {self.shard_contexts:,} contexts"
                + (f" ({self.contexts_done:,} contexts already cached)" if self.contexts_done else "")
            )
        need = "unknown" if self.bytes_needed is None else fmt_bytes(self.bytes_needed)
        lines.append(f"  disk:    needs ~{need}, {fmt_bytes(self.bytes_free)} free")
        lines.append(f"  time:    {self.time_summary()}")
        lines.append(f"           (measured at {self.forward_tokens_per_s:,.0f} tokens/s on a probe: forward + shard "
                     f"copy, {self.probe_contexts} contexts per batch; the range: every batch as fast / slow as its "
                     "fastest / slowest; other work on the machine can take it past either end)")
        lines.append(f"  forward: {self.forward}" + (f" ({self.forward_note})" if self.forward != "fast" and self.forward_note else ""))
        return "\n".join(lines)

    def time_summary(self) -> str:
        """'~31 s caching (26 s - 45 s), ~44 s in all': the caching loop, its range, and with the dry run's
        start-up the whole command (a build run now loads the model and probes again before caching)."""
        if self.seconds is None:
            return "unknown"
        text = f"~{fmt_secs(self.seconds)} caching"
        if self.seconds_range is not None:
            lo, hi = self.seconds_range
            text += f" ({fmt_secs(lo)} - {fmt_secs(hi)})"
        if self.setup_seconds is not None:
            text += f", ~{fmt_secs(self.setup_seconds + self.seconds)} in all with the start-up"
        return text


PROBE_SECONDS = 10.0  # about the most the rate probe (the dry run's measurement) may take


class ProbeRate(NamedTuple):
    """The caching loop's rate on the probe, and the batch size it was measured at."""

    tokens_per_s: float  # the mean of the timed batches: a stalled batch costs the build as much
    contexts_per_batch: int
    batch_seconds: tuple[float, ...] = ()  # the timed batches at that size
    hash_seconds_per_byte: float = 0.0  # the shards' two SHA-256s (whole file and part), per byte written


class CachingTime(NamedTuple):
    """The caching loop's estimated seconds, and its range (`caching_time`)."""

    seconds: float
    low: float
    high: float


def caching_time(contexts: int, L: int, probe: ProbeRate, shard_bytes: int) -> CachingTime:
    """The caching loop's time for `contexts` contexts: their batches at the probe's mean batch time
    (its median had left out the stalls a build meets as often: ~1.2x optimistic on an idle 2-core
    machine) plus the shards' hashing, which on a CPU takes the cores the model runs on. Low / high:
    every batch as fast / as slow as the probe's fastest / slowest."""
    b = probe.contexts_per_batch
    walls = probe.batch_seconds or (b * L / probe.tokens_per_s,)
    batches = contexts / b
    hashing = shard_bytes * probe.hash_seconds_per_byte
    return CachingTime(batches * statistics.fmean(walls) + hashing, batches * min(walls) + hashing,
                       batches * max(walls) + hashing)


def measure_rate(plan: CachePlan, cfg: CacheConfig, sample_NL: np.ndarray, L: int, vocab: int) -> ProbeRate:
    """Tokens/s of the build's caching loop, measured on a short probe: the sampled contexts run
    through the forward the build will use (its check done first, untimed) and are copied into a
    shard buffer as the build's loop does, timed by the wall clock (synchronised on a GPU).

    The probe works towards the build's batch size: per-call overheads (Python, kernel launches
    and, on a busy machine, the wait for the compute threads at every op) weigh on small batches,
    and a probe of 8 contexts had underestimated the build's rate up to 4x. The batch doubles from
    1 context to `cfg.batch_size` while the next size still fits in PROBE_SECONDS, judged by the
    time the current size took (a GPU or a small model reaches the build's batch size; a large
    model on a CPU stops at a batch that already takes a second or more, where its rate no longer
    grows). Each size runs twice, the faster run counting (the first pays for allocations, and on a
    busy machine one run can stall: judged by it, the ramp stopped at 2 contexts); the rate is the mean of 5
    to 15 timed batches at the last size (as many as fit in a third of PROBE_SECONDS: on a busy
    machine single batches swing several-fold, and the build pays for its stalled batches too)."""
    B = cfg.batch_size
    if len(sample_NL):
        tokens_BL = np.resize(sample_NL, (B, L)).astype(sample_NL.dtype, copy=False)
    else:
        tokens_BL = torch.randint(0, max(1, vocab), (B, L), generator=torch.Generator().manual_seed(0)).numpy()
    plan.runner.forward_used(L)  # the fast-forward check, outside the timing
    probe = _ProbeBatches(plan, cfg, tokens_BL)
    spent, b = 0.0, 1
    while True:
        # the first call at a size pays for allocations (the very first, for the forward's one-off setup: seconds
        # on a busy machine); the faster of the two is the size's time, so neither that nor one stalled batch
        # stops the ramp at a batch of 2, where the rate is a small fraction of the build's (seen: 17x)
        secs = min(probe.seconds(b), probe.seconds(b))
        spent += 2 * secs
        # the next size: two runs of about twice this one, then the timed runs (five or more: the probe may pass
        # PROBE_SECONDS by a few batches of a large model)
        if b >= B or spent + 8 * secs > PROBE_SECONDS:
            break
        b = min(2 * b, B)
    walls = [secs]
    start = time.perf_counter()
    while len(walls) < 5 or (len(walls) < 15 and time.perf_counter() - start < PROBE_SECONDS / 3):
        walls.append(probe.seconds(b))
    return ProbeRate(b * L / max(statistics.fmean(walls), 1e-9), b, tuple(walls), probe.hash_seconds_per_byte())


class _ProbeBatches:
    """The first b contexts of the probe through the build's forward and into a shard buffer."""

    def __init__(self, plan: CachePlan, cfg: CacheConfig, tokens_BL: np.ndarray) -> None:
        self.runner, self.excluded, self.tokens_BL = plan.runner, plan.excluded, tokens_BL
        self.cuda = self.runner.device.type == "cuda"
        self.buf = ShardBuffer(plan.d_in, DTYPES[cfg.dtype], tokens_BL.shape[0], tokens_BL.shape[1], pin=self.cuda)

    def seconds(self, b: int) -> float:
        """Wall time of one batch of b contexts (synchronised on a GPU)."""
        self.buf.rows = self.buf.contexts = 0
        tb = self.tokens_BL[:b]
        t0 = time.perf_counter()
        acts = self.runner.run(torch.from_numpy(tb))
        fill_batch(self.buf, acts, tb, self.excluded, 0, non_blocking=self.cuda)
        if self.cuda:
            torch.cuda.synchronize(self.runner.device)
        return time.perf_counter() - t0

    def hash_seconds_per_byte(self) -> float:
        """Seconds per byte of the shard writer's hashing (two SHA-256s of every byte) on the last batch's rows."""
        views = [tensor_bytes(a[:self.buf.rows]) for a in self.buf.acts.values()]
        n = sum(len(v) for v in views)
        if n == 0:
            return 0.0
        t0 = time.perf_counter()
        for v in views:
            hashlib.sha256(v).digest()
        return 2 * (time.perf_counter() - t0) / n


def estimate_plan(plan: CachePlan, text: TextConfig, cfg: CacheConfig, tokenizer, out: Path,
                  contexts_done: int) -> CacheEstimate:
    """The estimate of a planned build of which `contexts_done` contexts are already cached."""
    L = text.context_length
    # the plan's first documents and their source, not plan.source: the prefetcher reads that in its thread
    # meanwhile, and two threads iterating one streaming dataset can shift its document boundaries (and so
    # the resume pointers); one read serves both estimates
    source, docs = plan.first_source, plan.first
    # packed as the build packs: a resumed cache by the rule it records (an older cache: EOS and BOS
    # between documents even where the current rule writes one token), which refuse_mismatch put in plan.settings
    next_bos = plan.settings.get("eos_is_next_bos")
    literal = plan.settings.get("literal_special_tokens", True)
    if source.pretokenized:
        packer = RowPacker(iter([docs.texts]), text)
    else:
        packer = ContextPacker(iter([docs.texts]), document_tokenize(tokenizer, text, literal), text,
                               special_tokens(tokenizer), eos_next_bos=next_bos)
    sample, _ = packer.take(64)
    if len(sample):
        rows_per_context = float((~np.isin(sample, plan.excluded)).sum()) / len(sample)
    else:
        rows_per_context = float(L)
    stream = estimate_stream_tokens(text, tokenizer, source, docs, eos_next_bos=next_bos, literal_specials=literal)
    K = packer.K
    data_contexts = None if stream is None else stream // K
    exact = False
    if cfg.max_tokens is not None:
        want = cfg.max_tokens // L
        contexts = want if data_contexts is None else min(want, data_contexts)
        exact = data_contexts is not None and data_contexts > 1.2 * want
    else:
        contexts = data_contexts
    probe = measure_rate(plan, cfg, sample, L, len(tokenizer))
    tps = probe.tokens_per_s
    sc = plan.settings["shard_contexts"]
    todo = None if contexts is None else max(0, contexts - contexts_done)
    need = None if todo is None else int(todo * (rows_per_context * bytes_per_row(plan.d_in, cfg.dtype) + 4 * L))
    took = None if todo is None else caching_time(todo, L, probe, need)
    return CacheEstimate(
        out=str(out), hooks=list(plan.runner.hooks), d_in=dict(plan.d_in), dtype=cfg.dtype, context_length=L,
        contexts=contexts, contexts_done=contexts_done, rows_per_context=rows_per_context, shard_contexts=sc,
        bytes_needed=need, bytes_free=free_bytes(out), forward_tokens_per_s=tps,
        seconds=None if took is None else took.seconds, exact=exact,
        forward=plan.runner.forward_used(L), forward_note=plan.runner.fast_problem,
        probe_contexts=probe.contexts_per_batch, seconds_range=None if took is None else (took.low, took.high),
    )


def estimate_cache(
    model, text: TextConfig, cfg: CacheConfig, *, tokenizer=None, model_id: str | None = None,
    model_revision: str | None = None, source: DocumentSource | None = None,
) -> CacheEstimate:
    """The dry run: validate everything a build would, estimate disk and time; write nothing.
    `source`: `text`'s dataset already opened (`training.text.source_as_read`), else opened here."""
    plan = plan_cache(model, text, cfg, tokenizer, model_id, model_revision, source)
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    out = Path(cfg.out)
    done = 0
    if (out / MANIFEST_NAME).is_file():
        existing = read_manifest(out)
        refuse_mismatch(out, existing, plan.settings)
        done = existing.total_contexts if existing.complete else sum(s.contexts for s in read_progress(out))
    return estimate_plan(plan, text, cfg, tokenizer, out, done)
