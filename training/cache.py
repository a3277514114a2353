"""Build an activation cache on disk: text -> contexts -> one model pass per batch, reading one or
several hook points -> fp16/bf16/fp32 shards with token ids, positions and checksums.

    build_cache(model, TextConfig(...), CacheConfig(out=..., hooks=[...]))

* The forward pass stops right after the last needed hook point fires (and `stop_at_layer`
  skips the blocks after it), so caching layer 1 of a 12-layer model costs 2 blocks.
* Shards are written by a background thread while the model computes the next shard
  (double buffering), atomically (temp name, fsync, rename); see `training.shards`.
* Resume: re-running the same call after a crash continues from the first unfinished shard;
  the result is byte-identical to an uninterrupted run. A cache made with other settings is
  refused, naming each differing field. See `training.manifest` for the manifest fields.
* Disk space and a time estimate are logged before starting (`estimate_cache` alone is the
  dry run); a full disk stops with `CacheDiskFullError` and leaves no partial shard. The time
  comes from a probe of the build's own loop: real contexts at the build's batch size (smaller
  when one batch takes a while, see `_measure_rate`) through the forward it will use, copied into
  a shard buffer.

The model is an already loaded TransformerLens `HookedTransformer` (anything with `hook_dict`,
`hooks()`, `cfg.n_ctx` and a `stop_at_layer` forward argument); this module does not import
transformer_lens.

Shape key: B batch (contexts), L context length, D d_in, R rows (cached token positions).
"""

from __future__ import annotations

import errno
import hashlib
import queue
import re
import shutil
import statistics
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from saes.errors import SaesteerError
from saes.fileio import TMP_SUFFIX
from saes.hookpoints import UnknownHookError, check_hooks, model_device
from saes.identity import identity_of_model
from training.cache_config import FORWARD_NAMES, CacheConfig, ExcludeTokens
from training.fast_forward import FastForward, NotSupported
from training.manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LOCK_NAME,
    MANIFEST_NAME,
    PROGRESS_NAME,
    CacheMismatchError,
    Manifest,
    ShardInfo,
    append_progress,
    read_manifest,
    read_progress,
    setting_differences,
    shard_file_name,
    write_manifest,
    lock_cache_dir,
)
from training.shards import DTYPES, ShardCorruptError, read_header, sha256_file, write_safetensors_atomic
from training.text import (
    DocumentSource,
    TextConfig,
    TextPointer,
    dataset_spec,
    estimate_stream_tokens,
    make_tokenize,
    sample_documents,
    ContextPacker,
    special_tokens,
    tokenizer_fingerprint,
)

DEFAULT_SHARD_BYTES = 128 << 20


class CacheWriteError(SaesteerError, OSError):
    """Writing the cache failed (disk full, no permission, read-only disk, file size limit).

    Nothing partial is left under a final name; finished shards are kept, and re-running the same
    command once the cause is fixed resumes with them. `errno` is the system's error code."""

    def __init__(self, message: str, *, code: int, file: str | Path | None = None, hint: str | None = None) -> None:
        super().__init__(message, file=file, hint=hint)
        self.errno = code
        self.filename = self.file


class CacheDiskFullError(CacheWriteError):
    """The disk filled up (or a quota or file size limit was reached) while writing the cache."""


# ----------------------------------------------------------------------------------------------
# Hook points and the forward pass


def stop_layer(model, hooks: Sequence[str]) -> int | None:
    """Blocks to run (`stop_at_layer`) so that every hook fires; None means the whole model."""
    need = -1
    for h in hooks:
        m = re.match(r"^blocks\.(\d+)\.", h)
        if m:
            need = max(need, int(m.group(1)) + 1)
        elif h in ("hook_embed", "hook_pos_embed", "hook_tokens"):
            need = max(need, 0)
        else:
            return None  # e.g. ln_final.*: run everything
    return need if need >= 0 else None


class _StopForward(Exception):
    pass


# modules whose functions TransformerBridge / transformers register as standing hooks on a model
# (output capture); hooks from anywhere else (TransformerLens hook points, steering, users) count
_LIBRARY_HOOK_MODULES = ("transformers.", "transformer_lens.model_bridge.")


def _library_hook(fn) -> bool:
    return str(getattr(fn, "__module__", None) or "").startswith(_LIBRARY_HOOK_MODULES)


# relative tolerance of the fast forward's check: max |fast - TL| <= tol * max |TL| per hook
FAST_CHECK_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


