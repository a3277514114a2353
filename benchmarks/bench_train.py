"""End-to-end SAE training from a disk cache: ours (training.train) against SAELens's SAETrainer.

    python benchmarks/bench_train.py speed      [--steps 40] [--rounds 3]   # synthetic d_in 512 cache
    python benchmarks/bench_train.py quality    --cache DIR [--tokens N]    # equal tokens, real activations
    python benchmarks/bench_train.py toyworld   --cache DIR [--tokens N]    # our 3 SAEs, EV / CE rec / dead
    python benchmarks/bench_train.py all        --cache DIR
    python benchmarks/bench_train.py sparsify-speed   [--steps 20] [--threads-list 1,2]  # TopK vs EleutherAI sparsify
    python benchmarks/bench_train.py sparsify-quality --cache DIR [--tokens N] [--recipes default,auxk,adam]

speed: per architecture, ours and SAELens train on the same cache (fp16 shards on disk, same
reader, seed, batch size, LR schedule, AuxK coefficient, dead window, activation normalisation),
interleaved, `--rounds` times. Throughput = batch rows / median time between consecutive batch
requests from the training loop (so it includes reading the cache, the step and the trainer's
bookkeeping); end-to-end wall-clock (start, norm estimate, training, final fold/eval/save) too.
The reader alone is measured on the same cache. Shape: perf-notes.md (d_in 512, d_sae 8192,
k 32, batch 4096) on synthetic activations with sparse structure.

quality: ours and SAELens on the toy world's cached residual stream, same tokens; both SAEs
evaluated in their saved inference form by the same code on the same held-out rows (the first
`holdout` rows of the stream, which neither trained on).

toyworld: `train()` of TopK, BatchTopK and Matryoshka at k=32 in one pass, with CE loss recovered
and KL from the toy model (the "Training quality on the toy world" table).

sparsify-speed / sparsify-quality: the same for TopK (sparsify trains nothing else) against EleutherAI's
sparsify (pip eai-sparsify), driven through its own `Trainer(TrainConfig(...)).fit()`. Its trainer reads a
transformers model's hooked module over a token dataset, so the cache rows ours trains on (the reader's stream
after the held-out rows, same order and batches) become `activation_table_model`: token id i's output at
`layers.0` is row i; its DataLoader does not shuffle, so it sees the same batches as ours. Its recipes
(SPARSIFY_RECIPES): its TrainConfig defaults (schedule-free signum, LR 5e-3/sqrt(d_sae/2^14), no AuxK, no
input normalisation, b_dec = the first batch's mean), the same with AuxK 1/32, and Adam at our LR. Its trained
SAE is saved by its trainer and read back by our sparsify loader. The step is timed between forward calls of
`layers.0` (one per batch: its embedding lookup, hook, step and bookkeeping). sparsify's fused Triton decoder
needs a GPU; on CPU it uses its `embedding_bag` fallback and its `FusedEncoder` (index_add) backward.

Results go into benchmarks/RESULTS.md under "## SAE training: ours vs SAELens", "## SAE training
quality at equal tokens: ours vs SAELens" and "## Training quality on the toy world" (each section
replaced when its command runs; the rest of the file is kept); the sparsify commands write keyed blocks
under "## SAE training: ours vs EleutherAI sparsify" (one per command, and per --tokens for quality).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from step_common import SparseFeatureData, load_average  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SPEED_HEADING = "## SAE training: ours vs SAELens"
QUALITY_HEADING = "## SAE training quality at equal tokens: ours vs SAELens"
TOY_HEADING = "## Training quality on the toy world"
SPARSIFY_HEADING = "## SAE training: ours vs EleutherAI sparsify"
ARCHS = ("topk", "batchtopk", "matryoshka_batchtopk")
HOOK = "blocks.0.hook_resid_post"


# ------------------------------------------------------------------------------ caches
def _written_here(path: Path) -> bool:
    """Whether the folder holds a synthetic cache `synthetic_cache` wrote (its manifest's model is
    "synthetic"), or what one it did not finish left (shards and the build log alone)."""
    import json

    from training.manifest import MANIFEST_NAME, PROGRESS_NAME

    try:
        return (json.loads((path / MANIFEST_NAME).read_text()).get("model") or {}).get("id") == "synthetic"
    except FileNotFoundError:
        return all(p.name == PROGRESS_NAME or p.name.startswith("shard_") for p in path.iterdir())
    except (OSError, ValueError, AttributeError):
        return False


def synthetic_cache(path: Path, d_in: int, rows: int, shard_rows: int = 65536, seed: int = 0) -> Path:
    """A cache directory of sparse-feature data written as `saesteer cache` writes one: its shard
    writer (fp16 shards, a SHA-256 per part, the build log), then its manifest. One written here
    before is used again when it has this `d_in` and at least `rows` rows, else written again (one
    an older run left without part checksums too: its readers hash whole files, as users' readers no
    longer do); a folder holding anything else is refused, never deleted."""
    import shutil

    from training.manifest import (FORMAT_NAME, FORMAT_VERSION, PROGRESS_NAME, Manifest, read_manifest, read_progress,
                                   shard_file_name, write_manifest)
    from training.writer import ShardBuffer, ShardWriter

    if path.is_dir() and any(path.iterdir()):
        if not _written_here(path):
            raise ValueError(f"{path} holds something other than a synthetic cache this benchmark wrote; give "
                             f"--synthetic-cache a new or empty folder")
        man = read_manifest(path) if (path / "manifest.json").is_file() else None
        if man is not None and all(s.part_sha256 for s in man.shards) and man.d_in.get(HOOK) == d_in \
                and man.total_rows >= rows:
            return path
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    data = SparseFeatureData(d_in, n_features=8 * d_in, mean_active=24, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    L = 128
    writer = ShardWriter(path, [ShardBuffer({HOOK: d_in}, torch.float16, -(-shard_rows // L), L, pin=False)],
                         threaded=False)
    r = 0
    for i in range(math.ceil(rows / shard_rows)):
        n = min(shard_rows, rows - r)
        buf = writer.acquire()
        buf.acts[HOOK][:n] = data.sample(n, g).half()
        idx = torch.arange(r, r + n)
        buf.token_ids[:n] = 0
        buf.positions[:n] = idx % L
        buf.seq_index[:n] = idx // L
        buf.rows, buf.contexts = n, 0  # no model inputs: nothing here runs a model
        writer.submit(buf, {"index": i, "file": shard_file_name(i), "first_context": 0, "text_start": (0, 0),
                            "text_end": (0, 0)})
        r += n
    writer.close()
    settings = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "model": {"id": "synthetic", "revision": None, "fingerprint": "0", "n_ctx": L, "d_model": d_in},
        "hooks": [HOOK], "d_in": {HOOK: d_in}, "dtype": "fp16", "context_length": L, "bos_policy": "none",
        "separator": "none", "exclude_tokens": "none", "excluded_token_ids": [], "tokenizer": {"name": "none", "sha256": "0"},
        "dataset": {"name": "synthetic"}, "max_tokens": None, "shard_contexts": shard_rows // L,
    }
    write_manifest(path, Manifest(settings, complete=True, shards=read_progress(path)))
    (path / PROGRESS_NAME).unlink()
    return path


class Timed:
    """Wraps a batch source; records when each batch was asked for (and forwards resume state)."""

    def __init__(self, reader, acts_only: bool = False) -> None:
        self.reader, self.acts_only, self.times, self.cpu_times = reader, acts_only, [], []

    def __iter__(self):
        for batch in self.reader:
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())  # all threads of the process (reader's too)
            yield batch.acts if self.acts_only else batch

    def state_dict(self):
        return self.reader.state_dict()

    def load_state_dict(self, s):
        self.reader.load_state_dict(s)

    def step_seconds(self, skip: int, clock: str = "wall") -> float:
        """Median time between consecutive batch requests: elapsed ("wall") or process CPU ("cpu")."""
        t = self.cpu_times if clock == "cpu" else self.times
        gaps = [b - a for a, b in zip(t, t[1:])][skip:]
        return statistics.median(gaps)


def reader_rate(cache: Path, batch: int, batches: int) -> float:
    from training.reader import CacheReader

    reader = CacheReader(cache, batch, seed=0, epochs=None)
    it = iter(reader)
    for _ in range(3):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------- runs
def widths_for(d_sae: int) -> list[int]:
    return [d_sae // 16, d_sae // 4, d_sae]


def run_ours(arch, cache, *, d_sae, k, batch, tokens, holdout, method, lr, dead_tokens, threads, out, ce=None):
    from training.config import CheckpointConfig, EvalConfig, LogConfig, OptimConfig, RunConfig, SAESpec, TrainConfig, takes_k
    from training.reader import CacheReader
    from training.run import train

    spec = SAESpec(arch, d_sae=d_sae, k=k if takes_k(arch) else None, matryoshka_widths=widths_for(d_sae) if arch == "matryoshka_batchtopk" else [])
    cfg = RunConfig(
        saes=[spec],
        train=TrainConfig(total_tokens=tokens, batch_size=batch, holdout_tokens=holdout, step_method=method,
                          dead_tokens=dead_tokens, dead_window_fraction=1.0, num_threads=threads),  # SAELens's fixed window
        optim=OptimConfig(lr=lr, grad_clip=1.0, warmup_frac=0.01, decay_start_frac=0.8),
        checkpoint=CheckpointConfig(every_tokens=0, keep_last=1),
        eval=EvalConfig(every_tokens=0, ce_contexts=0),
        log=LogConfig(progress=False, log_every=50),
    )
    src = Timed(CacheReader(cache, batch, seed=0, epochs=None))
    t0 = time.perf_counter()
    res = train(cfg, src, out, model_eval=ce, resume="never")
    wall = time.perf_counter() - t0
    return {"step_s": src.step_seconds(skip=holdout // batch + 3), "cpu_step_s": src.step_seconds(holdout // batch + 3, "cpu"),
            "wall": wall, "metrics": res.metrics["saes"][spec.name],
            "sae": res.saes[spec.name], "tokens": res.tokens}


def run_sae_lens(arch, cache, *, d_sae, k, batch, tokens, holdout, lr, dead_tokens, threads):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from saes.interop import from_sae_lens
    from training.reader import CacheReader

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    common = dict(d_in=_d_in(cache), d_sae=d_sae, k=k, dtype="float32", device="cpu", aux_loss_coefficient=1 / 32,
                  normalize_activations="expected_average_only_in")
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(**common))
    elif arch == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))
    else:
        sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(matryoshka_widths=widths_for(d_sae), **common))
    steps = tokens // batch
    cfg = SAETrainerConfig(
        total_training_samples=tokens, train_batch_size_samples=batch, lr=lr, lr_scheduler_name="constant",
        lr_warm_up_steps=max(1, steps // 100), lr_decay_steps=steps // 5, lr_end=0.0, device="cpu",
        dead_feature_window=max(1, dead_tokens // batch), feature_sampling_window=10**9,
        n_batches_for_norm_estimate=holdout // batch,
    )
    src = Timed(CacheReader(cache, batch, seed=0, epochs=None), acts_only=True)
    t0 = time.perf_counter()
    trainer = SAETrainer(cfg, sae, iter(src))
    sae = trainer.fit()
    wall = time.perf_counter() - t0
    return {"step_s": src.step_seconds(skip=holdout // batch + 3), "cpu_step_s": src.step_seconds(holdout // batch + 3, "cpu"),
            "wall": wall, "sae": from_sae_lens(sae),
            "tokens": tokens}


# sparsify's own Trainer on the cache's rows. It trains on a transformers model's hooked module output over a
# token dataset, so the rows become a model: token id i's hidden state at `layers.0` is row i of the stream.
SPARSIFY_RECIPES = {
    # name: (optimizer, AuxK alpha, LR from --lr instead of sparsify's width rule)
    "default": ("signum", 0.0, False),   # TrainConfig defaults: schedule-free signum, auxk_alpha 0
    "auxk": ("signum", 1 / 32, False),    # + AuxK at our coefficient, dead after --dead-tokens
    "adam": ("adam", 1 / 32, True),       # Adam at our LR, 1% warm-up (its default: 1000 steps), linear decay to 0
}
SPARSIFY_SEQ = 128  # token positions per dataset row; batch = --batch / 128 rows


def activation_table_model(rows_ND: torch.Tensor):
    """A transformers model whose module `layers.0` outputs row i of `rows_ND` for token id i."""
    from transformers import PretrainedConfig, PreTrainedModel

    class ActivationTable(PreTrainedModel):
        config_class = PretrainedConfig

        def __init__(self, config, rows):
            super().__init__(config)
            self.embed = torch.nn.Embedding.from_pretrained(rows, freeze=True)
            self.layers = torch.nn.ModuleList([torch.nn.Identity()])

        def forward(self, input_ids, **_):
            return self.layers[0](self.embed(input_ids))

    return ActivationTable(PretrainedConfig(num_hidden_layers=1), rows_ND)


def run_sparsify(cache, *, d_sae, k, batch, tokens, holdout, lr, dead_tokens, threads, out, recipe="default"):
    """sparsify's `Trainer(TrainConfig(...)).fit()` on the rows our reader gives after the held-out ones, in order."""
    from datasets import Dataset
    from sparsify import SparseCoderConfig, Trainer, TrainConfig

    from saes.formats import sparsify as sparsify_format
    from training.reader import CacheReader

    if batch % SPARSIFY_SEQ:
        raise SystemExit(f"--batch {batch}: sparsify's batches are whole dataset rows of {SPARSIFY_SEQ} tokens")
    optimizer, auxk_alpha, our_lr = SPARSIFY_RECIPES[recipe]
    steps = tokens // batch
    t0 = time.perf_counter()  # end to end from the cache, as ours (reading the rows included)
    it = iter(CacheReader(cache, batch, seed=0, epochs=None))
    for _ in range(holdout // batch):  # held out, as ours (norm estimate) and SAELens (its norm estimate) skip them
        next(it)
    rows_ND = torch.cat([next(it).acts for _ in range(steps)])
    ids = torch.arange(len(rows_ND)).view(-1, SPARSIFY_SEQ)
    dataset = Dataset.from_dict({"input_ids": ids.numpy()}).with_format("torch")
    model = activation_table_model(rows_ND)
    torch.set_num_threads(threads)
    precision = torch.get_float32_matmul_precision()  # fit() sets "high"; the process is shared with ours
    cfg = TrainConfig(SparseCoderConfig(num_latents=d_sae, k=k), batch_size=batch // SPARSIFY_SEQ, hookpoints=["layers.0"],
                      optimizer=optimizer, lr=lr if our_lr else None, lr_warmup_steps=max(1, steps // 100),
                      auxk_alpha=auxk_alpha, dead_feature_threshold=dead_tokens, log_to_wandb=False,
                      save_dir=str(out), run_name="run")
    src = Timed(None)  # its clocks, read once per batch: at each forward of `layers.0`

    def clock(*_):
        src.times.append(time.perf_counter())
        src.cpu_times.append(time.process_time())

    model.layers[0].register_forward_pre_hook(clock)
    try:
        trainer = Trainer(cfg, dataset, model)
        trainer.fit()
    finally:
        torch.set_float32_matmul_precision(precision)
    wall = time.perf_counter() - t0
    since_fired_F = trainer.num_tokens_since_fired["layers.0"]
    loaded = sparsify_format.load(Path(out) / "run" / "layers.0", hook=HOOK)
    return {"step_s": src.step_seconds(skip=3), "cpu_step_s": src.step_seconds(3, "cpu"), "wall": wall,
            "sae": loaded.sae, "tokens": steps * batch, "dead_fraction": float((since_fired_F >= dead_tokens).double().mean())}


def _d_in(cache: Path) -> int:
    d_in = json.loads((cache / "manifest.json").read_text())["d_in"]
    return int(next(iter(d_in.values())))


def holdout_rows(cache: Path, batch: int, holdout: int) -> torch.Tensor:
    """The first `holdout` rows of the reader's stream (seed 0): neither trainer trains on them."""
    from training.reader import CacheReader

    it = iter(CacheReader(cache, batch, seed=0, epochs=None))
    return torch.cat([next(it).acts for _ in range(holdout // batch)])


# ------------------------------------------------------------------------------ sections
def replace_section(heading: str, body: str) -> None:
    from results_md import replace_section as replace

    replace(heading, heading + "\n\n" + body.strip(), RESULTS)


def machine() -> str:
    from saes.fast_step import bf16_matmul_is_fast

    return (f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"bf16 matmul fast: {bf16_matmul_is_fast()}, python {platform.python_version()}")


# ----------------------------------------------------------------------------- commands
def cmd_speed(args) -> str:
    cache = synthetic_cache(Path(args.synthetic_cache), args.d_in, rows=max(400_000, args.steps * args.batch * 2))
    from sae_lens import __version__ as sl_version

    from training.evaluate import evaluate_activations

    hold = holdout_rows(cache, args.batch, args.holdout)
    load0 = load_average()
    rr = [reader_rate(cache, args.batch, 40) for _ in range(3)]
    rows = []
    common = dict(d_sae=args.d_sae, k=args.k, batch=args.batch, tokens=args.steps * args.batch, holdout=args.holdout,
                  lr=args.lr, dead_tokens=args.dead_tokens, threads=args.threads)
    who_all = list(args.methods) + ["sae_lens"]
    for arch in args.archs:
        res: dict[str, list] = {w: [] for w in who_all}
        for r in range(args.rounds):
            for who in who_all:
                with tempfile.TemporaryDirectory() as tmp:
                    if who == "sae_lens":
                        out = run_sae_lens(arch, cache, **common)
                    else:
                        out = run_ours(arch, cache, method=who, out=Path(tmp) / "run", **common)
                q = evaluate_activations(out["sae"], hold)
                res[who].append({**out, "ev": q["explained_variance"], "l0": q["l0"]})
                print(f"{arch:22s} round {r} {who:12s}: {args.batch / out['step_s']:9,.0f} tok/s per step, "
                      f"{args.batch / out['cpu_step_s']:9,.0f} tok per CPU-s, "
                      f"wall {out['wall']:6.1f} s, EV {q['explained_variance']:.3f}, L0 {q['l0']:.1f}", flush=True)
        rows.append((arch, res))
    load1 = load_average()
    lines = [
        f"Machine: {machine()}; SAELens {sl_version}; load average before/after {load0} / {load1}. "
        f"`python benchmarks/bench_train.py speed --steps {args.steps} --rounds {args.rounds} --threads {args.threads} "
        f"--holdout {args.holdout} --methods {','.join(args.methods)}`",
        "",
        f"Same fp16 disk cache of synthetic sparse-feature activations (d_in {args.d_in}), d_sae {args.d_sae}, k {args.k}, "
        f"batch {args.batch}, {args.steps} steps ({args.steps * args.batch:,} tokens) after {args.holdout:,} rows for the "
        f"norm estimate; same seeded reader, LR {args.lr} with 1% warmup / 20% linear decay, grad-norm clip 1.0 "
        f"(SAELens always clips at 1.0), AuxK coefficient 1/32, dead window {args.dead_tokens:,} tokens; fp32 both. "
        f"tok/s = batch rows / median time between the training loop's batch requests (reading + step + "
        f"bookkeeping), by elapsed time (wall) and by the process's CPU time (cpu: all its threads, the reader's "
        f"checksum thread included; with {args.threads} torch thread(s) this is the work per token whatever share of "
        f"the shared machine we get); medians over {args.rounds} interleaved rounds. Wall = whole call (start-up, norm estimate, "
        f"training, fold; ours also final eval, checkpoint and save). EV / L0: the trained SAE in its inference form "
        f"on the same {args.holdout:,} held-out rows (early in training: a sanity check, not a quality comparison).",
        "",
        "| arch | " + " | ".join(f"ours `{m}` tok/s wall / cpu" for m in args.methods) + " | SAELens tok/s wall / cpu | "
        + " | ".join(f"speed-up `{m}` wall / cpu" for m in args.methods) + " | wall ours / SAELens (s) | EV ours / SAELens | "
        "L0 ours / SAELens |",
        "|---|" + "---|" * (2 * len(args.methods) + 4),
    ]
    first = args.methods[0]
    for arch, res in rows:
        med = {w: statistics.median(args.batch / x["step_s"] for x in v) for w, v in res.items()}
        cpu = {w: statistics.median(args.batch / x["cpu_step_s"] for x in v) for w, v in res.items()}
        wall = {w: statistics.median(x["wall"] for x in v) for w, v in res.items()}
        ev = {w: statistics.median(x["ev"] for x in v) for w, v in res.items()}
        l0 = {w: statistics.median(x["l0"] for x in v) for w, v in res.items()}
        cells = [arch] + [f"{med[w]:,.0f} / {cpu[w]:,.0f}" for w in [*args.methods, "sae_lens"]]
        cells += [f"{med[m] / med['sae_lens']:.1f}x / {cpu[m] / cpu['sae_lens']:.1f}x" for m in args.methods]
        cells += [f"{wall[first]:.1f} / {wall['sae_lens']:.1f}", f"{ev[first]:.3f} / {ev['sae_lens']:.3f}",
                  f"{l0[first]:.1f} / {l0['sae_lens']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Cache reader alone (fp16 shards -> float32 batches of {args.batch}, shuffled, checksums verified once): "
              f"{statistics.median(rr):,.0f} rows/s (median of 3 x 40 batches)."]
    return "\n".join(lines)


def _equal_tokens_setup(args):
    """What both equal-token quality runs start from: the cache, its held-out rows, the load average
    before training, and the training settings every trainer gets."""
    cache = Path(args.cache)
    hold = holdout_rows(cache, args.batch, args.holdout)
    load0 = load_average()
    common = dict(d_sae=args.toy_d_sae, k=args.k, batch=args.batch, tokens=args.tokens, holdout=args.holdout,
                  lr=args.lr, dead_tokens=args.dead_tokens, threads=args.threads)
    return cache, hold, load0, common


def cmd_quality(args) -> str:
    from sae_lens import __version__ as sl_version

    from training.evaluate import evaluate_activations

    cache, hold, load0, common = _equal_tokens_setup(args)
    lines = [
        f"Equal tokens on the toy world's cached residual stream ({cache.name}; d_in {_d_in(cache)}): d_sae "
        f"{args.toy_d_sae}, k {args.k}, {args.tokens:,} tokens, batch {args.batch}, same reader/seed/LR schedule/clip/AuxK "
        f"settings as in the speed table; load average before {load0}. Both SAEs evaluated in their saved inference form (ours: per-latent "
        f"thresholds; SAELens BatchTopK/Matryoshka: its single global threshold) on the same {args.holdout:,} held-out rows. "
        f"SAELens {sl_version}. `python benchmarks/bench_train.py quality --cache {args.cache} --tokens {args.tokens}`",
        "",
        "| arch | EV ours | EV SAELens | L0 ours | L0 SAELens | ours tok/s | SAELens tok/s | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch in args.archs:
        with tempfile.TemporaryDirectory() as tmp:
            o = run_ours(arch, cache, method="fast", out=Path(tmp) / "run", **common)
        s = run_sae_lens(arch, cache, **common)
        qo, qs = evaluate_activations(o["sae"], hold), evaluate_activations(s["sae"], hold)
        ro, rs = args.batch / o["step_s"], args.batch / s["step_s"]
        print(f"{arch}: ours EV {qo['explained_variance']:.4f} L0 {qo['l0']:.1f} ({ro:,.0f} tok/s); SAELens EV "
              f"{qs['explained_variance']:.4f} L0 {qs['l0']:.1f} ({rs:,.0f} tok/s)", flush=True)
        lines.append(f"| {arch} | {qo['explained_variance']:.4f} | {qs['explained_variance']:.4f} | {qo['l0']:.1f} | "
                     f"{qs['l0']:.1f} | {ro:,.0f} | {rs:,.0f} | {ro / rs:.1f}x |")
    return "\n".join(lines)


def sparsify_version() -> str:
    from importlib.metadata import version

    return version("eai-sparsify")


def cmd_sparsify_speed(args) -> str:
    """TopK only (sparsify has no BatchTopK / Matryoshka): ours and sparsify on the same cache, 1 and 2 threads."""
    cache = synthetic_cache(Path(args.synthetic_cache), args.d_in, rows=max(400_000, args.steps * args.batch * 2))
    from training.evaluate import evaluate_activations

    hold = holdout_rows(cache, args.batch, args.holdout)
    load0 = load_average()
    who_all = list(args.methods) + ["sparsify"]
    res: dict[tuple[int, str], list] = {(t, w): [] for t in args.thread_counts for w in who_all}
    for r in range(args.rounds):
        for t in args.thread_counts:
            common = dict(d_sae=args.d_sae, k=args.k, batch=args.batch, tokens=args.steps * args.batch, holdout=args.holdout,
                          lr=args.lr, dead_tokens=args.dead_tokens, threads=t)
            for who in who_all:
                with tempfile.TemporaryDirectory() as tmp:
                    if who == "sparsify":
                        out = run_sparsify(cache, out=Path(tmp), **common)
                    else:
                        out = run_ours("topk", cache, method=who, out=Path(tmp) / "run", **common)
                    q = evaluate_activations(out["sae"], hold)
                res[t, who].append({**out, "ev": q["explained_variance"]})
                print(f"round {r} threads {t} {who:12s}: {args.batch / out['step_s']:9,.0f} tok/s per step, "
                      f"{args.batch / out['cpu_step_s']:9,.0f} tok per CPU-s, wall {out['wall']:6.1f} s, "
                      f"EV {q['explained_variance']:.3f}", flush=True)
    load1 = load_average()
    ms = ",".join(args.methods)
    lines = [
        f"`python benchmarks/bench_train.py sparsify-speed --steps {args.steps} --rounds {args.rounds} --threads-list "
        f"{','.join(map(str, args.thread_counts))} --holdout {args.holdout} --methods {ms}`; {machine()}; sparsify "
        f"{sparsify_version()} (no Triton on CPU: its eager `embedding_bag` decoder); load average before/after {load0} / {load1}.",
        "",
        f"TopK, d_in {args.d_in} (synthetic sparse-feature activations, the speed table's fp16 cache), d_sae {args.d_sae}, "
        f"k {args.k}, batch {args.batch}, {args.steps} steps after {args.holdout:,} held-out rows, fp32, the same seeded "
        f"`CacheReader` feeding both. Ours: `training.train` (LR {args.lr}, its defaults otherwise). sparsify: its own "
        f"`Trainer(TrainConfig(...)).fit()` on the same rows in the same batches (a model whose `layers.0` outputs "
        f"them; TrainConfig defaults: schedule-free signum at its width-rule LR, no AuxK; it sets b_dec to the first "
        f"batch mean, renormalises the decoder and removes its parallel gradient each step). tok/s = batch rows / median time between the loop's batch requests, "
        f"by elapsed time (wall) and by process CPU time (cpu: all threads; the measure on this shared machine); "
        f"medians over {args.rounds} rounds, trainers and thread counts interleaved. End-to-end = the whole call "
        f"(start, training, save; ours also norm estimate, fold and final eval). EV on the {args.holdout:,} held-out "
        f"rows: a sanity check after {args.steps} steps, not a quality comparison.",
        "",
        "| threads | trainer | tok/s wall | tok/s cpu | ours / sparsify (cpu) | end-to-end wall (s) | EV |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for t in args.thread_counts:
        cpu_sp = statistics.median(args.batch / x["cpu_step_s"] for x in res[t, "sparsify"])
        for who in who_all:
            v = res[t, who]
            cpu = statistics.median(args.batch / x["cpu_step_s"] for x in v)
            name = f"sparsify {sparsify_version()}" if who == "sparsify" else f"ours `{who}`"
            ratio = "" if who == "sparsify" else f"**{cpu / cpu_sp:.1f}x**"
            lines.append(f"| {t} | {name} | {statistics.median(args.batch / x['step_s'] for x in v):,.0f} | {cpu:,.0f} | "
                         f"{ratio} | {statistics.median(x['wall'] for x in v):.1f} | {statistics.median(x['ev'] for x in v):.3f} |")
    return "\n".join(lines)


def cmd_sparsify_quality(args) -> str:
    """Equal tokens on the toy world: ours TopK against sparsify's recipes (SPARSIFY_RECIPES)."""
    from training.evaluate import evaluate_activations

    cache, hold, load0, common = _equal_tokens_setup(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        o = run_ours("topk", cache, method=args.methods[0], out=Path(tmp) / "run", **common)
    rows.append((f"ours `{args.methods[0]}` (Adam, LR {args.lr:g}, AuxK 1/32)", o, o["metrics"]["dead_fraction"]))
    for recipe in args.recipes:
        with tempfile.TemporaryDirectory() as tmp:
            s = run_sparsify(cache, out=Path(tmp), recipe=recipe, **common)
        optimizer, alpha, our_lr = SPARSIFY_RECIPES[recipe]
        lr = f"LR {args.lr:g}" if our_lr else "its width-rule LR"
        rows.append((f"sparsify `{recipe}` ({optimizer}, {lr}, AuxK {'1/32' if alpha else 'off'})", s, s["dead_fraction"]))
    lines = [
        f"`python benchmarks/bench_train.py sparsify-quality --cache {args.cache} --tokens {args.tokens} --toy-d-sae "
        f"{args.toy_d_sae} --lr {args.lr:g} --dead-tokens {args.dead_tokens} --threads {args.threads} --holdout {args.holdout} "
        f"--methods {args.methods[0]} --recipes {','.join(args.recipes)}`; {machine()}; sparsify {sparsify_version()}; "
        f"load average before {load0}.",
        "",
        f"Toy world's cached residual stream ({cache.name}; d_in {_d_in(cache)}), TopK d_sae {args.toy_d_sae}, k {args.k}, "
        f"{args.tokens:,} tokens each, batch {args.batch}, the same reader and seed; the first {args.holdout:,} rows held out "
        f"(neither trains on them). Both SAEs evaluated in their saved form (sparsify's read back through our sparsify "
        f"loader) by the same code on those rows: EV, L0, latents that never fire there (eval dead); train dead = no "
        f"firing in the last {args.dead_tokens:,} training tokens. tok per CPU-s: batch rows / median process CPU time "
        f"per step at {args.threads} thread(s) (the machine is shared); end-to-end: elapsed.",
        "",
        "| trainer | EV | L0 | dead (train window) | dead (held-out) | tok per CPU-s | end-to-end (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r, dead in rows:
        q = evaluate_activations(r["sae"], hold)
        print(f"{name}: EV {q['explained_variance']:.4f} L0 {q['l0']:.1f} dead {dead:.2%} / {q['eval_dead_fraction']:.2%}", flush=True)
        lines.append(f"| {name} | {q['explained_variance']:.4f} | {q['l0']:.1f} | {dead:.2%} | {q['eval_dead_fraction']:.2%} | "
                     f"{args.batch / r['cpu_step_s']:,.0f} | {r['wall']:.1f} |")
    return "\n".join(lines)


def cmd_toyworld(args) -> str:
    from saesteer.models import load_model, model_id
    from training.config import CheckpointConfig, EvalConfig, LogConfig, OptimConfig, RunConfig, SAESpec, TrainConfig
    from training.manifest import read_manifest
    from training.reader import CacheReader
    from training.sources import cache_provenance, contexts_from_text
    from training.evaluate import ModelEval
    from training.run import train

    cache = Path(args.cache)
    man = read_manifest(cache)
    model = load_model("toy", device="cpu")
    assert model_id(model) == man.settings["model"]["id"], "the cache was not made with the shipped toy model"
    hook = man.hooks[0]
    from training.text import TextConfig

    s = man.settings
    text = TextConfig(dataset="toy", split="validation", context_length=int(s["context_length"]),
                      bos_policy=s["bos_policy"], separator=s["separator"])
    tokens = contexts_from_text(text, model.tokenizer, args.ce_contexts)
    keep = tuple(s.get("excluded_token_ids") or ())
    d = args.toy_d_sae
    saes = [SAESpec("topk", d_sae=d, k=32), SAESpec("batchtopk", d_sae=d, k=32),
            SAESpec("matryoshka_batchtopk", d_sae=d, k=32, matryoshka_widths=[d // 16, d // 4, d])]
    cfg = RunConfig(
        saes=saes,
        train=TrainConfig(total_tokens=args.tokens, batch_size=args.batch, dead_tokens=args.toy_dead_tokens,
                          dead_window_fraction=1.0,  # the window is --toy-dead-tokens, as recorded in RESULTS.md
                          num_threads=args.threads, step_method=args.toy_method, aux_coef=args.toy_aux_coef),
        optim=OptimConfig(lr=args.toy_lr),
        checkpoint=CheckpointConfig(every_tokens=max(args.tokens // 4, 1)),
        eval=EvalConfig(every_tokens=max(args.tokens // 8, 1), ce_contexts=args.ce_contexts),
        log=LogConfig(progress=True, log_every=50),
    )
    out = Path(args.toy_out)
    load0 = load_average()
    res = train(cfg, CacheReader(cache, args.batch, seed=0, epochs=None), out,
                model_eval=ModelEval(model, hook, tokens, keep), provenance=cache_provenance(man, cache, hook))
    m = res.metrics
    lines = [
        f"`python benchmarks/bench_train.py toyworld --cache {args.cache} --tokens {args.tokens} --toy-d-sae {args.toy_d_sae} "
        f"--batch {args.batch} --toy-dead-tokens {args.toy_dead_tokens} --toy-method {args.toy_method}"
        f"{' --toy-lr %g' % args.toy_lr if args.toy_lr else ''} --toy-aux-coef {args.toy_aux_coef:g}`; "
        f"{machine()}; load average before {load0}.",
        "",
        f"Toy world model (d_model {_d_in(cache)}, 4 layers), residual stream at `{hook}` from an fp16 activation cache "
        f"of the toy training split ({man.total_rows:,} rows, BOS excluded); the three SAEs trained together in one "
        f"pass: {m['tokens_trained']:,} tokens, batch {args.batch}, Adam LR {args.toy_lr if args.toy_lr else 'by the width rule 2e-4/sqrt(d_sae/16384)'}, "
        f"AuxK coefficient {args.toy_aux_coef:g}, 1% warmup, linear decay over the last 20%, step method `{m['step_method']}`, {m['tokens_per_second']:,.0f} tokens/s for all three "
        f"together. EV, L0 and dense fraction on {m['holdout_rows']:,} held-out rows; CE loss recovered and KL on "
        f"{args.ce_contexts} contexts of the validation split (BOS positions kept clean); dead = no activation in the "
        f"last {args.toy_dead_tokens:,} training tokens. Goals: EV >= 0.9, CE loss recovered >= 0.95, dead < 1%.",
        "",
        "| SAE | d_sae | k | EV | CE loss recovered | KL | L0 | dead | dense (>10%) | CE clean / spliced / zero |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in m["saes"].items():
        lines.append(
            f"| {r['architecture']} | {r['d_sae']} | {r['k']} | {r['explained_variance']:.4f} | "
            f"{r['ce_loss_recovered']:.4f} | {r['kl_div']:.4f} | {r['l0']:.1f} | {r['dead_fraction']:.2%} | "
            f"{r['dense_fraction']:.2%} | {r['ce_loss_clean']:.3f} / {r['ce_loss_spliced']:.3f} / {r['ce_loss_zero']:.3f} |")
        if "levels" in r:
            lv = "; ".join(f"{x['width']}: EV {x['explained_variance']:.3f}, L0 {x['l0']:.1f}" for x in r["levels"])
            lines.append(f"| ↳ Matryoshka levels | | | {lv} | | | | | | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("speed", "quality", "toyworld", "sparsify-speed", "sparsify-quality", "all"))
    ap.add_argument("--cache", default="/tmp/trainer/cache_toy_l2", help="toy world activation cache (quality, toyworld)")
    ap.add_argument("--synthetic-cache", default="/tmp/trainer/cache_synth_d512")
    ap.add_argument("--d-in", type=int, default=512)
    ap.add_argument("--d-sae", type=int, default=8192)
    ap.add_argument("--toy-d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--holdout", type=int, default=16384)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--dead-tokens", type=int, default=4_096_000)
    ap.add_argument("--tokens", type=int, default=2_000_000, help="quality / toyworld training tokens")
    ap.add_argument("--toy-dead-tokens", type=int, default=2_000_000)
    ap.add_argument("--toy-out", default="/tmp/trainer/toyworld_run")
    ap.add_argument("--toy-method", default="auto", help="toyworld: the trainer's step method (auto, fast, fast_native, ...)")
    ap.add_argument("--toy-lr", type=float, default=None, help="toyworld: Adam LR (default: the trainer's width rule)")
    ap.add_argument("--toy-aux-coef", type=float, default=1 / 32, help="toyworld: AuxK coefficient")
    ap.add_argument("--ce-contexts", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--methods", default="fast", help="our step methods to time, comma-separated (e.g. fast,fast_native)")
    ap.add_argument("--threads-list", default="1,2", help="sparsify-speed: torch thread counts, comma-separated")
    ap.add_argument("--recipes", default=",".join(SPARSIFY_RECIPES), help="sparsify-quality: sparsify set-ups (see SPARSIFY_RECIPES)")
    ap.add_argument("--no-write", action="store_true", help="print the tables, leave RESULTS.md alone")
    args = ap.parse_args()
    args.archs = [a for a in args.archs.split(",") if a]
    args.methods = [m for m in args.methods.split(",") if m]
    args.thread_counts = [int(t) for t in args.threads_list.split(",") if t]
    args.recipes = [r for r in args.recipes.split(",") if r]
    if unknown := [r for r in args.recipes if r not in SPARSIFY_RECIPES]:
        ap.error(f"--recipes: unknown {', '.join(unknown)}; known: {', '.join(SPARSIFY_RECIPES)}")
    torch.set_num_threads(args.threads)
    for name, heading, fn in (("speed", SPEED_HEADING, cmd_speed), ("quality", QUALITY_HEADING, cmd_quality),
                              ("toyworld", TOY_HEADING, cmd_toyworld)):
        if args.what in (name, "all"):
            body = fn(args)
            print(body, flush=True)
            if not args.no_write:
                replace_section(heading, body)
    for name, fn in (("sparsify-speed", cmd_sparsify_speed), ("sparsify-quality", cmd_sparsify_quality)):
        if args.what == name:  # not part of "all": one keyed block each in the sparsify section
            body = fn(args)
            print(body, flush=True)
            if not args.no_write:
                from results_md import replace_block

                key = name if name == "sparsify-speed" else f"{name}:{args.tokens}"  # one block per token count
                replace_block(SPARSIFY_HEADING, key, body, RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
