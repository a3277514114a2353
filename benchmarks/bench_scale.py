"""How cost grows with tokens and latents: caches, the reader at 1e9 tokens, training, checkpoints,
the feature store, the web app, labelling and training without a cache.

    python benchmarks/bench_scale.py cache    [--sizes 1e5,1e6,1e7,max] [--d-in 768]
    python benchmarks/bench_scale.py reader   [--tokens 1e9] [--d-in 2304]       # simulated 1e9-token cache
    python benchmarks/bench_scale.py train    [--tokens 1e5,1e6,4e6] [--d-sae 4096,16384,65536,131072]
    python benchmarks/bench_scale.py store    [--latents 8192,32768,131072] [--tokens 65536]
    python benchmarks/bench_scale.py nocache  [--tokens 65536,196608,393216]
    python benchmarks/bench_scale.py realsae  [--sae-names res-jb-24k,topk-65k] [--real-tokens 400000]
    python benchmarks/bench_scale.py all      (each of the above with its defaults)

Every command prints a markdown table; `--write` puts it in benchmarks/RESULTS.md under "## Scale"
(its own keyed block, so each command replaces only its table) and `--json FILE` writes the figures.

cache: synthetic caches (no model) written through the cache builder's own writer thread
(`training.writer.ShardWriter`: safetensors, SHA-256, fsync, atomic rename, build log) with the
default shard size, then read back cold (pages dropped with posix_fadvise) by `CacheReader`
(first epoch: SHA-256 of every shard, fp16 -> fp32 batches) in a child process whose peak RSS is
reported. "max" is the largest cache that leaves --keep-free GB free on the disk. Each cache is
deleted after it is measured.

reader: the shard count of a 1e9-token cache at d_in 2304 (default shard size), without the disk:
one real shard file hard-linked under every shard name. Times what grows with the shard count:
the build log read and the final manifest write, `read_manifest`, opening a `CacheReader`, its
epoch layout, `state_dict`, and batches at stream positions from 0 to the end of the stream.

train: `training.train` from a synthetic cache in child processes: tokens/s (train_seconds) and
peak RSS against tokens (checkpoints and evaluations included), and against d_sae by timing a few
steps of `Trainer.train_batch` (process CPU time) followed by a checkpoint (time, size) and the
SAE folder (time, size).

store: `features.build_feature_store` over synthetic activations for SAEs of growing width
(d_in 128, the toy model's, so the toy model can run "fire on text"), every latent labelled and
scored, then the web app (FastAPI TestClient, in process) timed per request: list pages (several
sorts, a deep page, filters), search, a feature page (API and HTML), and fire-on-text; p50/p95 of
--requests requests each. Plus the labelling estimate for every latent (`estimate_run`).

nocache: `training.train` straight from a model (`training.reader.model_batches`, the "no
cache" path of `saesteer train`) against building a cache and training from it, on a random
GPT-2-small-width model (d_model 768): tokens/s and peak RSS against tokens.

realsae: a user's real-size SAEs (SAELens-saved, 24,576 and 65,536 latents) on a GPT-2-shaped
model through the CLI: features build / show, serve's pages, steer (benchmarks/real_sae.py).

The machine is shared: process CPU time is given next to wall time where it matters, and growth
is read as ratios within one run. Check `uptime` before a heavy run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # helpers.tiny_model (the random models of the nocache runs)

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
HEADING = "## Scale"
HOOK = "blocks.0.hook_resid_post"
GB = 1e9


# ------------------------------------------------------------------------------------ helpers
def load_average() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_sizes(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def as_int(s: str | float) -> int:
    return int(float(s))


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    i = min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))
    return s[i]


def run_child(kind: str, params: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run `_child KIND PARAMS` of this file in a fresh process; returns its JSON result (which
    includes its own peak RSS)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", kind, json.dumps(params)]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"child {kind} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    last = [line for line in p.stdout.splitlines() if line.startswith("{")]
    return json.loads(last[-1])


def write_block(key: str, text: str) -> None:
    """Replace (or add) `<!-- scale:key -->...<!-- /scale:key -->` inside "## Scale" of RESULTS.md."""
    from results_md import replace_block

    replace_block(HEADING, f"scale:{key}", text, RESULTS)


def header(cmd: str) -> str:
    import torch

    return (f"Machine: {os.cpu_count()} CPU cores (shared), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
            f"load average {load_average()} at start. `python benchmarks/bench_scale.py {cmd}`")


def growth(xs: list[float], ys: list[float]) -> float:
    """Exponent b of y ~ x^b between the first and last point (1 = linear, 0 = flat)."""
    if len(xs) < 2 or xs[0] <= 0 or ys[0] <= 0 or ys[-1] <= 0 or xs[-1] == xs[0]:
        return float("nan")
    return math.log(ys[-1] / ys[0]) / math.log(xs[-1] / xs[0])


# ------------------------------------------------------------------------------- caches
def cache_settings(d_in: int, L: int, shard_contexts: int, name: str = "synthetic") -> dict[str, Any]:
    from training.manifest import FORMAT_NAME, FORMAT_VERSION

    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "model": {"id": name, "revision": None, "fingerprint": "0", "n_ctx": L, "d_model": d_in},
        "hooks": [HOOK], "d_in": {HOOK: d_in}, "dtype": "fp16", "context_length": L, "bos_policy": "none",
        "separator": "none", "exclude_tokens": "none", "excluded_token_ids": [], "tokenizer": {"name": "none", "sha256": "0"},
        "dataset": {"name": name}, "max_tokens": None, "shard_contexts": shard_contexts,
    }


def default_shard_contexts(d_in: int, L: int = 128) -> int:
    from training.plan import default_shard_contexts as dsc

    return dsc({HOOK: d_in}, "fp16", L)


def write_synthetic_cache(path: Path, rows: int, d_in: int, *, L: int = 128, shard_contexts: int | None = None,
                          seed: int = 0) -> dict[str, float]:
    """A cache in the real format written by the cache builder's writer (background thread,
    SHA-256, fsync, atomic rename, build log), from a pool of random fp16 rows. Returns timings."""
    import torch

    from training.writer import ShardBuffer, ShardWriter
    from training.manifest import PROGRESS_NAME, Manifest, read_progress, shard_file_name, write_manifest

    path.mkdir(parents=True, exist_ok=True)
    C = shard_contexts or default_shard_contexts(d_in, L)
    n_ctx = -(-rows // L)
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(C * L, d_in, generator=g).half()  # copied (rolled) into every shard: memcpy, not RNG
    buffers = [ShardBuffer({HOOK: d_in}, torch.float16, C, L, pin=False) for _ in range(2)]
    writer = ShardWriter(path, buffers, threaded=True)
    t0, c0 = time.perf_counter(), time.process_time()
    ctx, index = 0, 0
    try:
        while ctx < n_ctx:
            m = min(C, n_ctx - ctx)
            buf = writer.acquire()
            r = m * L
            shift = (index * 7919) % (C * L)
            a = buf.acts[HOOK]
            _rolled_copy(a, pool, shift, r)
            idx = torch.arange(ctx * L, ctx * L + r)
            buf.token_ids[:r] = (idx % 50000).to(torch.int32)
            buf.positions[:r] = (idx % L).to(torch.int32)
            buf.seq_index[:r] = idx // L
            buf.context_tokens[:m] = (torch.arange(m * L).view(m, L) % 50000).to(torch.int32)
            buf.rows, buf.contexts = r, m
            writer.submit(buf, {"index": index, "file": shard_file_name(index), "first_context": ctx,
                                "text_start": (0, 0), "text_end": (0, 0)})
            index += 1
            ctx += m
    finally:
        writer.close()
    shards = read_progress(path)
    write_manifest(path, Manifest(cache_settings(d_in, L, C), complete=True, shards=shards))
    (path / PROGRESS_NAME).unlink(missing_ok=True)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "shards": index,
            "rows": n_ctx * L, "bytes": du(path)}


def _rolled_copy(dst, pool, shift: int, r: int) -> None:
    n = pool.shape[0]
    first = min(r, n - shift)
    dst[:first].copy_(pool[shift:shift + first])
    done = first
    while done < r:
        take = min(n, r - done)
        dst[done:done + take].copy_(pool[:take])
        done += take


def drop_page_cache(path: Path) -> None:
    """Ask the kernel to drop the cached pages of every file under `path` (no root needed)."""
    for p in sorted(path.glob("*.safetensors")):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def child_read_cache(params: dict[str, Any]) -> dict[str, Any]:
    """Read a whole cache once with CacheReader (checksums verified), as the trainer does."""
    from training.reader import CacheReader

    path = Path(params["path"])
    if params.get("cold", True):
        drop_page_cache(path)
    reader = CacheReader(path, params.get("batch", 4096), seed=0, epochs=1, buffer_rows=params.get("buffer_rows", 1 << 20))
    t0, c0 = time.perf_counter(), time.process_time()
    rows = 0
    for b in reader:
        rows += b.acts.shape[0]
    reader.close()
    return {"rows": rows, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "peak_rss_mb": peak_rss_mb()}


def cmd_cache(args) -> tuple[str, dict]:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    d_in, L = args.d_in, 128
    row_bytes = d_in * 2 + 16 + 4  # fp16 acts + token id, position, context index + context tokens
    keep = args.keep_free * GB
    sizes = []
    for s in parse_sizes(args.sizes):
        if s == "max":
            fit = int((free_bytes(work) - keep - 2 * GB) / row_bytes)  # 2 GB margin for the other helpers
            sizes.append(max(0, fit // (L * 1000) * L * 1000))
        else:
            sizes.append(as_int(s))
    C = default_shard_contexts(d_in, L)
    rows_out = []
    for n in sizes:
        need = n * row_bytes
        if n <= 0 or free_bytes(work) - need < keep:
            print(f"skipping {n:,} rows: {need / GB:.1f} GB would leave less than {args.keep_free} GB free")
            continue
        path = work / f"cache_{n}"
        shutil.rmtree(path, ignore_errors=True)
        print(f"writing {n:,} rows x d_in {d_in} ({need / GB:.2f} GB) ...", flush=True)
        try:
            w = write_synthetic_cache(path, n, d_in, L=L, shard_contexts=C)
            r = run_child("read_cache", {"path": str(path)})
        finally:
            shutil.rmtree(path, ignore_errors=True)
        row = {"rows": w["rows"], "shards": w["shards"], "bytes": w["bytes"], "write_s": w["seconds"],
               "write_cpu_s": w["cpu_seconds"], "write_gb_s": w["bytes"] / w["seconds"] / GB,
               "read_s": r["seconds"], "read_cpu_s": r["cpu_seconds"], "read_gb_s": w["bytes"] / r["seconds"] / GB,
               "read_rows_s": r["rows"] / r["seconds"], "reader_peak_rss_mb": r["peak_rss_mb"]}
        rows_out.append(row)
        print(json.dumps(row), flush=True)
    lines = [
        "### Activation cache: write and read against size",
        "",
        header(f"cache --sizes {args.sizes} --d-in {d_in}"),
        f"Synthetic fp16 activations, d_in {d_in}, contexts of {L}, default shard size ({C} contexts = "
        f"{C * L:,} rows per shard), written by the cache builder's writer thread (SHA-256 + fsync + atomic rename + "
        f"build log), then read cold (page cache dropped) by `CacheReader` in a child process (batch 4096, SHA-256 of "
        f"every shard, fp16 -> fp32). Each cache deleted after measuring; at least {args.keep_free:g} GB left free.",
        "",
        "| rows | shards | GB on disk | write s (cpu s) | write GB/s | read s (cpu s) | read GB/s | read rows/s | reader peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in rows_out:
        lines.append(f"| {x['rows']:,} | {x['shards']:,} | {x['bytes'] / GB:.2f} | {x['write_s']:.1f} ({x['write_cpu_s']:.1f}) | "
                     f"{x['write_gb_s']:.2f} | {x['read_s']:.1f} ({x['read_cpu_s']:.1f}) | {x['read_gb_s']:.2f} | "
                     f"{x['read_rows_s']:,.0f} | {x['reader_peak_rss_mb']:,.0f} |")
    if len(rows_out) >= 2:
        xs = [x["rows"] for x in rows_out]
        lines += ["", f"Growth exponents (first to last size; 1 = linear): write time "
                      f"{growth(xs, [x['write_s'] for x in rows_out]):.2f}, read time {growth(xs, [x['read_s'] for x in rows_out]):.2f}, "
                      f"reader peak RSS {growth(xs, [x['reader_peak_rss_mb'] for x in rows_out]):.2f}."]
    return "\n".join(lines), {"cache": rows_out}


# ------------------------------------------------------------------------- 1e9-token reader
def cmd_reader(args) -> tuple[str, dict]:
    from training.manifest import (MANIFEST_NAME, PROGRESS_NAME, Manifest, append_progress, read_manifest, read_progress,
                                   shard_file_name, write_manifest)
    from training.reader import CacheReader
    from saes.fileio import sha256_file

    work = Path(args.work) / "sim1e9"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    d_in, L, tokens = args.d_in, 128, as_int(args.tokens)
    C = default_shard_contexts(d_in, L)
    rows_per_shard = C * L
    n_shards = -(-tokens // rows_per_shard)
    out: dict[str, Any] = {"d_in": d_in, "tokens": tokens, "rows_per_shard": rows_per_shard, "shards": n_shards}
    try:
        # one real shard (through the writer), hard-linked under every name
        real = work / "real"
        write_synthetic_cache(real, rows_per_shard, d_in, L=L, shard_contexts=C)
        src = real / shard_file_name(0)
        first = read_manifest(real).shards[0]  # as the writer recorded it: SHA-256 of the file and of each part
        size = src.stat().st_size
        out["shard_bytes"] = size
        t0 = time.perf_counter()
        for i in range(n_shards):
            os.link(src, work / shard_file_name(i))
        out["link_s"] = time.perf_counter() - t0
        infos = [dataclasses.replace(first, index=i, file=shard_file_name(i), first_context=i * C) for i in range(n_shards)]
        # the build log: appends (timed on a sample: each is an fsync), then its read at the end of the build
        t0 = time.perf_counter()
        sample = min(200, n_shards)
        for s in infos[:sample]:
            append_progress(work, s)
        out["progress_append_ms"] = (time.perf_counter() - t0) / sample * 1e3
        with open(work / PROGRESS_NAME, "ab") as f:
            f.write(b"".join((json.dumps(s.to_json(), separators=(",", ":")) + "\n").encode() for s in infos[sample:]))
        t0 = time.perf_counter()
        shards = read_progress(work)
        out["read_progress_s"] = time.perf_counter() - t0
        assert len(shards) == n_shards
        t0 = time.perf_counter()
        write_manifest(work, Manifest(cache_settings(d_in, L, C), complete=True, shards=shards))
        out["manifest_write_s"] = time.perf_counter() - t0
        out["manifest_bytes"] = (work / MANIFEST_NAME).stat().st_size
        (work / PROGRESS_NAME).unlink()
        t0 = time.perf_counter()
        man = read_manifest(work)
        out["manifest_read_s"] = time.perf_counter() - t0
        assert man.total_rows == n_shards * rows_per_shard
        # the reader: open, epoch layout, state, batches at positions through the stream
        buffer_rows = args.buffer_rows
        t0 = time.perf_counter()
        reader = CacheReader(work, 4096, seed=0, epochs=None, buffer_rows=buffer_rows, verify="never")
        out["reader_open_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        wins = reader.windows(0)
        out["epoch_layout_s"] = time.perf_counter() - t0
        out["windows"] = len(wins)
        t0 = time.perf_counter()
        for _ in range(10):
            st = reader.state_dict()
        out["state_dict_ms"] = (time.perf_counter() - t0) / 10 * 1e3
        out["state_json_bytes"] = len(json.dumps(st))
        t0 = time.perf_counter()
        out["sha256_mb_s"] = size / 2**20 / max(1e-9, (sha256_file(src), time.perf_counter() - t0)[1])
        # the per-batch window lookup: the old code rebuilt the list of window starts for every batch
        import numpy as np

        offs = np.random.default_rng(0).integers(0, reader.rows_per_epoch, 2000)
        t0 = time.perf_counter()
        for off in offs:
            int(np.searchsorted([w.start for w in wins], off, side="right"))
        out["lookup_before_us"] = (time.perf_counter() - t0) / len(offs) * 1e6
        t0 = time.perf_counter()
        for off in offs:
            int(np.searchsorted(reader._window_starts(0, wins), off, side="right"))
        out["lookup_after_us"] = (time.perf_counter() - t0) / len(offs) * 1e6
        out["batches_per_epoch"] = reader.rows_per_epoch // 4096
        total = reader.rows_per_epoch
        positions = [0, total // 10, total // 2, total - 40 * 4096, total + total // 2]  # last: in epoch 2
        per_pos = []
        for row in positions:
            reader.seek(row)
            it = iter(reader)
            t0 = time.perf_counter()
            next(it)  # loads the window
            first = time.perf_counter() - t0
            t1, c1 = time.perf_counter(), time.process_time()
            n = 0
            for _ in range(args.batches):
                next(it)
                n += 1
            dt = time.perf_counter() - t1
            per_pos.append({"row": row, "first_batch_s": first, "batch_ms": dt / n * 1e3,
                            "batch_cpu_ms": (time.process_time() - c1) / n * 1e3})
            print(json.dumps(per_pos[-1]), flush=True)
        out["positions"] = per_pos
        out["peak_rss_mb"] = peak_rss_mb()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out), flush=True)
    lines = [
        "### A 1e9-token cache: what grows with the shard count",
        "",
        header(f"reader --tokens {args.tokens} --d-in {d_in}"),
        f"{tokens:,} tokens at d_in {d_in} in fp16 = {n_shards:,} shards of {rows_per_shard:,} rows "
        f"({size / 2**20:.0f} MiB each, the default shard size), {n_shards * size / 1e12:.1f} TB; simulated with one real "
        f"shard hard-linked under every name (so the bytes read are page-cached: the figures are the bookkeeping, not the disk).",
        "",
        "| what | time |",
        "|---|---:|",
        f"| append one shard to the build log (fsync) | {out['progress_append_ms']:.2f} ms |",
        f"| read the build log of {n_shards:,} shards (end of build, resume) | {out['read_progress_s']:.2f} s |",
        f"| write the final manifest ({out['manifest_bytes'] / 2**20:.1f} MiB) | {out['manifest_write_s']:.2f} s |",
        f"| `read_manifest` | {out['manifest_read_s']:.2f} s |",
        f"| open a `CacheReader` | {out['reader_open_s']:.2f} s |",
        f"| epoch layout (shuffled shard order, {out['windows']:,} windows of <= {buffer_rows:,} rows) | {out['epoch_layout_s'] * 1e3:.1f} ms |",
        f"| `state_dict()` (checkpoint; {out['state_json_bytes']} bytes of JSON) | {out['state_dict_ms']:.2f} ms |",
        f"| finding a batch's window, before the fix (list of window starts rebuilt per batch) | {out['lookup_before_us']:.1f} us "
        f"= {out['lookup_before_us'] * out['batches_per_epoch'] / 1e6:.1f} s per epoch |",
        f"| finding a batch's window, after (starts kept per epoch) | {out['lookup_after_us']:.1f} us "
        f"= {out['lookup_after_us'] * out['batches_per_epoch'] / 1e6:.2f} s per epoch |",
        "",
        f"Batches of 4096 rows (fp16 -> fp32) at positions through the stream ({args.batches} batches after the first; "
        f"window {buffer_rows:,} rows, checksums off: the disk is not what is measured):",
        "",
        "| stream row | first batch (window load) s | ms per batch | CPU ms per batch |",
        "|---:|---:|---:|---:|",
    ]
    for p in per_pos:
        lines.append(f"| {p['row']:,} | {p['first_batch_s']:.2f} | {p['batch_ms']:.2f} | {p['batch_cpu_ms']:.2f} |")
    return "\n".join(lines), {"reader": out}


# --------------------------------------------------------------------------------- training
def synthetic_train_cache(path: Path, rows: int, d_in: int, seed: int = 0) -> Path:
    """A cache of sparse-feature activations (as bench_train.py's), for training runs."""
    from bench_train import synthetic_cache

    import bench_train

    bench_train.HOOK = HOOK
    return synthetic_cache(path, d_in, rows, seed=seed)


def child_train_tokens(params: dict[str, Any]) -> dict[str, Any]:
    import torch

    from training import train
    from training.config import CheckpointConfig, EvalConfig, LogConfig, RunConfig, SAESpec, TrainConfig, takes_k
    from training.reader import CacheReader

    torch.set_num_threads(1)
    cfg = RunConfig(
        saes=[SAESpec(params["arch"], d_sae=params["d_sae"], k=32 if takes_k(params["arch"]) else None)],
        train=TrainConfig(total_tokens=params["tokens"], batch_size=4096, holdout_tokens=16384, dead_tokens=1_000_000,
                          num_threads=1),
        checkpoint=CheckpointConfig(every_tokens=params["every"], keep_last=2),
        eval=EvalConfig(every_tokens=params["every"], ce_contexts=0),
        log=LogConfig(progress=False),
    )
    reader = CacheReader(params["cache"], 4096, seed=0, epochs=None, buffer_rows=params.get("buffer_rows", 1 << 20))
    marks: list[tuple[int, float]] = []  # (tokens, process CPU) after each step: the loop's CPU per token
    c0 = time.process_time()
    res = train(cfg, reader, params["out"], resume="never", on_step=lambda tr: marks.append((tr.tokens, time.process_time())))
    (t_a, c_a), (t_b, c_b) = marks[min(2, len(marks) - 2)], marks[-1]
    return {"tokens": res.tokens, "train_seconds": res.metrics["train_seconds"], "wall_seconds": res.metrics["wall_seconds"],
            "cpu_seconds": time.process_time() - c0, "loop_tokens_per_cpu_s": (t_b - t_a) / max(1e-9, c_b - c_a),
            "peak_rss_mb": peak_rss_mb(), "explained_variance": res.metrics["saes"][cfg.saes[0].name].get("explained_variance")}


def child_train_width(params: dict[str, Any]) -> dict[str, Any]:
    import torch

    from saes import save_sae
    from training.checkpoint import write_checkpoint
    from training.config import RunConfig, SAESpec, TrainConfig, takes_k
    from training.synthetic import SyntheticActivations
    from training.trainer import Trainer

    torch.set_num_threads(1)
    d_in, F = params["d_in"], params["d_sae"]
    cfg = RunConfig(saes=[SAESpec(params["arch"], d_sae=F, k=32 if takes_k(params["arch"]) else None)],
                    train=TrainConfig(total_tokens=10**9, batch_size=4096, dead_tokens=10**9, num_threads=1))
    src = SyntheticActivations(d_in, 4096, n_features=4 * d_in, active=16, seed=0)
    tr = Trainer(cfg, d_in)
    tr.initialize(src.batch(10**6))
    times, cpus = [], []
    for i in range(params["warmup"] + params["steps"]):
        x = src.batch(i)
        t0, c0 = time.perf_counter(), time.process_time()
        tr.train_batch(x)
        if i >= params["warmup"]:
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    out = Path(params["out"])
    t0 = time.perf_counter()
    state, tensors = tr.checkpoint_payload({"kind": "skip", "batches": tr.step})
    ck = write_checkpoint(out / "checkpoints", tr.step, state, tensors)
    ck_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sae_dir = save_sae(tr.folded_sae(tr.members[0]), out / "sae")
    sae_s = time.perf_counter() - t0
    return {"d_sae": F, "step_s": statistics.median(times), "step_cpu_s": statistics.median(cpus),
            "tokens_per_s_cpu": 4096 / statistics.median(cpus), "peak_rss_mb": peak_rss_mb(),
            "checkpoint_s": ck_s, "checkpoint_bytes": du(ck), "sae_s": sae_s, "sae_bytes": du(sae_dir),
            "step_method": tr.step_method}


def cmd_train(args) -> tuple[str, dict]:
    work = Path(args.work) / "train"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tokens = [as_int(t) for t in parse_sizes(args.tokens)]
    widths = [as_int(t) for t in parse_sizes(args.d_sae)]
    by_tokens, by_width = [], []
    try:
        if tokens:
            cache = synthetic_train_cache(work / "cache", args.cache_rows, args.d_in)
            for t in tokens:
                r = run_child("train_tokens", {"arch": args.arch, "d_sae": args.tokens_d_sae, "tokens": t, "cache": str(cache),
                                               "out": str(work / f"run_{t}"), "every": max(4096, t // 4)})
                shutil.rmtree(work / f"run_{t}", ignore_errors=True)
                by_tokens.append(r)
                print(json.dumps(r), flush=True)
        for F in widths:
            r = run_child("train_width", {"arch": args.arch, "d_in": args.width_d_in, "d_sae": F, "steps": args.steps,
                                          "warmup": 1, "out": str(work / f"w_{F}")})
            shutil.rmtree(work / f"w_{F}", ignore_errors=True)
            by_width.append(r)
            print(json.dumps(r), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = ["### Training against tokens and against d_sae", "", header(f"train --tokens {args.tokens} --d-sae {args.d_sae}")]
    if by_tokens:
        lines += [
            "",
            f"`training.train` of a {args.arch} SAE (d_in {args.d_in}, d_sae {args.tokens_d_sae}, k 32, batch 4096, 1 torch "
            f"thread) from a synthetic cache of {args.cache_rows:,} rows (the reader loops over it), checkpoint and "
            f"evaluation every quarter of the run, each run in its own process:",
            "",
            "| tokens | wall s (loop) | process CPU s (whole run) | tokens per CPU-second (training loop) | peak RSS MB | explained variance |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in by_tokens:
            lines.append(f"| {r['tokens']:,} | {r['train_seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                         f"{r['loop_tokens_per_cpu_s']:,.0f} | {r['peak_rss_mb']:,.0f} | {r['explained_variance']:.3f} |")
        xs = [r["tokens"] for r in by_tokens]
        lines += ["", f"Growth exponents (first to last; 1 = linear, 0 = flat): process CPU time "
                      f"{growth(xs, [r['cpu_seconds'] for r in by_tokens]):.2f}, CPU per token in the loop "
                      f"{growth(xs, [1 / r['loop_tokens_per_cpu_s'] for r in by_tokens]):.2f}, peak RSS "
                      f"{growth(xs, [r['peak_rss_mb'] for r in by_tokens]):.3f}."]
    if by_width:
        lines += [
            "",
            f"A few steps of `Trainer.train_batch` ({args.arch}, d_in {args.width_d_in}, k 32, batch 4096, 1 thread, "
            f"step method {by_width[0]['step_method']}; median of {args.steps} steps after 1 warm-up, process CPU time), "
            f"then one checkpoint (SAE, Adam state, counters) and the SAE folder, each in its own process:",
            "",
            "| d_sae | step CPU s | tokens/s per core | peak RSS MB | checkpoint s | checkpoint MB | SAE folder s | SAE folder MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in by_width:
            lines.append(f"| {r['d_sae']:,} | {r['step_cpu_s']:.2f} | {r['tokens_per_s_cpu']:,.0f} | {r['peak_rss_mb']:,.0f} | "
                         f"{r['checkpoint_s']:.2f} | {r['checkpoint_bytes'] / 2**20:,.0f} | {r['sae_s']:.2f} | "
                         f"{r['sae_bytes'] / 2**20:,.0f} |")
        xs = [r["d_sae"] for r in by_width]
        lines += ["", "Growth exponents against d_sae (first to last; 1 = linear): step CPU "
                      f"{growth(xs, [r['step_cpu_s'] for r in by_width]):.2f}, peak RSS {growth(xs, [r['peak_rss_mb'] for r in by_width]):.2f}, "
                      f"checkpoint size {growth(xs, [r['checkpoint_bytes'] for r in by_width]):.2f}, checkpoint time "
                      f"{growth(xs, [r['checkpoint_s'] for r in by_width]):.2f}."]
    return "\n".join(lines), {"train_tokens": by_tokens, "train_width": by_width}


# ------------------------------------------------------------------------- store and web
TOY_HOOK = "blocks.2.hook_resid_post"
FIRE_TEXT = "the old chef walks to the quiet forest . she says that the small ship is near the library ."
LABEL_WORDS = [f"{a}{b}" for a in ("ocean", "forest", "city", "kitchen", "motion", "sail", "river", "stone", "music",
                                   "number", "colour", "mood", "speech", "place", "name", "time")
               for b in ("", "s", "ward", "ing", "ly", "ish", "er", "est", "like", "ful", "less", "ness", "hood", "dom",
                         "ous", "ic", "al", "ive", "ent", "ery", "ism", "ist", "ite", "ize", "oid", "ure", "ship", "work",
                         "scape", "craft", "line", "side")]


class _NoBackend:
    """A judge backend that is never called (estimates only)."""

    kind = "openai"

    def __init__(self, model: str) -> None:
        self.model = model

    async def chat(self, request):  # pragma: no cover - estimate_run never sends
        raise RuntimeError("no requests in a dry run")

    def cache_extra(self) -> dict:
        return {}


def _time_requests(fn: Callable[[int], Any], n: int) -> dict[str, float]:
    fn(0)  # warm (first request compiles templates, warms SQLite's page cache)
    ms = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i + 1)
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": statistics.median(ms), "p95_ms": percentile(ms, 0.95), "max_ms": max(ms)}


def child_store(params: dict[str, Any]) -> dict[str, Any]:
    """Build one store of `d_sae` latents over synthetic activations, label and score every latent,
    estimate the labelling run, then time the web app's requests."""
    import random

    import torch

    import saes
    from autointerp.config import LabelConfig
    from autointerp.featurestore import FeatureStoreLabels
    from autointerp.judge import Judge
    from autointerp.runner import estimate_run
    from features import BuildConfig, FeatureStore, LabelProvenance, ScoreInput, build_feature_store
    from features.source import SyntheticSource
    from saesteer.models import load_model

    torch.set_num_threads(1)
    F, n_tokens, L = params["d_sae"], params["tokens"], 128
    path = Path(params["path"])
    model = load_model("toy")
    d_in = model.cfg.d_model
    sae = saes.create_sae("topk", d_in, F, k=32, generator=torch.Generator().manual_seed(0),
                          metadata={"hook_name": TOY_HOOK, "model_name": "toy"})
    sae.eval()
    src = SyntheticSource(n_tokens // L, L, d_in, vocab_size=model.cfg.d_vocab, hook_name=TOY_HOOK, contexts_per_chunk=64)
    marks: dict[str, float] = {}

    def on_event(name: str, info: dict) -> None:
        if name not in marks:
            marks[name] = time.perf_counter()

    t0, c0 = time.perf_counter(), time.process_time()
    cfg = BuildConfig(checkpoint_rows=0, **params.get("build", {}))
    res = build_feature_store(path, sae, src, cfg, model=model, progress=False, on_event=on_event)
    build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    out: dict[str, Any] = {
        "d_sae": F, "tokens": src.n_rows, "build_s": build_s, "build_cpu_s": build_cpu, "pass_s": res.pass_seconds,
        "relations_s": marks.get("block", t0) - marks.get("pass_done", t0), "write_s": time.perf_counter() - marks.get("block", t0),
        "build_peak_rss_mb": peak_rss_mb(), "state_mb": res.state_bytes / 2**20,
    }
    # labelling estimate (nothing sent), then a label and two scores for every alive latent
    store = FeatureStore.open(path, readonly=False)
    judge = Judge(_NoBackend(params.get("judge_model", "gpt-4o-mini")))
    t0 = time.perf_counter()
    est = estimate_run(FeatureStoreLabels(store), judge, LabelConfig(), sample=200)
    out["estimate_s"] = time.perf_counter() - t0
    out["label_estimate"] = {"latents": est.latents, "calls": est.calls, "prompt_tokens": est.prompt_tokens,
                             "completion_tokens": est.completion_tokens, "cost_usd": est.cost_usd,
                             "judge": est.judge}
    alive = [r.latent for r in store.list_features(sort="latent", filter={"alive_only": True}, limit=F)]
    out["alive"] = len(alive)
    rng = random.Random(0)
    prov = LabelProvenance(judge_model="bench", judge_kind="human", prompt_version="scale-1")
    # the API's rate (one transaction per call, as the labeller writes) on the first latents ...
    n_api = min(len(alive), params.get("api_labels", 1000))
    t0 = time.perf_counter()
    for i in alive[:n_api]:
        text = " ".join(rng.sample(LABEL_WORDS, 3))
        lid = store.write_label(i, text, provenance=prov, explanation=f"latent {i}: {text}")
        store.write_scores(i, [ScoreInput("detection", rng.random(), 20), ScoreInput("fuzzing", rng.random(), 20)],
                           provenance=prov, label_id=lid)
    out["label_write_per_s"] = n_api / max(1e-9, time.perf_counter() - t0)
    # ... and the rest in one transaction with the same rows (a benchmark shortcut, not an API)
    bulk_labels(store, alive[n_api:], rng)
    store.checkpoint_wal()
    store.close()
    out["file_mb"] = sum(du(p) for p in path.parent.glob(path.name + "*")) / 2**20
    out["web"] = time_web(path, model, sae, alive, params["requests"])
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def bulk_labels(store, ids: list[int], rng) -> None:
    """The rows `write_label` + `write_scores` would add (label, FTS text, two scores), for many
    latents in one transaction."""
    if not ids:
        return
    with store.transaction() as c:
        pid = c.execute("SELECT MAX(id) FROM label_provenance").fetchone()[0]
        for i in ids:
            text = " ".join(rng.sample(LABEL_WORDS, 3))
            lid = c.execute("INSERT INTO labels(latent, label, explanation, provenance_id, created_at) "
                            "VALUES (?, ?, ?, ?, '2026-01-01T00:00:00Z')", (i, text, f"latent {i}: {text}", pid)).lastrowid
            c.execute("UPDATE feature_fts SET label = ? WHERE rowid = ?", (text, i))
            for m in ("detection", "fuzzing"):
                c.execute("INSERT INTO scores(latent, label_id, method, value, n_examples, provenance_id, created_at) "
                          "VALUES (?, ?, ?, ?, 20, ?, '2026-01-01T00:00:00Z')", (i, lid, m, rng.random(), pid))


def time_web(path: Path, model, sae, alive: list[int], n: int) -> dict[str, dict[str, float]]:
    """p50/p95 of each kind of request, through the real app (FastAPI TestClient, in process)."""
    import random

    from fastapi.testclient import TestClient

    from features import FeatureStore
    from saesteer.web import Limits, ModelQueue, ServeConfig, StoreEntry, create_app
    from saesteer.web.model_source import ModelEngine
    from saesteer.web.store_source import StoreCatalog

    limits = Limits()
    t0 = time.perf_counter()
    cat = StoreCatalog(FeatureStore.open(path), name="s")
    entry = StoreEntry("s", cat, ModelEngine(model, sae, cat, limits), ModelQueue("toy", limits.max_pending))
    app = create_app([entry], config=ServeConfig(port=8000), limits=limits)
    open_s = time.perf_counter() - t0
    rng = random.Random(1)
    ids = [rng.choice(alive) for _ in range(n + 1)]
    deep = max(0, len(alive) - 100)
    words = [rng.choice(LABEL_WORDS) for _ in range(n + 1)]
    out: dict[str, dict[str, float]] = {"open": {"p50_ms": open_s * 1e3, "p95_ms": open_s * 1e3, "max_ms": open_s * 1e3}}
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        def get(url: str) -> None:
            r = c.get(url)
            if r.status_code != 200:
                raise RuntimeError(f"GET {url}: {r.status_code} {r.text[:300]}")

        def post(url: str, body: dict) -> None:
            r = c.post(url, json=body)
            if r.status_code != 200:
                raise RuntimeError(f"POST {url}: {r.status_code} {r.text[:300]}")

        cases: dict[str, Callable[[int], Any]] = {
            "list (index)": lambda i: get("/api/stores/s/features?limit=50"),
            "list (frequency)": lambda i: get("/api/stores/s/features?sort=frequency&limit=50"),
            "list (label)": lambda i: get("/api/stores/s/features?sort=label&limit=50"),
            "list (score)": lambda i: get("/api/stores/s/features?sort=score&limit=50"),
            "list (deep page)": lambda i: get(f"/api/stores/s/features?sort=frequency&offset={deep}&limit=50"),
            "list (label filter)": lambda i: get(f"/api/stores/s/features?label={words[i]}&limit=50"),
            "list (min score)": lambda i: get("/api/stores/s/features?min_score=0.9&sort=score&limit=50"),
            "search (label word)": lambda i: get(f"/api/stores/s/search?q={words[i]}&limit=20"),
            "search (common token)": lambda i: get("/api/stores/s/search?q=the&limit=20"),
            "feature (API)": lambda i: get(f"/api/stores/s/features/{ids[i]}"),
            "list page (HTML)": lambda i: get("/s/s?sort=frequency"),
            "search page (HTML)": lambda i: get(f"/s/s/search?q={words[i]}"),
            "feature page (HTML)": lambda i: get(f"/s/s/f/{ids[i]}"),
            "fire on text (API)": lambda i: post("/api/stores/s/fire", {"text": FIRE_TEXT, "top_k": 5}),
        }
        for name, fn in cases.items():
            out[name] = _time_requests(fn, n)
            print(f"  {name}: p50 {out[name]['p50_ms']:.1f} ms, p95 {out[name]['p95_ms']:.1f} ms", flush=True)
    return out


def _coact_sample(F: int, Q: int, K: int, seed: int = 0):
    """A co-activation sample like the build pass's: Q events per latent, K latents active on each
    (power-law popular latents, so that counts overlap as in a trained SAE)."""
    import torch

    from features.analysis import CoactSample

    g = torch.Generator().manual_seed(seed)
    p = 1.0 / (torch.arange(F, dtype=torch.float64) + 20.0) ** 0.7
    lat = torch.multinomial((p / p.sum()).float(), F * Q * K, replacement=True, generator=g).view(F, Q, K)
    lat[:, :, 0] = torch.arange(F).view(F, 1)  # the latent itself is active on its events
    lat = lat.sort(dim=2).values
    dup = torch.zeros_like(lat, dtype=torch.bool)
    dup[:, :, 1:] = lat[:, :, 1:] == lat[:, :, :-1]
    lat[dup] = -1
    n_fires = torch.full((F,), Q * 4)
    return CoactSample(lat.to(torch.int32), torch.full((F,), Q), n_fires)


def cmd_relations(args) -> tuple[str, dict]:
    """Co-activation neighbours: the sparse version against the dense reference (the pre-fix code)."""
    import torch

    from features.analysis import coact_neighbours, coact_neighbours_dense

    torch.set_num_threads(1)
    rows = []
    for F in [as_int(x) for x in parse_sizes(args.latents)]:
        sample = _coact_sample(F, 32, 32)
        c0 = time.process_time()
        fast = coact_neighbours(sample, 10)
        sparse_s = time.process_time() - c0
        dense_s = None
        if F <= args.dense_max:
            c0 = time.process_time()
            ref = coact_neighbours_dense(sample, 10)
            dense_s = time.process_time() - c0
            assert torch.equal(fast.score_Fn, ref.score_Fn)
        rows.append({"latents": F, "sparse_cpu_s": sparse_s, "dense_cpu_s": dense_s})
        print(json.dumps(rows[-1]), flush=True)
    lines = ["### Co-activation neighbours: before and after", "", header(f"relations --latents {args.latents}"),
             "Each latent's sample of 32 firing events with up to 32 co-active latents (power-law popular), 10 "
             "neighbours kept, 1 thread, process CPU seconds. Before: every (f, g) pair scored in dense row blocks "
             "(now `coact_neighbours_dense`, the reference); after: only the pairs seen in the samples "
             "(`coact_neighbours`). Scores equal (checked) wherever the dense one ran.", "",
             "| latents | before (dense) CPU s | after (sparse) CPU s |", "|---:|---:|---:|"]
    for r in rows:
        d = f"{r['dense_cpu_s']:.1f}" if r["dense_cpu_s"] is not None else "not run"
        lines.append(f"| {r['latents']:,} | {d} | {r['sparse_cpu_s']:.1f} |")
    done = [r for r in rows if r["dense_cpu_s"]]
    if len(done) >= 2:
        xs = [r["latents"] for r in done]
        lines += ["", f"Growth exponents (1 = linear): before {growth(xs, [r['dense_cpu_s'] for r in done]):.2f}, "
                      f"after {growth([r['latents'] for r in rows], [r['sparse_cpu_s'] for r in rows]):.2f}."]
    return "\n".join(lines), {"relations": rows}


def _nocache_model(d_model: int, n_layers: int):
    from helpers.tiny_model import make_model, make_tokenizer

    tok = make_tokenizer()
    return make_model(tok, d_model=d_model, n_layers=n_layers, n_heads=12, n_ctx=128, seed=0), tok


def _nocache_config(tokens: int, d_sae: int):
    from training.config import CheckpointConfig, EvalConfig, LogConfig, RunConfig, SAESpec, TrainConfig

    return RunConfig(saes=[SAESpec("topk", d_sae=d_sae, k=32)],
                     train=TrainConfig(total_tokens=tokens, batch_size=4096, holdout_tokens=8192, num_threads=1),
                     checkpoint=CheckpointConfig(every_tokens=max(4096, tokens // 2)),
                     eval=EvalConfig(every_tokens=0, ce_contexts=0), log=LogConfig(progress=False))


def child_nocache(params: dict[str, Any]) -> dict[str, Any]:
    """`saesteer train` without a cache: batches straight from the model (training.reader.model_batches)."""
    import torch

    from training import train
    from training.live import model_batches
    from training.text import TextConfig

    torch.set_num_threads(1)
    model, tok = _nocache_model(params["d_model"], params["n_layers"])
    text = TextConfig(dataset=params["corpus"], context_length=128)
    hook = f"blocks.{params['n_layers'] // 2 - 1}.hook_resid_post"
    cfg = _nocache_config(params["tokens"], params["d_sae"])
    marks: list[tuple[int, float]] = []
    c0 = time.process_time()
    res = train(cfg, model_batches(model, text, hook, 4096, tokenizer=tok, seed=0), params["out"], resume="never",
                on_step=lambda tr: marks.append((tr.tokens, time.process_time())))
    (t_a, c_a), (t_b, c_b) = marks[0], marks[-1]
    return {"tokens": res.tokens, "cpu_seconds": time.process_time() - c0, "loop_tokens_per_cpu_s": (t_b - t_a) / max(1e-9, c_b - c_a),
            "peak_rss_mb": peak_rss_mb(), "stopped_early": res.stopped_early}


def child_cached(params: dict[str, Any]) -> dict[str, Any]:
    """The cached path on the same model and text: `build_cache`, then `train` from a CacheReader."""
    import torch

    from training import train
    from training.cache import build_cache
    from training.cache_config import CacheConfig
    from training.reader import CacheReader
    from training.text import TextConfig

    torch.set_num_threads(1)
    model, tok = _nocache_model(params["d_model"], params["n_layers"])
    text = TextConfig(dataset=params["corpus"], context_length=128)
    hook = f"blocks.{params['n_layers'] // 2 - 1}.hook_resid_post"
    cache_dir = Path(params["out"]) / "cache"
    c0 = time.process_time()
    build_cache(model, text, CacheConfig(out=str(cache_dir), hooks=[hook], max_tokens=params["tokens"] + 16384),
                tokenizer=tok, progress=False, log=None)
    cache_cpu = time.process_time() - c0
    rss_after_cache = peak_rss_mb()
    cfg = _nocache_config(params["tokens"], params["d_sae"])
    marks: list[tuple[int, float]] = []
    c1 = time.process_time()
    res = train(cfg, CacheReader(cache_dir, 4096, seed=0, epochs=None), Path(params["out"]) / "run", resume="never",
                on_step=lambda tr: marks.append((tr.tokens, time.process_time())))
    (t_a, c_a), (t_b, c_b) = marks[0], marks[-1]
    return {"tokens": res.tokens, "cache_cpu_s": cache_cpu, "train_cpu_s": time.process_time() - c1,
            "loop_tokens_per_cpu_s": (t_b - t_a) / max(1e-9, c_b - c_a), "peak_rss_mb": peak_rss_mb(),
            "peak_rss_after_cache_mb": rss_after_cache, "cache_bytes": du(cache_dir)}


def cmd_nocache(args) -> tuple[str, dict]:
    from helpers.tiny_model import write_corpus

    work = Path(args.work) / "nocache"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tokens = [as_int(t) for t in parse_sizes(args.tokens)]
    corpus = work / "corpus"
    write_corpus(corpus, n_docs=max(2000, max(tokens) // 25), seed=0, n_files=4)
    base = {"corpus": str(corpus), "d_model": args.nocache_d_model, "n_layers": args.nocache_layers, "d_sae": 4096}
    nocache, cached = [], []
    try:
        for t in tokens:
            r = run_child("nocache", {**base, "tokens": t, "out": str(work / f"nc_{t}")})
            shutil.rmtree(work / f"nc_{t}", ignore_errors=True)
            nocache.append(r)
            print(json.dumps(r), flush=True)
        r = run_child("cached", {**base, "tokens": tokens[-1], "out": str(work / "cached")})
        cached.append(r)
        print(json.dumps(r), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    c = cached[-1]
    lines = [
        "### Training without a cache (activations straight from the model)",
        "",
        header(f"nocache --tokens {args.tokens}"),
        f"A random GPT-2-small-width model (d_model {args.nocache_d_model}, {args.nocache_layers} layers, 12 heads, "
        f"contexts of 128, word-level tokenizer, generated corpus), hook blocks.{args.nocache_layers // 2 - 1}.hook_resid_post; "
        "TopK SAE d_sae 4096, k 32, batch 4096, 1 torch thread; checkpoint at half and at the end. No cache: "
        "`training.reader.model_batches` (the path `saesteer train` takes without --cache; rows shuffled in windows "
        "of 65,536). Each run in its own process; process CPU time.",
        "",
        "| path | tokens | process CPU s | tokens per CPU-second (whole run) | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in nocache:
        lines.append(f"| no cache | {r['tokens']:,} | {r['cpu_seconds']:.1f} | {r['tokens'] / r['cpu_seconds']:,.0f} | "
                     f"{r['peak_rss_mb']:,.0f} |")
    both = c["cache_cpu_s"] + c["train_cpu_s"]
    lines.append(f"| cached: build the cache | {c['tokens']:,} | {c['cache_cpu_s']:.1f} | {c['tokens'] / c['cache_cpu_s']:,.0f} | "
                 f"{c['peak_rss_after_cache_mb']:,.0f} |")
    lines.append(f"| cached: train from it | {c['tokens']:,} | {c['train_cpu_s']:.1f} | {c['tokens'] / c['train_cpu_s']:,.0f} | "
                 f"{c['peak_rss_mb']:,.0f} |")
    lines.append(f"| cached: both | {c['tokens']:,} | {both:.1f} | {c['tokens'] / both:,.0f} | |")
    xs = [r["tokens"] for r in nocache]
    if len(xs) >= 2:
        lines += ["", f"No-cache peak RSS growth exponent against tokens: {growth(xs, [r['peak_rss_mb'] for r in nocache]):.3f} "
                      "(0 = flat)."]
    return "\n".join(lines), {"nocache": nocache, "cached": cached}


def build_overrides(text: str) -> dict[str, int]:
    """'n_negative=4,negative_pool=256' -> BuildConfig overrides."""
    out = {}
    for part in parse_sizes(text or ""):
        k, _, v = part.partition("=")
        out[k.strip()] = int(v)
    return out


def cmd_store(args) -> tuple[str, dict]:
    work = Path(args.work) / "store"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results = []
    try:
        for F in [as_int(x) for x in parse_sizes(args.latents)]:
            path = work / f"s{F}.db"
            print(f"store with {F:,} latents ...", flush=True)
            r = run_child("store", {"d_sae": F, "tokens": args.store_tokens, "path": str(path), "requests": args.requests,
                                    "build": build_overrides(args.store_build)})
            for p in work.glob(path.name + "*"):
                p.unlink()
            results.append(r)
            print(json.dumps(r), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    xs = [r["d_sae"] for r in results]
    lines = [
        "### Feature store and web app against latents",
        "",
        header(f"store --latents {args.latents} --store-tokens {args.store_tokens}"),
        f"TopK SAE (random weights, k 32) on d_in 128 (the toy model's width, so that the toy model runs \"fire on "
        f"text\"), {results[0]['tokens'] if results else 0:,} tokens of synthetic activations, BuildConfig defaults "
        f"(top 20, 32 quantile samples, 20 negatives from a pool of 1024, 10 decoder and co-activation neighbours, logit "
        f"effects over the toy vocabulary){' except ' + args.store_build if args.store_build else ''}; then every alive "
        f"latent gets a label (3 words) and two scores (the first 1000 through `FeatureStore.write_label` / "
        f"`write_scores`, whose rate is shown, the rest in one transaction); each size in its own process. Wall "
        f"seconds, with process CPU seconds where given: the machine was shared.",
        "",
        "| latents | build s (cpu s) | pass s | relations s | writing s | build peak RSS MB | pass state MB | file MB | labels+scores written /s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['d_sae']:,} | {r['build_s']:.1f} ({r['build_cpu_s']:.1f}) | {r['pass_s']:.1f} | {r['relations_s']:.1f} | "
                     f"{r['write_s']:.1f} | {r['build_peak_rss_mb']:,.0f} | {r['state_mb']:,.0f} | {r['file_mb']:,.0f} | "
                     f"{r['label_write_per_s']:,.0f} |")
    if len(results) >= 2:
        lines += ["", "Growth exponents against latents (1 = linear): build CPU "
                      f"{growth(xs, [r['build_cpu_s'] for r in results]):.2f}, relations "
                      f"{growth(xs, [r['relations_s'] for r in results]):.2f}, writing {growth(xs, [r['write_s'] for r in results]):.2f}, "
                      f"file size {growth(xs, [r['file_mb'] for r in results]):.2f}, build peak RSS "
                      f"{growth(xs, [r['build_peak_rss_mb'] for r in results]):.2f}."]
    if results:
        names = [k for k in results[0]["web"]]
        lines += ["", f"Web requests through the app (FastAPI TestClient in process, {args.requests} requests each after one "
                      "warm-up; p50 / p95 ms; \"open\" = opening the store and building the app, once):", "",
                  "| request | " + " | ".join(f"{r['d_sae']:,} latents" for r in results) + " |",
                  "|---|" + "---:|" * len(results)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(f"{r['web'][name]['p50_ms']:.1f} / {r['web'][name]['p95_ms']:.1f}"
                                                      for r in results) + " |")
        lines += ["", "Labelling estimate (`autointerp.runner.estimate_run`, default LabelConfig: one explain request and the "
                      "detection and fuzzing requests per latent; prompts built from the store for 200 sampled latents, "
                      "nothing sent):", "",
                  "| latents to label | requests | prompt tokens | completion tokens | cost (judge) | estimate s |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in results:
            e = r["label_estimate"]
            cost = f"${e['cost_usd']:,.2f} ({e['judge']})" if e["cost_usd"] is not None else "n/a"
            lines.append(f"| {e['latents']:,} | {e['calls']:,} | {e['prompt_tokens']:,} | {e['completion_tokens']:,} | {cost} | "
                         f"{r['estimate_s']:.1f} |")
    return "\n".join(lines), {"store": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("cache", "reader", "train", "store", "relations", "nocache", "realsae", "all",
                                       "_child"))
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--work", default=os.environ.get("SCALE_WORK", str(Path(tempfile.gettempdir()) / "saesteer_scale")),
                   help="scratch directory (everything made there is deleted)")
    p.add_argument("--write", action="store_true", help="put the tables into benchmarks/RESULTS.md under '## Scale'")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--keep-free", type=float, default=30.0, help="GB the cache command always leaves free on the disk")
    # cache
    p.add_argument("--sizes", default="1e5,1e6,1e7,max", help="cache: rows per cache ('max': the largest that fits)")
    p.add_argument("--d-in", type=int, default=None, help="cache: 768; reader: 2304; train (tokens): 256")
    # reader
    p.add_argument("--tokens", default=None, help="reader: 1e9; train: 1e5,1e6,4e6; nocache: 65536,196608,393216")
    p.add_argument("--buffer-rows", type=int, default=1 << 17, help="reader: shuffle window in rows")
    p.add_argument("--batches", type=int, default=40, help="reader: batches timed at each position")
    # train
    p.add_argument("--arch", default="topk")
    p.add_argument("--d-sae", default="4096,16384,65536,131072", help="train: widths timed for a few steps")
    p.add_argument("--tokens-d-sae", type=int, default=4096, help="train: d_sae of the runs against tokens")
    p.add_argument("--width-d-in", type=int, default=512, help="train: d_in of the width sweep")
    p.add_argument("--cache-rows", type=int, default=1_048_576 + 16384, help="train: rows of the synthetic cache")
    p.add_argument("--steps", type=int, default=3, help="train: timed steps per width")
    # store
    p.add_argument("--latents", default="8192,32768,131072", help="store: SAE widths")
    p.add_argument("--store-tokens", type=int, default=65536, help="store: tokens of the build pass")
    p.add_argument("--requests", type=int, default=40, help="store: requests per web endpoint")
    p.add_argument("--store-build", default="", help="store: BuildConfig overrides, e.g. n_negative=4,negative_pool=256")
    p.add_argument("--nocache-d-model", type=int, default=768, help="nocache: model width")
    p.add_argument("--nocache-layers", type=int, default=4, help="nocache: model layers (the hook is in the middle)")
    p.add_argument("--dense-max", type=int, default=32768, help="relations: widest SAE the dense reference runs on")
    # realsae
    p.add_argument("--sae-names", default="res-jb-24k,topk-65k", help="realsae: which SAEs (real_sae.SAES)")
    p.add_argument("--real-tokens", type=int, default=400_000, help="realsae: most tokens cached (the corpus has ~205k)")
    p.add_argument("--real-latent", type=int, default=24000, help="realsae: the latent shown, paged and steered")
    p.add_argument("--repeats", type=int, default=3, help="realsae: runs of each short command (median)")
    args = p.parse_args(argv)

    if args.command == "_child":
        kind, params = args.rest[0], json.loads(args.rest[1])
        print(json.dumps(CHILDREN[kind](params)), flush=True)
        return 0
    commands = ["cache", "reader", "train", "relations", "store", "nocache"] if args.command == "all" else [args.command]
    figures: dict[str, Any] = {}
    for c in commands:
        a = argparse.Namespace(**vars(args))
        if a.d_in is None:
            a.d_in = {"cache": 768, "reader": 2304, "train": 256}.get(c, 768)
        if a.tokens is None:
            a.tokens = {"reader": "1e9", "train": "1e5,1e6,4e6", "nocache": "65536,196608,393216"}.get(c, "")
        text, figs = COMMANDS[c](a)
        figures.update(figs)
        print("\n" + text + "\n", flush=True)
        if args.write:
            write_block(c, text)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def cmd_realsae(args) -> tuple[str, dict]:
    import real_sae
    from training.manifest import read_manifest

    work = Path(args.work) / "realsae"
    figs = real_sae.run(work, args.real_tokens, args.repeats, args.real_latent, parse_sizes(args.sae_names),
                        args.requests)
    tokens = read_manifest(work / "cache").total_rows
    cmd = f"python benchmarks/bench_scale.py realsae --sae-names {args.sae_names} --work {args.work}"
    return "### A real-size SAE through the CLI\n\n" + header("realsae") + "\n" + real_sae.table(figs, cmd, tokens), figs


COMMANDS: dict[str, Callable[[argparse.Namespace], tuple[str, dict]]] = {
    "cache": cmd_cache, "reader": cmd_reader, "train": cmd_train, "store": cmd_store, "relations": cmd_relations,
    "nocache": cmd_nocache, "realsae": cmd_realsae,
}
CHILDREN: dict[str, Callable[[dict], dict]] = {
    "read_cache": child_read_cache, "train_tokens": child_train_tokens, "train_width": child_train_width,
    "store": child_store, "nocache": child_nocache, "cached": child_cached,
}

if __name__ == "__main__":
    raise SystemExit(main())