class FastForwardMismatch(RuntimeError):
    """The fast forward's activations differ from TransformerLens's beyond rounding."""


class ActivationRunner:
    """Runs `model` on token batches and returns the activations of `hooks`, stopping the
    forward pass as soon as the last of them has fired.

    `run(tokens_BL)` -> {hook: acts [B, L, D]} (trailing dims flattened into D, e.g. hook_z).

    `forward` picks the forward pass: "transformer_lens" runs the model itself, with our hooks
    added for each call inside TransformerLens's scoped `hooks()` context; "fast" runs
    `training.fast_forward.FastForward` (fused ops, same values up to rounding) and fails when
    the model is not covered or the check below fails; "auto" (default) uses the fast forward
    when it covers the model and passes the check, else TransformerLens's (with a warning when
    the check failed). The check, once per context length: both forwards on a fixed probe batch
    (seeded random tokens, BOS first when the tokenizer has one), every hook's max abs
    difference within `FAST_CHECK_TOLERANCE` x its max abs activation, and every token's
    difference within that fraction of the token's norm (so an outsized activation, e.g. at BOS,
    cannot hide an error elsewhere). The probe does not
    depend on the data, so the choice depends only on the model, hooks and context length (a
    resumed cache makes the same choice). Batches run while hooks are attached to the model
    (e.g. a steering intervention) always use TransformerLens's forward, so those hooks act."""

    def __init__(self, model, hooks: Sequence[str], forward: str = "auto"):
        if forward not in FORWARD_NAMES:
            raise ValueError(f"forward must be one of {', '.join(FORWARD_NAMES)}; got {forward!r}")
        self.model = model
        self.hooks = check_hooks(model, hooks, per_token=True)
        self.stop_at_layer = stop_layer(model, self.hooks)
        self.n_ctx = int(model.cfg.n_ctx)
        self.device = model_device(model)
        self.forward = forward
        self.fast: FastForward | None = None
        self.fast_problem: str | None = None  # why the fast forward is not used (None: it is, or not asked)
        self._fast_ok: dict[int, bool] = {}  # context length -> the check passed
        if forward != "transformer_lens":
            try:
                self.fast = FastForward(model, self.hooks)
            except NotSupported as e:
                self.fast_problem = f"not covered by the fast forward: {e}"
                if forward == "fast":
                    raise ValueError(f"--forward fast: {self.fast_problem}; use --forward auto or transformer_lens") from None

    def check_context_length(self, context_length: int) -> None:
        if context_length > self.n_ctx:
            raise ValueError(
                f"context_length {context_length} is longer than the model's context window "
                f"(n_ctx {self.n_ctx}); use --context-length {self.n_ctx} or less"
            )

    def forward_used(self, context_length: int) -> str:
        """"fast" or "transformer_lens": the forward that computes batches of this length
        (runs the check when it has not run yet)."""
        return "fast" if self._use_fast(context_length) else "transformer_lens"

    def pin_forward(self, name: str, context_length: int) -> None:
        """Use `name` for batches of `context_length` from now on (a resumed cache keeps the
        forward its first shards were made with). Pinning "fast" where it is not available is
        an error."""
        if name == "fast":
            if self.fast is None:
                raise FastForwardMismatch(f"the fast forward is not available for this model ({self.fast_problem})")
            self._fast_ok[context_length] = True
        else:
            self._fast_ok[context_length] = False

    def _use_fast(self, L: int) -> bool:
        if self.fast is None:
            return False
        ok = self._fast_ok.get(L)
        if ok is None:
            ok = self._fast_ok[L] = self._check_fast(L)
        return ok

    def _probe(self, L: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        vocab = int(getattr(self.model.cfg, "d_vocab", 0) or 2)
        toks = torch.randint(0, vocab, (2, L), generator=g)
        bos = getattr(getattr(self.model, "tokenizer", None), "bos_token_id", None)
        if isinstance(bos, int) and 0 <= bos < vocab:
            toks[:, 0] = bos
        return toks

    def _check_fast(self, L: int) -> bool:
        toks = self._probe(L)
        try:
            fast = self.fast(toks)
        except NotSupported as e:
            problem = f"not covered by the fast forward: {e}"
        except Exception as e:  # a gap in the fast forward must cost speed, never the cache
            problem = f"the fast forward failed on the check batch ({type(e).__name__}: {e})"
        else:
            ref = self._run_tl(toks)
            problem = None
            for h in self.hooks:
                if fast[h].numel() != ref[h].numel():
                    problem = (f"the fast forward gives {h} the shape {tuple(fast[h].shape)}, TransformerLens "
                               f"{tuple(ref[h].shape)}")
                    break
                a, b = ref[h].float(), fast[h].reshape(ref[h].shape).float()
                rel = FAST_CHECK_TOLERANCE.get(ref[h].dtype, 5e-2)
                tol = rel * max(a.abs().max().item(), 1e-30)
                diff = (a - b).abs().max().item()
                # per token too: one huge activation (e.g. at BOS) must not hide errors elsewhere
                a_T, d_T = a.flatten(2).norm(dim=-1), (a - b).flatten(2).norm(dim=-1)
                token_rel = (d_T / a_T.clamp_min(0.1 * a_T.median().item() + 1e-30)).max().item()
                if not (diff <= tol and token_rel <= rel):
                    problem = (f"the fast forward differs from TransformerLens's at {h} by {diff:.3g} "
                               f"(allowed {tol:.3g}; worst token {token_rel:.3g} of its norm, allowed {rel:g}) "
                               "on the check batch")
                    break
        if problem is None:
            return True
        self.fast_problem = problem
        if self.forward == "fast":
            raise FastForwardMismatch(f"--forward fast: {problem}; use --forward transformer_lens")
        warnings.warn(f"{problem}; using TransformerLens's forward instead", RuntimeWarning, stacklevel=3)
        return False

    def _hooks_attached(self) -> bool:
        """Any forward (pre-)hook on any module of the model (TransformerLens hook points or plain
        torch module hooks): the fast forward would skip them, so such batches run through TL.

        Hooks the libraries keep on the model for themselves do not count: TransformerBridge and
        transformers install capture hooks on the HF modules at the first forward and leave them
        there (they do not change outputs), which sent every later batch of an HF model through
        the slow forward while the estimate said "fast"."""
        return any(not _library_hook(fn) for m in self.model.modules()
                   for fn in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()))

    def run(self, tokens_BL: torch.Tensor) -> dict[str, torch.Tensor]:
        B, L = tokens_BL.shape
        self.check_context_length(L)
        if self._use_fast(L) and not self._hooks_attached():
            captured = self.fast(tokens_BL)
        else:
            captured = self._run_tl(tokens_BL)
        out = {}
        for h in self.hooks:
            a = captured.get(h)
            if a is None:
                raise RuntimeError(f"hook point {h} did not fire during the forward pass")
            if a.shape[:2] != (B, L):
                raise UnknownHookError(f"hook point {h} gives shape {tuple(a.shape)}, not [batch, position, ...]; it cannot be cached per token")
            out[h] = a.reshape(B, L, -1)
        return out

    def _run_tl(self, tokens_BL: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        need = len(self.hooks)

        def grabber(name: str):
            # keyed by the name we asked for: TransformerBridge fires hooks under canonical names
            def grab(act, hook):
                captured[name] = act
                if len(captured) == need:
                    raise _StopForward
            return grab

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), self.model.hooks(fwd_hooks=[(h, grabber(h)) for h in self.hooks]):
                try:
                    self.model(tokens_BL.to(self.device), return_type=None, stop_at_layer=self.stop_at_layer)
                except _StopForward:
                    pass
        finally:
            if was_training:
                self.model.train()
        return captured

    def d_in(self, context_length: int = 2) -> dict[str, int]:
        """Width of each hook's per-token vector (runs one tiny forward pass)."""
        L = max(1, min(context_length, self.n_ctx))
        acts = self.run(torch.zeros(1, L, dtype=torch.long))
        return {h: int(a.shape[-1]) for h, a in acts.items()}


def model_fingerprint(model) -> str:
    """SHA-256 over parameter names, shapes, dtypes and a strided sample of each tensor's values:
    cheap even for large models, and different for a retrained or re-initialised model."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(f"{name}|{p.dtype}|{tuple(p.shape)}\n".encode())
        flat = p.detach().reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // 1024)
            sample = flat[::step][:1024].to("cpu", torch.float32).contiguous()
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


def excluded_ids(tokenizer, mode: ExcludeTokens) -> list[int]:
    sp = special_tokens(tokenizer)
    if mode == "none":
        return []
    if mode == "bos":
        return [] if sp.bos is None else [sp.bos]
    return sorted(set(sp.all) | {i for i in (sp.bos, sp.eos, sp.pad) if i is not None})


# ----------------------------------------------------------------------------------------------
# Settings and estimates


def cache_settings(
    model, runner: ActivationRunner, d_in: dict[str, int], text: TextConfig, cfg: CacheConfig, tokenizer,
    model_id: str | None, model_revision: str | None, dataset: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's SETTING_FIELDS for this build (what must match to resume)."""
    excl = excluded_ids(tokenizer, cfg.exclude_tokens)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": {
            "id": model_id or str(getattr(model.cfg, "model_name", "") or type(model).__name__),
            "revision": model_revision,
            "fingerprint": model_fingerprint(model),
            "n_ctx": runner.n_ctx,
            "d_model": int(getattr(model.cfg, "d_model", 0)),
        },
        "hooks": list(runner.hooks),
        "d_in": dict(d_in),
        "dtype": cfg.dtype,
        "context_length": text.context_length,
        "bos_policy": text.bos_policy,
        "separator": text.separator,
        "exclude_tokens": cfg.exclude_tokens,
        "excluded_token_ids": excl,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "dataset": dataset,
        "max_tokens": cfg.max_tokens,
        "shard_contexts": cfg.shard_contexts or default_shard_contexts(d_in, cfg.dtype, text.context_length),
    }


def bytes_per_row(d_in: dict[str, int], dtype: str) -> int:
    item = torch.empty((), dtype=DTYPES[dtype]).element_size()
    return sum(d_in.values()) * item + 4 + 4 + 8  # acts + token_ids + positions + seq_index


def default_shard_contexts(d_in: dict[str, int], dtype: str, context_length: int) -> int:
    per_context = context_length * (bytes_per_row(d_in, dtype) + 4)
    return max(1, DEFAULT_SHARD_BYTES // per_context)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def _fmt_secs(s: float) -> str:
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
    forward_tokens_per_s: float  # the caching loop's rate on a probe (`_measure_rate`)
    seconds: float | None
    exact: bool  # contexts known exactly (max_tokens given and the data suffices)
    forward: str = "transformer_lens"  # the forward pass used: "fast" or "transformer_lens"
    forward_note: str | None = None  # why not the fast one
    probe_contexts: int = 0  # contexts per batch of the probe that measured forward_tokens_per_s

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
        need = "unknown" if self.bytes_needed is None else _fmt_bytes(self.bytes_needed)
        lines.append(f"  disk:    needs ~{need}, {_fmt_bytes(self.bytes_free)} free")
        t = "unknown" if self.seconds is None else f"~{_fmt_secs(self.seconds)}"
        lines.append(f"  time:    {t} (caching measured at {self.forward_tokens_per_s:,.0f} tokens/s on a probe: "
                     f"forward + shard copy, {self.probe_contexts} contexts per batch)")
        lines.append(f"  forward: {self.forward}" + (f" ({self.forward_note})" if self.forward != "fast" and self.forward_note else ""))
        return "\n".join(lines)


def _free_bytes(path: Path) -> int:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


PROBE_SECONDS = 10.0  # about the most the rate probe (the dry run's measurement) may take


class ProbeRate(NamedTuple):
    tokens_per_s: float
    contexts_per_batch: int


def _measure_rate(plan: "_Plan", cfg: CacheConfig, sample_NL: np.ndarray, L: int, vocab: int) -> ProbeRate:
    """Tokens/s of the build's caching loop, measured on a short probe: the sampled contexts run
    through the forward the build will use (its check done first, untimed) and are copied into a
    shard buffer as `_run_build` does, timed by the wall clock (synchronised on a GPU).

    The probe works towards the build's batch size: per-call overheads (Python, kernel launches
    and, on a busy machine, the wait for the compute threads at every op) weigh on small batches,
    and a probe of 8 contexts had underestimated the build's rate up to 4x. The batch doubles from
    1 context to `cfg.batch_size` while the next size still fits in PROBE_SECONDS, judged by the
    time the current size took (a GPU or a small model reaches the build's batch size; a large
    model on a CPU stops at a batch that already takes a second or more, where its rate no longer
    grows). Each size runs once untimed (allocations) and once timed; the rate is the median of 3
    to 7 timed batches at the last size (as many as fit in a fifth of PROBE_SECONDS: on a busy
    machine single batches swing several-fold)."""
    runner = plan.runner
    B = cfg.batch_size
    if len(sample_NL):
        tokens_BL = np.resize(sample_NL, (B, L)).astype(sample_NL.dtype, copy=False)
    else:
        tokens_BL = torch.randint(0, max(1, vocab), (B, L), generator=torch.Generator().manual_seed(0)).numpy()
    runner.forward_used(L)  # the fast-forward check, outside the timing
    device = runner.device
    cuda = device.type == "cuda"
    buf = _ShardBuffer(plan.d_in, DTYPES[cfg.dtype], B, L, pin=cuda)

    def timed(b: int) -> float:
        buf.rows = buf.contexts = 0
        tb = tokens_BL[:b]
        t0 = time.perf_counter()
        acts = runner.run(torch.from_numpy(tb))
        _fill_batch(buf, acts, tb, plan.excluded, 0, non_blocking=cuda)
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    start = time.perf_counter()
    b = 1
    while True:
        timed(b)  # the first call at this size pays for allocations
        secs = timed(b)
        # the next size: two runs of about twice this one, then three or more timed runs
        if b >= B or time.perf_counter() - start + 8 * secs > PROBE_SECONDS:
            break
        b = min(2 * b, B)
    walls = [secs]
    start = time.perf_counter()
    while len(walls) < 3 or (len(walls) < 7 and time.perf_counter() - start < PROBE_SECONDS / 5):
        walls.append(timed(b))
    return ProbeRate(b * L / max(statistics.median(walls), 1e-9), b)


class _Plan(NamedTuple):
    runner: ActivationRunner
    d_in: dict[str, int]
    settings: dict[str, Any]
    source: DocumentSource
    excluded: np.ndarray
    dataset_files: list[str] | None  # the absolute paths of the local files read (provenance)


def _identity_record(model) -> dict[str, Any] | None:
    ident = identity_of_model(model)
    return None if ident is None else ident.to_json()


def _plan(model, text: TextConfig, cfg: CacheConfig, tokenizer, model_id, model_revision) -> _Plan:
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("the model has no tokenizer; pass tokenizer=...")
    runner = ActivationRunner(model, cfg.hooks, forward=cfg.forward)
    runner.check_context_length(text.context_length)
    if cfg.max_tokens is not None and cfg.max_tokens < text.context_length:
        raise ValueError(
            f"max_tokens {cfg.max_tokens} is less than one context ({text.context_length} tokens); "
            "raise --max-tokens or lower --context-length"
        )
    d_in = runner.d_in(text.context_length)
    source = DocumentSource(text)  # checks the dataset and its text column
    spec = dataset_spec(text, source.data)
    ident = identity_of_model(model)
    if ident is not None:  # a model loaded by saesteer.models knows who it is
        model_id, model_revision = model_id or ident.id, model_revision or ident.revision
    settings = cache_settings(model, runner, d_in, text, cfg, tokenizer, model_id, model_revision, spec)
    files = [str(p) for p in source.data.files] if source.data.is_local else None
    return _Plan(runner, d_in, settings, source, np.asarray(settings["excluded_token_ids"], dtype=np.int64), files)


def _estimate(plan: _Plan, text: TextConfig, cfg: CacheConfig, tokenizer, out: Path, contexts_done: int) -> CacheEstimate:
    L = text.context_length
    # a source of its own: the prefetcher reads plan.source in its thread meanwhile, and two threads
    # iterating one streaming dataset can shift its document boundaries (and so the resume pointers)
    source = DocumentSource(text)
    texts = sample_documents(source, 512)  # one read serves both estimates
    packer = ContextPacker(iter([texts]), make_tokenize(tokenizer), text, special_tokens(tokenizer))
    sample, _ = packer.take(64)
    if len(sample):
        rows_per_context = float((~np.isin(sample, plan.excluded)).sum()) / len(sample)
    else:
        rows_per_context = float(L)
    stream = estimate_stream_tokens(text, tokenizer, source, texts, 512)
    K = packer.K
    data_contexts = None if stream is None else stream // K
    exact = False
    if cfg.max_tokens is not None:
        want = cfg.max_tokens // L
        contexts = want if data_contexts is None else min(want, data_contexts)
        exact = data_contexts is not None and data_contexts > 1.2 * want
    else:
        contexts = data_contexts
    probe = _measure_rate(plan, cfg, sample, L, len(tokenizer))
    tps = probe.tokens_per_s
    sc = plan.settings["shard_contexts"]
    todo = None if contexts is None else max(0, contexts - contexts_done)
    need = None if todo is None else int(todo * (rows_per_context * bytes_per_row(plan.d_in, cfg.dtype) + 4 * L))
    return CacheEstimate(
        out=str(out), hooks=list(plan.runner.hooks), d_in=dict(plan.d_in), dtype=cfg.dtype, context_length=L,
        contexts=contexts, contexts_done=contexts_done, rows_per_context=rows_per_context, shard_contexts=sc,
        bytes_needed=need, bytes_free=_free_bytes(out), forward_tokens_per_s=tps,
        seconds=None if todo is None else todo * L / tps, exact=exact,
        forward=plan.runner.forward_used(L), forward_note=plan.runner.fast_problem,
        probe_contexts=probe.contexts_per_batch,
    )


def estimate_cache(
    model, text: TextConfig, cfg: CacheConfig, *, tokenizer=None, model_id: str | None = None,
    model_revision: str | None = None,
) -> CacheEstimate:
    """The dry run: validate everything a build would, estimate disk and time; write nothing."""
    plan = _plan(model, text, cfg, tokenizer, model_id, model_revision)
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    out = Path(cfg.out)
    done = 0
    if (out / MANIFEST_NAME).is_file():
        existing = read_manifest(out)
        _refuse_mismatch(out, existing, plan.settings)
        done = existing.total_contexts if existing.complete else sum(s.contexts for s in read_progress(out))
    return _estimate(plan, text, cfg, tokenizer, out, done)


# ----------------------------------------------------------------------------------------------
# Shard buffers and the writer thread


class _ShardBuffer:
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


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _disk_full_message(out: Path, what: str) -> str:
    return (
        f"disk full while writing {what} in {out} ({_fmt_bytes(_free_bytes(out))} free). Nothing partial "
        "was kept: free some space (or choose another --out) and re-run the same command to resume."
    )


def write_failure(out: Path, e: OSError) -> CacheWriteError | None:
    """The clear error for an OSError met while writing the cache in `out` (None: not a write failure).

    `e._what` (set by the shard writer) or `e.filename` names the file being written."""
    if isinstance(e, CacheWriteError):
        return e
    what = getattr(e, "_what", None)
    if what is None and e.filename and Path(e.filename) != out:
        what = Path(e.filename).name
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
            "another --out) and re-run the same command to resume.", code=e.errno, file=out)
    return None


class _ShardWriter:
    """Writes filled shard buffers in order, in a background thread (or inline), and appends
    each finished shard to the build log. Errors surface in the caller's thread."""

    def __init__(self, out: Path, buffers: list[_ShardBuffer], threaded: bool, on_written: Callable[[ShardInfo], None]):
        self.out = out
        self.free: queue.Queue = queue.Queue()
        for b in buffers:
            self.free.put(b)
        self.work: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.on_written = on_written
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

    def acquire(self) -> _ShardBuffer:
        while True:
            self._raise()
            try:
                return self.free.get(timeout=0.05)
            except queue.Empty:
                continue

    def submit(self, buf: _ShardBuffer, info: dict[str, Any]) -> None:
        self._raise()
        if self._thread:
            self.work.put((buf, info))
        else:
            self._write(buf, info)
            self._raise()

    def _write(self, buf: _ShardBuffer, info: dict[str, Any]) -> None:
        try:
            if self.error is None:
                meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "shard_index": str(info["index"]),
                        "first_context": str(info["first_context"])}
                written = write_safetensors_atomic(self.out / info["file"], buf.tensors(), meta)
                shard = ShardInfo(bytes=written.nbytes, sha256=written.sha256, rows=buf.rows, contexts=buf.contexts, **info)
                append_progress(self.out, shard)
                self.on_written(shard)
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


# ----------------------------------------------------------------------------------------------
# Building


class CacheResult(NamedTuple):
    path: Path
    manifest: Manifest
    shards_resumed: int  # shards found finished in the directory
    shards_written: int  # shards written by this call
    tokens_written: int  # model-input tokens processed by this call
    seconds: float  # whole call (checks, estimate, caching, manifest)
    seconds_caching: float  # the caching loop alone (tokenize, forward, copy, write)


def _refuse_mismatch(out: Path, existing: Manifest, settings: dict[str, Any]) -> None:
    diffs = setting_differences(existing.settings, settings)
    if diffs:
        raise CacheMismatchError(
            f"{out} holds a cache made with other settings; refusing to mix them:\n  - "
            + "\n  - ".join(diffs)
            + "\nUse another --out directory, or delete this one to rebuild it."
        )


def _fill_batch(buf: _ShardBuffer, acts: dict[str, torch.Tensor], tokens_BL: np.ndarray, excluded: np.ndarray,
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
        f"({runner.fast_problem or f'--forward {cfg.forward}'}), so new shards agree with them up to floating-point "
        "rounding, not bit for bit", RuntimeWarning, stacklevel=3)
    return now


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
) -> CacheResult:
    """Build (or resume, or confirm) the activation cache `cfg.out` for `model` on `text`.

    `model_id` / `model_revision` are recorded in the manifest (default: `model.cfg.model_name`);
    `tokenizer` defaults to `model.tokenizer`. Raises `CacheMismatchError` when `cfg.out` holds a
    cache with other settings, `UnknownHookError`, `ValueError` for bad input (missing text
    column, context longer than the model's), `CacheDiskFullError` on a full disk, `CacheWriteError`
    when `cfg.out` cannot be written (finished shards are kept: re-run to resume)."""
    try:
        return _build_cache(model, text, cfg, tokenizer=tokenizer, model_id=model_id, model_revision=model_revision,
                            progress=progress, log=log, writer_thread=writer_thread)
    except OSError as e:
        clear = write_failure(Path(cfg.out), e)
        if clear is None or clear is e:
            raise
        raise clear from e


def _build_cache(model, text: TextConfig, cfg: CacheConfig, *, tokenizer, model_id, model_revision, progress, log,
                 writer_thread) -> CacheResult:
    t_start = time.perf_counter()
    say = log or (lambda s: None)
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
    plan = _plan(model, text, cfg, tokenizer, model_id, model_revision)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if out.is_dir() and not (out / MANIFEST_NAME).is_file():
        others = [p.name for p in out.iterdir() if p.name not in (LOCK_NAME, PROGRESS_NAME)]
        if others:
            raise ValueError(f"{out} is not empty and holds no activation cache ({', '.join(sorted(others)[:5])} ...); choose an empty or new --out directory")
    if (out / MANIFEST_NAME).is_file():
        existing = read_manifest(out)
        _refuse_mismatch(out, existing, plan.settings)
        if existing.complete:
            say(f"{out}: cache already complete ({existing.total_rows:,} rows in {len(existing.shards)} shards); nothing to do")
            return CacheResult(out, existing, len(existing.shards), 0, 0, time.perf_counter() - t_start, 0.0)
    out.mkdir(parents=True, exist_ok=True)

    with lock_cache_dir(out):
        forward = plan.runner.forward_used(text.context_length)
        if (out / MANIFEST_NAME).is_file():
            previous = read_manifest(out)
            _refuse_mismatch(out, previous, plan.settings)
            forward = _resume_forward(plan.runner, cfg, text.context_length, previous.forward, out, say)
        else:
            write_manifest(out, Manifest(plan.settings, complete=False, shards=[], forward=forward,
                                         model_identity=_identity_record(model), dataset_files=plan.dataset_files))
        for p in out.glob("*" + TMP_SUFFIX):  # leftovers of a crash
            p.unlink()
        done = read_progress(out)
        for p in out.glob("shard_*.safetensors"):  # finished files the log does not vouch for
            m = re.match(r"^shard_(\d+)\.safetensors$", p.name)
            if m and int(m.group(1)) >= len(done):
                p.unlink()
        contexts_done = sum(s.contexts for s in done)
        shards_in = _open_prefetcher(plan, text, cfg, tokenizer, done, writer_thread)  # tokenizes during the estimate
        try:
            est = _estimate(plan, text, cfg, tokenizer, out, contexts_done)
            say(est.describe())
            if done:
                say(f"  resuming after {len(done)} finished shard(s) ({contexts_done:,} contexts)")
            if cfg.check_disk and est.bytes_needed is not None and est.bytes_needed > est.bytes_free:
                raise CacheDiskFullError(
                    f"not enough disk space in {out}: the cache needs ~{_fmt_bytes(est.bytes_needed)}, "
                    f"{_fmt_bytes(est.bytes_free)} free. Free space, pick another --out, lower --max-tokens, "
                    "or pass --check-disk false to try anyway.", code=errno.ENOSPC, file=out,
                )
            t_loop = time.perf_counter()
            written = _run_build(plan, text, cfg, out, done, est, progress, writer_thread, shards_in)
            t_loop = time.perf_counter() - t_loop
        finally:
            shards_in.close()
        shards = read_progress(out)
        manifest = Manifest(plan.settings, complete=True, shards=shards, forward=forward,
                            model_identity=_identity_record(model), dataset_files=plan.dataset_files)
        write_manifest(out, manifest)
        (out / PROGRESS_NAME).unlink(missing_ok=True)
        (out / LOCK_NAME).unlink(missing_ok=True)
    secs = time.perf_counter() - t_start
    tot = manifest.totals()
    say(f"{out}: {tot['rows']:,} rows, {tot['shards']} shards, {_fmt_bytes(tot['bytes'])} ({written[1]:,} tokens this run, {_fmt_secs(secs)})")
    return CacheResult(out, manifest, len(done), written[0], written[1], secs, t_loop)


class _Prefetcher:
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


def _open_prefetcher(plan: _Plan, text: TextConfig, cfg: CacheConfig, tokenizer, done: list[ShardInfo],
                     threaded: bool) -> _Prefetcher:
    start = TextPointer(*done[-1].text_end) if done else TextPointer(0, 0)
    ctx = sum(s.contexts for s in done)
    target = None if cfg.max_tokens is None else cfg.max_tokens // text.context_length
    packer = ContextPacker(plan.source.chunks(start.doc), make_tokenize(tokenizer), text, special_tokens(tokenizer), start)
    return _Prefetcher(packer, int(plan.settings["shard_contexts"]), ctx, target, threaded=threaded)


def _run_build(plan: _Plan, text: TextConfig, cfg: CacheConfig, out: Path, done: list[ShardInfo],
               est: CacheEstimate, progress: bool, threaded: bool, shards_in: _Prefetcher) -> tuple[int, int]:
    from tqdm.auto import tqdm

    L = text.context_length
    C = int(plan.settings["shard_contexts"])
    start = TextPointer(*done[-1].text_end) if done else TextPointer(0, 0)
    ctx = sum(s.contexts for s in done)
    device = plan.runner.device
    pin = device.type == "cuda"
    dtype = DTYPES[cfg.dtype]
    buffers = [_ShardBuffer(plan.d_in, dtype, C, L, pin) for _ in range(2 if threaded else 1)]
    written = [0]
    writer = _ShardWriter(out, buffers, threaded=threaded, on_written=lambda s: written.__setitem__(0, written[0] + 1))
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
                _fill_batch(buf, acts, tb, plan.excluded, ctx, non_blocking=pin)
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
    finally:
        shards_in.close()  # (also closed by the caller; closing twice is fine)
        bar.close()
        writer.close(wait=ok)
    return written[0], tokens_run


# ----------------------------------------------------------------------------------------------
# Verification


class VerifyReport(NamedTuple):
    ok: bool
    checked: int
    problems: list[str]  # one line per bad shard, naming it


def verify_cache(path: str | Path, *, progress: bool = False) -> VerifyReport:
    """Check every shard of a cache against the manifest (presence, size, SHA-256, header).
    An unfinished cache is checked against its build log."""
    from tqdm.auto import tqdm

    out = Path(path)
    man = read_manifest(out)
    shards = man.shards if man.complete else read_progress(out)
    problems = [] if man.complete else [f"cache is incomplete ({len(shards)} shards finished); re-run the same `saesteer cache` command to finish it"]
    for s in tqdm(shards, desc="verifying", unit="shard", disable=not progress):
        f = out / s.file
        if not f.is_file():
            problems.append(f"{s.file}: missing")
            continue
        size = f.stat().st_size
        if size != s.bytes:
            problems.append(f"{s.file}: {size} bytes, manifest says {s.bytes}")
            continue
        digest = sha256_file(f)
        if digest != s.sha256:
            problems.append(f"{s.file}: SHA-256 mismatch (file {digest[:16]}..., manifest {s.sha256[:16]}...): the file is corrupt")
            continue
        try:
            entries, _ = read_header(f)
        except ShardCorruptError as e:
            problems.append(str(e))
            continue
        for h in man.hooks:
            e = entries.get(f"acts/{h}")
            if e is None or e.shape != (s.rows, man.d_in[h]):
                problems.append(f"{s.file}: activations for {h} missing or of the wrong shape")
    return VerifyReport(not problems, len(shards), problems)
