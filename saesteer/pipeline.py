"""The toy-world demo end to end, through each stage's Python API (no subprocesses):

    activation cache -> Matryoshka SAE -> feature store -> labels -> a steering example -> summary

    from saesteer.pipeline import DemoConfig, run_demo, print_summary, serve_demo
    result = run_demo(DemoConfig(out="runs/demo"))      # DemoResult: paths, metrics, showcase, steering
    print_summary(result)
    serve_demo(result)                                  # the web app over the store (blocks)

`saesteer demo` is this module behind a command line. Every stage is resumable and idempotent on
its own (the cache, trainer, feature store and labeller each keep their progress on disk), so
re-running the demo reuses what is finished and continues what is not; `fresh=True` deletes the
work folder first. Only the toy world is used: no GPU, no network.

Work folder (`DemoConfig.out`):
    demo.json        the DemoConfig of the run (marks the folder as a demo folder for `fresh`)
    cache/           activation cache of `hook` (training.cache format)
    train/           training run: saes/<name>/ (SAELens folder), metrics.json, training_curves.html, ...
    features.db      feature store (with labels, scores, concept matches, recommended strength)
    steering/        the dev-sample sweeps of the steering candidates (HTML + JSON) and example.json
    summary.json     everything the printed summary shows
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from saes.errors import SaesteerError

__all__ = [
    "DemoConfig", "DemoError", "DemoPaths", "DemoResult", "FeatureShowcase", "SteeringExample", "StageTimer",
    "run_demo", "print_summary", "serve_demo", "run_config", "STAGES",
]

STAGES = ("model", "cache", "train", "features", "label", "steer")
MARKER = "demo.json"
SPARSE_MAX_FREQ = 0.05  # a steering showcase latent fires on at most this share of tokens
AUTO = "auto"


class DemoError(SaesteerError, RuntimeError):
    """The demo cannot go on; the message says why and what to do."""


@dataclass
class DemoConfig:
    """The toy-world demo: how much to cache and train, and what to show."""

    out: str = field(default="runs/demo", metadata={"help": "work folder (re-running reuses the finished stages in it)"})
    hook: str = field(default="blocks.2.hook_resid_post",
                      metadata={"help": "hook point of the toy model (4 layers, d_model 128) to train the SAE on"})
    cache_tokens: int = field(default=150_000, metadata={"help": "model-input tokens to cache (BOS tokens are not cached)"})
    train_tokens: int = field(default=400_000,
                              metadata={"help": "training tokens; more than the cache holds means several passes over it"})
    d_sae: int = field(default=1024, metadata={"help": "latents of the Matryoshka SAE"})
    k: int = field(default=16, metadata={"help": "active latents per token (BatchTopK: on average over the batch)"})
    matryoshka_widths: list[int] = field(default_factory=list,
                                         metadata={"help": "nested prefix widths ending at d_sae (empty: ~4x steps)"})
    batch_size: int = field(default=4096, metadata={"help": "tokens per training step"})
    dead_tokens: int = field(default=200_000,
                             metadata={"help": "dead window cap: a latent silent for the last min(this, a tenth of the training "
                                               "tokens) counts as dead (AuxK revives it)"})
    ce_contexts: int = field(default=64, metadata={"help": "validation contexts for CE loss recovered (0: skip)"})
    label_limit: int | None = field(
        default=None,
        metadata={"help": "label at most this many latents, most frequent first (none: all of them with the offline "
                          "judge, 100 with an LLM judge)"},
    )
    steer_topic: str = field(
        default=AUTO,
        metadata={"help": "toy-world topic of the steering example, or 'auto': the topics whose sparse latents match "
                          "them best (token F1)"},
    )
    steer_candidates: int = field(
        default=3, metadata={"help": "sparse topic latents (best concept F1 first) swept on the dev samples"})
    steer_strengths: list[float] = field(
        default_factory=lambda: [1.0, 2.0, 3.0, 4.0, 6.0, 8.0],
        metadata={"help": "strengths of the steering sweep, in multiples of the feature's typical max activation"},
    )
    steer_samples: int = field(
        default=16, metadata={"help": "unconditional dev samples per strength (seed --seed) that pick the latent and strength"})
    steer_test_samples: int = field(
        default=32, metadata={"help": "held-out unconditional samples (seed --seed + 1) the steering figures are reported on"})
    steer_positions: str = field(
        default="0,1,2,3,4",
        metadata={"help": "token positions the steering example edits (0 = BOS; 'all' for every position): the "
                          "start of a text sets its topic and the toy model keeps it, so later sentences stay fluent"},
    )
    steer_new_tokens: int = field(default=32, metadata={"help": "tokens generated per sample"})
    showcase: int = field(default=6, metadata={"help": "labelled features shown in the summary"})
    seed: int = field(default=0, metadata={"help": "seed of training, sampling and generation"})

    def __post_init__(self) -> None:
        def pos(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
                raise ValueError(f"DemoConfig.{name} must be a {'non-negative' if allow_zero else 'positive'} integer; got {v!r}")

        for n in ("cache_tokens", "train_tokens", "d_sae", "k", "batch_size", "dead_tokens", "steer_samples",
                  "steer_test_samples", "steer_candidates", "steer_new_tokens"):
            pos(n)
        for n in ("ce_contexts", "showcase", "seed"):
            pos(n, allow_zero=True)
        if not self.out:
            raise ValueError("DemoConfig.out is empty: give a work folder, e.g. --out runs/demo")
        if self.k > self.d_sae:
            raise ValueError(f"DemoConfig.k ({self.k}) must not exceed d_sae ({self.d_sae})")
        if self.label_limit is not None and (isinstance(self.label_limit, bool) or self.label_limit < 0):
            raise ValueError(f"DemoConfig.label_limit must be >= 0 or none; got {self.label_limit!r}")
        self.matryoshka_widths = [int(w) for w in self.matryoshka_widths]
        self.steer_strengths = [float(s) for s in self.steer_strengths]
        from steering.spec import normalize_positions

        normalize_positions(self.steer_positions)  # a clear error for a bad --steer-positions
        if not any(v != 0 for v in self.steer_strengths):
            raise ValueError("DemoConfig.steer_strengths needs a non-zero strength; give e.g. 1,2,3,4,6,8")
        from toyworld.lexicon import TOPICS

        if self.steer_topic != AUTO and self.steer_topic not in TOPICS:
            raise ValueError(f"DemoConfig.steer_topic must be '{AUTO}' or a toy-world topic ({', '.join(TOPICS)}); "
                             f"got {self.steer_topic!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DemoPaths:
    out: Path

    @property
    def cache(self) -> Path:
        return self.out / "cache"

    @property
    def run(self) -> Path:
        return self.out / "train"

    @property
    def store(self) -> Path:
        return self.out / "features.db"

    @property
    def steering(self) -> Path:
        return self.out / "steering"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    @property
    def marker(self) -> Path:
        return self.out / MARKER


@dataclass
class FeatureShowcase:
    """One labelled latent for the summary."""

    id: int
    label: str
    scores: dict[str, float]
    freq: float
    level: int | None
    examples: list[str]  # top-example windows, the activating token in [[ ]]
    concept: str | None = None  # the toy-world concept it matches best (ground truth), if chosen for it
    f1: float | None = None  # token F1 of the latent for that concept


@dataclass
class SteeringExample:
    """The steering example: a sparse latent that matches a toy-world topic, its strength picked on
    dev samples, its effect measured on held-out samples, and held-out samples side by side."""

    topic: str
    feature: int
    label: str | None
    concept_f1: float  # token F1 of the latent for topic:<topic> (ground truth)
    freq: float  # share of tokens the latent fires on (feature store)
    detection: float | None  # its label's detection score, if labelled and scored
    strength: float  # multiples of the feature's typical max activation (op: add)
    raw_strength: float | None
    rule: str
    met: bool  # the dev sweep found a strength meeting every target (else: the closest one is shown)
    verdict: str
    dev: dict[str, Any]  # {seed, samples, share/fluency/grammar at 0 and at the strength}
    test: dict[str, Any]  # the same on held-out samples (another seed), with standard errors
    examples: list[dict[str, Any]]  # held-out samples side by side: {sample, default, steered, shares}
    visible: int  # held-out samples whose steered text is on topic (share >= 0.5) and whose default is not
    candidates: list[dict[str, Any]]  # every latent swept: {feature, topic, f1, freq, recommended, margin}
    sweep_html: str
    sae_fingerprint: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoResult:
    config: DemoConfig
    paths: DemoPaths
    sae_name: str
    sae_dir: Path
    metrics: dict[str, Any]  # this SAE's final metrics (train/metrics.json "saes" entry)
    train_info: dict[str, Any]  # tokens_trained, steps, tokens_per_second, ...
    store_summary: dict[str, int]  # dead / dense / alive ... over the whole cache
    cache_rows: int
    concepts: dict[str, Any]  # toy-world ground truth: best-latent F1 per concept
    judge: str
    labelled: int
    showcase: list[FeatureShowcase]
    steering: SteeringExample | None
    stage_seconds: dict[str, float]
    stage_status: dict[str, str]  # "ran" or "reused"
    total_seconds: float = 0.0
    model: Any = field(default=None, repr=False, compare=False)  # the loaded toy model (not serialised)

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        d = json.loads(json.dumps(d, default=_jsonable))
        d["paths"] = {k: str(getattr(self.paths, k)) for k in ("out", "cache", "run", "store", "steering", "summary")}
        d["sae_dir"] = str(self.sae_dir)
        return d


# ------------------------------------------------------------------------------------- output
class StageTimer:
    """Stage headers with their index and the time each stage took."""

    def __init__(self, console: Any, total: int) -> None:
        self.console = console
        self.total = total
        self.index = 0
        self.seconds: dict[str, float] = {}
        self.status: dict[str, str] = {}

    @contextmanager
    def stage(self, name: str, title: str) -> Iterator[dict[str, str]]:
        self.index += 1
        self.console.rule(f"[bold][{self.index}/{self.total}] {title}", align="left")
        info = {"status": "ran", "note": ""}
        t0 = time.perf_counter()
        yield info
        secs = time.perf_counter() - t0
        self.seconds[name] = round(secs, 2)
        self.status[name] = info["status"]
        note = f" ({info['note']})" if info["note"] else ""
        verb = "reused" if info["status"] == "reused" else "done"
        from rich.text import Text

        self.console.print(Text.assemble((f"{name}: {verb} in {_fmt_secs(secs)}", "green"), note))  # note: data


def _fmt_secs(s: float) -> str:
    return f"{s:.1f} s" if s < 90 else f"{int(s // 60)} min {s % 60:.0f} s"


def _console(quiet: bool = False):
    from rich.console import Console

    return Console(quiet=quiet, highlight=False)


# ------------------------------------------------------------------------------------- stages
def run_config(cfg: DemoConfig, progress: bool = True):
    """The training run's `training.RunConfig` for this demo config."""
    from training.config import CheckpointConfig, EvalConfig, LogConfig, OptimConfig, RunConfig, SAESpec, TrainConfig

    return RunConfig(
        saes=[SAESpec("matryoshka_batchtopk", d_sae=cfg.d_sae, k=cfg.k, matryoshka_widths=list(cfg.matryoshka_widths))],
        train=TrainConfig(total_tokens=cfg.train_tokens, batch_size=cfg.batch_size, seed=cfg.seed,
                          dead_tokens=cfg.dead_tokens, holdout_tokens=min(16384, max(cfg.batch_size, cfg.cache_tokens // 10))),
        optim=OptimConfig(),
        checkpoint=CheckpointConfig(every_tokens=max(cfg.train_tokens // 3, cfg.batch_size)),
        eval=EvalConfig(every_tokens=0, ce_contexts=cfg.ce_contexts),
        log=LogConfig(log_every=10, progress=progress),
    )


def _jsonable(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _same_json(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _prepare_out(cfg: DemoConfig, paths: DemoPaths, fresh: bool, say: Callable[[str], None]) -> None:
    out = paths.out
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not paths.marker.is_file():
            raise DemoError(f"{out} is not empty and is not a demo work folder (no {MARKER}); choose another --out")
        if fresh:
            say(f"--fresh: deleting {out}")
            shutil.rmtree(out)
        else:
            old = json.loads(paths.marker.read_text(encoding="utf-8"))
            changed = sorted(k for k in set(old) | set(cfg.to_json()) if old.get(k) != cfg.to_json().get(k))
            if changed:
                say(f"note: settings changed since the last run in {out}: {', '.join(changed)}; stages whose "
                    f"inputs changed are redone where they can be (use --fresh to start over)")
    out.mkdir(parents=True, exist_ok=True)
    from saes.fileio import atomic_write_json

    atomic_write_json(paths.marker, cfg.to_json())


def _stage_cache(cfg: DemoConfig, paths: DemoPaths, model, progress: bool, info: dict, say) -> Any:
    from saesteer.models import model_id, model_info
    from training.cache import build_cache
    from training.cache_config import CacheConfig
    from training.manifest import CacheMismatchError
    from training.text import TextConfig

    cc = CacheConfig(out=str(paths.cache), hooks=[cfg.hook], max_tokens=cfg.cache_tokens)
    try:
        res = build_cache(model, TextConfig(dataset="toy"), cc, model_id=model_id(model),
                          model_revision=model_info(model).revision, progress=progress, log=say)
    except CacheMismatchError as e:
        raise DemoError(f"{e}\n(the demo's cache settings changed: run `saesteer demo --fresh` to start over)") from None
    if res.shards_written == 0:
        info["status"] = "reused"
    info["note"] = f"{res.manifest.total_rows:,} activation rows of {cfg.hook}"
    return res


def _stage_train(cfg: DemoConfig, paths: DemoPaths, model, progress: bool, info: dict, say) -> tuple[str, Path, dict, dict]:
    from training.config import config_differences
    from training.reader import CacheReader
    from training.heldout import heldout_contexts
    from training.sources import cache_provenance, text_config_from_manifest, text_documents_read
    from training.text import TextConfig
    from training.trainer import ConfigMismatchError, ModelEval, train

    run_cfg = run_config(cfg, progress)
    name = run_cfg.saes[0].name
    sae_dir = paths.run / "saes" / name
    metrics_file = paths.run / "metrics.json"
    if metrics_file.is_file() and (sae_dir / "cfg.json").is_file():
        m = json.loads(metrics_file.read_text(encoding="utf-8"))
        saved = m.get("config") or {}
        same = not config_differences(saved, json.loads(json.dumps(run_cfg.to_dict())))  # log/eval/... may differ
        if same and (saved.get("train") or {}).get("total_tokens") == cfg.train_tokens and not m.get("stopped_early"):
            info["status"] = "reused"
            info["note"] = f"{name}, {m['tokens_trained']:,} tokens"
            return name, sae_dir, m["saes"][name], _train_info(m)
    reader = CacheReader(paths.cache, cfg.batch_size, hook=cfg.hook, seed=cfg.seed, epochs=None)
    prov = cache_provenance(reader.manifest, paths.cache, cfg.hook)
    model_eval = None
    if cfg.ce_contexts:
        held = heldout_contexts(text_config_from_manifest(reader.manifest), TextConfig(dataset="toy", split="validation"),
                                model.tokenizer, cfg.ce_contexts, train_docs=text_documents_read(reader.manifest))
        keep = tuple(int(i) for i in reader.manifest.settings.get("excluded_token_ids") or ())
        model_eval = ModelEval(model, cfg.hook, held.tokens_NL, keep)
        prov["ce_eval_data"] = held.provenance()
    passes = (cfg.train_tokens + run_cfg.train.holdout_tokens) / max(1, reader.manifest.total_rows)
    say(f"{name}: d_in {model.cfg.d_model}, d_sae {cfg.d_sae}, k {cfg.k}; {cfg.train_tokens:,} tokens "
        f"({passes:.1f} passes over the cache), batch {cfg.batch_size}")
    try:
        result = train(run_cfg, reader, paths.run, model_eval=model_eval, provenance=prov)
    except ConfigMismatchError as e:
        raise DemoError(f"{e}\n(the demo's training settings changed: run `saesteer demo --fresh` to start over)") from None
    m = result.metrics
    info["note"] = f"{name}, {m['tokens_trained']:,} tokens" + (" (resumed)" if result.resumed_from else "")
    return name, result.sae_dirs.get(name, sae_dir), m["saes"][name], _train_info(m)


def _train_info(m: dict) -> dict:
    return {k: m.get(k) for k in ("tokens_trained", "steps", "tokens_per_second", "train_seconds", "wall_seconds",
                                  "step_method", "stopped_early")}


def _stage_features(cfg: DemoConfig, paths: DemoPaths, model, sae, sae_dir: Path, progress: bool, info: dict,
                    say) -> tuple[dict, int, dict]:
    from features import BuildConfig, CacheSource, FeatureStore, StoreMismatchError, build_feature_store

    source = CacheSource(paths.cache, hook=cfg.hook)
    try:
        res = build_feature_store(paths.store, sae, source, BuildConfig(), model=model, sae_path=str(sae_dir),
                                  progress=progress)
    except StoreMismatchError:
        say(f"{paths.store} was built from another SAE or cache; rebuilding it (its labels go with it)")
        res = build_feature_store(paths.store, sae, source, BuildConfig(), model=model, sae_path=str(sae_dir),
                                  overwrite=True, progress=progress)
    if res.already_complete:
        info["status"] = "reused"
    with FeatureStore.open(paths.store, readonly=False) as store:
        concepts = _concept_matches(store, sae, source, say)
    s = res.summary
    info["note"] = (f"{s.get('alive', 0):,} alive latents, {s.get('dead', 0):,} never fire on the cache, "
                    f"{s.get('dense', 0):,} dense")
    return dict(res.summary), int(res.n_rows), concepts


CONCEPT_SOURCE = "toyworld.concept_masks"


def _concept_matches(store, sae, source, say) -> dict:
    """Toy-world ground truth: for every concept tag, the latents that detect it best (token F1),
    written to the store's concept_matches (computed once per store)."""
    import toyworld

    names = list(toyworld.CONCEPTS)
    have = store.concept_matches()
    if not have:
        from features.concepts import concept_f1_over_source

        say("matching latents to the toy world's ground-truth concepts (token F1)")
        scores = concept_f1_over_source(sae, source, lambda ids: toyworld.concept_masks(ids, names), names)
        best = scores.best_per_concept(min_positives=20)
        store.write_concept_matches([m for c in best for m in scores.top(c.concept, 3)], source=CONCEPT_SOURCE)
        have = store.concept_matches()
    best = {}
    for m in have:
        if m.concept not in best or m.f1 > best[m.concept]["f1"]:
            best[m.concept] = {"feature": m.feature_id, "f1": round(m.f1, 4)}
    f1s = sorted(v["f1"] for v in best.values())
    return {
        "concepts": len(f1s),
        "f1_at_least_0.5": sum(f >= 0.5 for f in f1s),
        "f1_at_least_0.8": sum(f >= 0.8 for f in f1s),
        "median_best_f1": f1s[len(f1s) // 2] if f1s else None,
        "best": best,
    }


def _stage_label(cfg: DemoConfig, paths: DemoPaths, judge_cfg, progress: bool, info: dict, say) -> tuple[str, int]:
    from autointerp.config import JudgeConfig, LabelConfig, make_judge, resolve_backend
    from autointerp.featurestore import FeatureStoreLabels
    from autointerp.runner import label_latents

    judge_cfg = judge_cfg or JudgeConfig()
    backend, model_name = resolve_backend(judge_cfg)
    judge = make_judge(judge_cfg, cache_path=paths.store.with_name(paths.store.name + ".judge-cache.sqlite"))
    limit = cfg.label_limit if cfg.label_limit is not None else (None if judge is None else 100)
    say(f"judge: {backend}" + (f" ({model_name})" if model_name else " (concept phrases from the contexts, logit effects and neighbours; no LLM)")
        + ("" if limit is None else f"; the {limit} most frequent latents"))
    with FeatureStoreLabels.open(paths.store) as st:
        # also fine under Jupyter's running event loop: label_latents then runs in a worker thread
        report = label_latents(st, judge, LabelConfig(seed=cfg.seed, limit=limit), progress=progress)
        n_labelled = st.store.count_features({"has_label": True})
        from autointerp.embeddings import EmbedConfig, make_embedder
        from autointerp.semantic import embed_labels

        embedder = make_embedder(EmbedConfig())  # a local model when installed: the web app searches by meaning
        say(f"label embeddings: {embed_labels(st.store, embedder)} new ({embedder.name})")
    if report.labelled == 0 and not report.failed:
        info["status"] = "reused"
    info["note"] = report.summary()
    if report.failed:
        say(f"warning: {len(report.failed)} latents could not be labelled (see {paths.store}.label-failures.jsonl)")
    return report.judge, n_labelled


SHOWCASE_CONCEPTS = ("colour", "mood", "question", "dialogue", "tense:past", "number", "speech", "plural",
                     "animal", "pos:verb", "name")


def _showcase(store, n: int, topic: str | None = None) -> list[FeatureShowcase]:
    """Labelled latents for the summary: first the best latent of some ground-truth concepts (a
    topic, colour, mood, questions, dialogue, ...; token F1 >= 0.3), then the best detection scores,
    distinct latents and labels."""
    if n <= 0:
        return []
    best: dict[str, Any] = {}
    for m in store.concept_matches():
        if m.concept not in best or m.f1 > best[m.concept].f1:
            best[m.concept] = m
    picks: list[tuple[int, str | None, float | None]] = []
    for concept in ((f"topic:{topic}",) if topic else ()) + SHOWCASE_CONCEPTS:
        m = best.get(concept)
        if m is not None and m.f1 >= 0.3 and all(m.feature_id != p[0] for p in picks):
            picks.append((m.feature_id, concept, m.f1))
    flt = {"alive_only": True, "has_label": True, "exclude_flags": ["dense", "bos_only"]}
    for r in store.list_features(sort="score:detection", filter=flt, limit=max(50, 8 * n)):
        picks.append((r.id, None, None))
    out: list[FeatureShowcase] = []
    seen_ids: set[int] = set()
    seen_labels: set[str] = set()
    for fid, concept, f1 in picks:
        if len(out) >= n:
            break
        rec = store.feature(fid)
        label = rec.label.text if rec.label is not None else ""
        key = label.split("(")[0].strip()
        if fid in seen_ids or not key or key in seen_labels or "dense" in rec.stats.flags:
            continue
        seen_ids.add(fid)
        seen_labels.add(key)
        scores = {s.method: round(float(s.value), 3) for s in reversed(rec.scores)}  # newest wins
        exs = [_marked(e) for e in rec.top_examples[:3]]
        out.append(FeatureShowcase(fid, label, scores, float(rec.stats.freq), rec.level, exs, concept,
                                   None if f1 is None else round(f1, 3)))
    return out


def _marked(example, before: int = 8, after: int = 3) -> str:
    """An example window as text, the activating (centre) token in [[ ]], cropped around it."""
    from features.tokentext import mark_pieces, visible

    toks = list(example.tokens) if any(example.tokens) else [f" <{t}>" for t in example.token_ids]
    c = example.centre
    lo, hi = max(0, c - before), min(len(toks), c + after + 1)
    text = mark_pieces([visible(t) for t in toks[lo:hi]], [c - lo], "[[", "]]").strip()
    return ("... " if lo > 0 else "") + text + (" ..." if hi < len(toks) else "")


def _steering_candidates(store, topic: str, n: int) -> tuple[list[dict[str, Any]], bool]:
    """Latents that match a toy-world topic (token F1, the store's concept matches), best first:
    sparse ones (firing on at most SPARSE_MAX_FREQ of tokens, not flagged dense or BOS-only) when
    there are any; (candidates, sparse)."""
    from toyworld.lexicon import TOPICS

    concepts = {f"topic:{t}": t for t in (TOPICS if topic == AUTO else [topic])}
    rows: dict[int, dict[str, Any]] = {}
    for m in store.concept_matches():
        if m.concept not in concepts or (m.feature_id in rows and rows[m.feature_id]["f1"] >= m.f1):
            continue
        st = store.feature(m.feature_id).stats
        rows[m.feature_id] = {"feature": m.feature_id, "topic": concepts[m.concept], "f1": round(float(m.f1), 4),
                              "freq": float(st.freq), "flags": list(st.flags)}
    ranked = sorted(rows.values(), key=lambda r: (-r["f1"], r["feature"]))
    sparse = [r for r in ranked if r["freq"] <= SPARSE_MAX_FREQ and not {"dense", "bos_only", "dead"} & set(r["flags"])]
    return (sparse or ranked)[:n], bool(sparse)


def _stage_steer(cfg: DemoConfig, paths: DemoPaths, model, sae, progress: bool, info: dict, say) -> SteeringExample | None:
    from features import FeatureStore, sae_fingerprint
    from saesteer.commands._steering import toy_scorer
    from steering import GenerationConfig, StoreLink, SweepConfig
    from steering.sweeps import store_recommendation, sweep, target_margin, write_sweep_html, write_sweep_json

    fp = sae_fingerprint(sae)
    settings = {k: getattr(cfg, k) for k in ("steer_topic", "steer_candidates", "steer_strengths", "steer_samples",
                                              "steer_test_samples", "steer_positions", "steer_new_tokens", "seed")}
    example_file = paths.steering / "example.json"
    if example_file.is_file():
        old = json.loads(example_file.read_text(encoding="utf-8"))
        if old.get("sae_fingerprint") == fp and _same_json(old.get("settings"), settings):
            info["status"] = "reused"
            info["note"] = f"feature {old['feature']} toward '{old['topic']}'"
            return SteeringExample(**old)

    targets = dict(target_concept=0.5, min_fluency=0.8, min_grammar=0.8)
    with FeatureStore.open(paths.store, readonly=False) as store:
        link = StoreLink(store)
        cands, sparse = _steering_candidates(store, cfg.steer_topic, cfg.steer_candidates)
        if not cands:
            say("no latent matches a toy-world topic in the feature store; no steering example")
            info["note"] = "no topic latent"
            return None
        say(("" if sparse else f"no latent firing on <= {SPARSE_MAX_FREQ:.0%} of tokens matches a topic; ")
            + "candidates (topic, token F1, share of tokens fired on): "
            + ", ".join(f"#{c['feature']} ({c['topic']}, F1 {c['f1']:.2f}, {c['freq']:.1%})" for c in cands))
        gen_cfg = GenerationConfig(max_new_tokens=cfg.steer_new_tokens, seed=cfg.seed, stop_at_eos=False)
        strengths = sorted(set([0.0] + cfg.steer_strengths))
        # rule "z": the worst margin to every target in standard errors (topic share is the noisiest score)
        sweep_cfg = SweepConfig(strengths=strengths, op="add", unit="max_act", positions=cfg.steer_positions,
                                perplexity=False, rule="z", **targets)
        say(f"each swept over {strengths} x typical max on {cfg.steer_samples} dev samples (seed {cfg.seed}), scored "
            f"offline: topic share, fluency, grammatical sentences (toy validator)")
        best = None  # (met, margin, candidate, result, strength)
        for c in cands:
            res = sweep(model, sae, c["feature"], [""] * cfg.steer_samples, toy_scorer(c["topic"]), sweep_cfg,
                        gen_config=gen_cfg, typical_max=link.typical_max, progress=progress)
            met = res.recommended is not None
            steered = [p for p in res.points if p.strength != 0]
            pick = (next(p for p in steered if p.strength == res.recommended) if met
                    else max(steered, key=lambda p: (target_margin(p, **targets, in_se=True), -p.strength)))
            margin = target_margin(pick, **targets, in_se=True)
            c.update(recommended=res.recommended, margin=round(margin, 3), verdict=res.verdict)
            say(f"  #{c['feature']} ({c['topic']}): {res.verdict}")
            if best is None or (met, margin) > (best[0], best[1]):
                best = (met, margin, c, res, pick.strength)
        met, _, cand, res, strength = best
        html = write_sweep_html(res, paths.steering / f"sweep_{cand['feature']}.html")
        write_sweep_json(res, paths.steering / f"sweep_{cand['feature']}.json")
        store_recommendation(link.record_strength, res)  # the web playground prefills it (or learns none works)
        tmax = link.typical_max(cand["feature"])
        rec = store.feature(cand["feature"])
    label = rec.label.text if rec.label is not None else None
    detection = next((float(x.value) for x in rec.scores if x.method == "detection"), None)
    by_s = {p.strength: p for p in res.points}
    dev = {"seed": cfg.seed, "samples": cfg.steer_samples,
           **_figures(by_s[0.0], "default"), **_figures(by_s[strength], "steered")}
    test, examples, visible = _held_out(cfg, model, sae, cand, strength, link_typical_max=tmax)
    ex = SteeringExample(
        topic=cand["topic"], feature=cand["feature"], label=label, concept_f1=cand["f1"], freq=cand["freq"],
        detection=detection, strength=strength, raw_strength=None if tmax is None else strength * tmax, rule=res.rule,
        met=met, verdict=res.verdict, dev=dev, test=test, examples=examples, visible=visible, candidates=cands,
        sweep_html=str(html), sae_fingerprint=fp, settings=settings,
    )
    from saes.fileio import atomic_write_json

    atomic_write_json(example_file, dataclasses.asdict(ex))
    info["note"] = (f"feature {cand['feature']} toward '{cand['topic']}' at {strength:g}x typical max; held-out share "
                    f"{test['share_default']:.0%} -> {test['share_steered']:.0%}")
    return ex


def _figures(point_or_result: Any, which: str) -> dict[str, Any]:
    """Topic share, fluency and grammatical share (means over samples) of a sweep point or a scored row."""
    p = point_or_result
    return {f"share_{which}": p.concept, f"fluency_{which}": p.fluency, f"grammar_{which}": p.grammar,
            f"share_{which}_se": p.concept_se}


def _held_out(cfg: DemoConfig, model, sae, cand: dict, strength: float, link_typical_max: float | None):
    """The chosen (latent, strength) on samples the choice never saw (seed + 1): figures, and the
    held-out samples where the steering is visible (steered on topic, default not), in order."""
    from saesteer.commands._steering import toy_scorer
    from steering import FeatureEdit, GenerationConfig, steer
    from steering.evaluate import score_generation
    from steering.generation import generate

    seed = cfg.seed + 1
    n = cfg.steer_test_samples
    gen_cfg = GenerationConfig(max_new_tokens=cfg.steer_new_tokens, seed=seed, stop_at_eos=False)
    prompts = [""] * n
    scorer = toy_scorer(cand["topic"])
    edit = FeatureEdit(cand["feature"], "add", strength, unit="max_act", positions=cfg.steer_positions)
    with steer(model, sae, [edit], typical_max={cand["feature"]: link_typical_max}) as s:
        steered = s.generate(prompts, gen_cfg)
    default = generate(model, prompts, gen_cfg)
    r_def = score_generation("default", model, prompts, default, scorer, with_perplexity=False)
    r_st = score_generation("steered", model, prompts, steered, scorer, with_perplexity=False)
    test = {"seed": seed, "samples": n, **_figures(r_def, "default"), **_figures(r_st, "steered")}
    share = scorer.concept_share
    rows = [{"sample": i, "default": d, "steered": t, "share_default": share(d), "share_steered": share(t)}
            for i, (d, t) in enumerate(zip(default.texts, steered.texts))]
    visible = [r for r in rows if r["share_steered"] >= 0.5 > r["share_default"]]
    return test, (visible or rows)[:3], len(visible)


# ------------------------------------------------------------------------------------- driver
def run_demo(
    cfg: DemoConfig | None = None,
    *,
    judge_cfg: Any = None,
    fresh: bool = False,
    progress: bool = True,
    console: Any = None,
    model: Any = None,
) -> DemoResult:
    """Run (or resume, or reuse) every stage of the demo; returns what the summary shows.

    judge_cfg: an `autointerp.JudgeConfig` (default: from the environment, offline when no judge
    model is configured). model: an already loaded toy model (default: `load_model("toy")`).
    Raises `DemoError` with a message saying what to do."""
    cfg = cfg or DemoConfig()
    con = console or _console()
    if hasattr(con, "print"):
        from rich.text import Text

        def say(message: str) -> None:  # messages hold paths and labels: never rich markup
            con.print(Text(message))
    else:
        say = print
    paths = DemoPaths(Path(cfg.out))
    t_start = time.perf_counter()
    _prepare_out(cfg, paths, fresh, say)
    timer = StageTimer(con, len(STAGES))

    with timer.stage("model", "toy model and corpus") as info:
        import torch  # noqa: F401  (the first heavy import; counted in this stage)

        import toyworld

        toyworld.corpus_files("train")  # writes the default toy corpus the first time (about a minute)
        toyworld.corpus_files("validation")
        if model is None:
            from saesteer.models import load_model

            model = load_model("toy", device="cpu")
        else:
            info["status"] = "reused"
        model.eval()
        info["note"] = (f"{model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
                        f"vocabulary {model.cfg.d_vocab}")

    with timer.stage("cache", f"activation cache: {cfg.cache_tokens:,} tokens at {cfg.hook}") as info:
        cache = _stage_cache(cfg, paths, model, progress, info, say)

    with timer.stage("train", f"train a Matryoshka BatchTopK SAE (d_sae {cfg.d_sae}, k {cfg.k})") as info:
        name, sae_dir, metrics, train_info = _stage_train(cfg, paths, model, progress, info, say)

    import saes

    sae = saes.load_sae(sae_dir)
    sae.eval()
    with timer.stage("features", "feature store: statistics, examples, neighbours, ground-truth concepts") as info:
        store_summary, n_rows, concepts = _stage_features(cfg, paths, model, sae, sae_dir, progress, info, say)

    with timer.stage("label", "label the latents") as info:
        judge, n_labelled = _stage_label(cfg, paths, judge_cfg, progress, info, say)

    toward = "a sparse latent of a toy-world topic" if cfg.steer_topic == AUTO else f"toward '{cfg.steer_topic}'"
    from saes.threads import torch_threads

    # generation with the toy model is many tiny steps ([16, 128] x [128, 512]): on a busy machine a
    # second thread's spinning multiplies the CPU time (7 s of CPU with one thread, 147 s with two, at load 9)
    with timer.stage("steer", f"steering example: {toward}") as info, torch_threads(1):
        steering = _stage_steer(cfg, paths, model, sae, progress, info, say)

    from features import FeatureStore

    with FeatureStore.open(paths.store, readonly=True) as store:
        topic = steering.topic if steering is not None else (None if cfg.steer_topic == AUTO else cfg.steer_topic)
        showcase = _showcase(store, cfg.showcase, topic)
    result = DemoResult(
        config=cfg, paths=paths, sae_name=name, sae_dir=Path(sae_dir), metrics=metrics, train_info=train_info,
        store_summary=store_summary, cache_rows=cache.manifest.total_rows, concepts=concepts, judge=judge,
        labelled=n_labelled, showcase=showcase, steering=steering, stage_seconds=dict(timer.seconds),
        stage_status=dict(timer.status), total_seconds=round(time.perf_counter() - t_start, 2), model=model,
    )
    from saes.fileio import atomic_write_json

    atomic_write_json(paths.summary, result.to_json())
    return result


# ------------------------------------------------------------------------------------- summary
def print_summary(result: DemoResult, console: Any = None) -> None:
    """SAE quality, a few labelled features with their top examples, the steering example."""
    from rich.table import Table
    from rich.text import Text

    from training.report import dead_figures_note

    con = console or _console()
    m, cfg = result.metrics, result.config
    con.rule("[bold]summary", align="left")

    q = Table(title=f"SAE quality: {result.sae_name} on {cfg.hook} (held-out tokens; dead: see below)",
              title_justify="left")
    for col in ("explained variance", "CE loss recovered", "L0", "dead", "held-out dead", "cache dead", "dense", "KL"):
        q.add_column(col, justify="right")
    d_sae = int(m.get("d_sae") or cfg.d_sae)
    cache_dead = result.store_summary.get("dead")
    ce = m.get("ce_loss_recovered")
    kl = m.get("kl_div")
    q.add_row(f"{m['explained_variance']:.3f}", "-" if ce is None else f"{ce:.3f}", f"{m['l0']:.1f}",
              f"{m['dead_fraction']:.1%}", f"{m['eval_dead_fraction']:.1%}",
              "-" if cache_dead is None else f"{cache_dead / d_sae:.1%}",
              f"{m.get('dense_fraction', 0.0):.1%}", "-" if kl is None else f"{kl:.4f}")
    con.print(q)
    levels = m.get("levels") or []
    if levels:
        con.print("Matryoshka levels (explained variance using the first w latents): "
                  + ", ".join(f"{lv['width']}: {lv['explained_variance']:.3f}" for lv in levels))
    t = result.train_info
    rate = t.get("tokens_per_second")
    con.print(f"trained on {t.get('tokens_trained') or 0:,} tokens in {t.get('steps') or 0:,} steps"
              + (f" ({rate:,.0f} tokens/s, step method {t.get('step_method')})" if rate else "")
              + "; " + dead_figures_note(m.get("dead_window_tokens"), m.get("eval_rows"), result.cache_rows))
    c = result.concepts
    if c.get("concepts"):
        con.print(f"ground truth: of {c['concepts']} toy-world concepts, {c['f1_at_least_0.5']} have a latent with "
                  f"token F1 >= 0.5 and {c['f1_at_least_0.8']} one with F1 >= 0.8 (median best F1 "
                  f"{c['median_best_f1']:.2f})")

    con.print()
    con.print(Text.assemble(("labelled features", "bold"), (  # the judge's name is the user's (--judge-model)
        f" ({result.labelled:,} labelled by {result.judge}; label, its detection / fuzzing scores, the ground-truth "
        f"concept it matches; activating token in [[ ]])")))
    for f in result.showcase:
        sc = ", ".join(f"{k} {v:.2f}" for k, v in sorted(f.scores.items()))
        lvl = "" if f.level is None else f", Matryoshka level {f.level}"
        gt = "" if f.concept is None else f"; matches '{f.concept}' with F1 {f.f1:.2f}"
        con.print(Text.assemble((f"  #{f.id} ", "bold"), (f"{f.label}", "bold cyan"),
                                f"   ({sc}; fires on {f.freq:.2%} of tokens{lvl}{gt})"))
        for e in f.examples[:2]:
            con.print(Text("      " + e))

    s = result.steering
    if s is not None:
        _print_steering(con, s, cfg)

    con.print()
    times = ", ".join(f"{k} {v:.1f} s" + (" (reused)" if result.stage_status.get(k) == "reused" else "")
                      for k, v in result.stage_seconds.items())
    con.print(f"stage times: {times}; total {_fmt_secs(result.total_seconds)}")
    con.print(Text(f"work folder: {result.paths.out} (summary.json, train/training_curves.html, features.db)"))


def _print_steering(con: Any, s: SteeringExample, cfg: DemoConfig) -> None:
    from rich.table import Table
    from rich.text import Text

    con.print()
    where = ("every position" if cfg.steer_positions == "all"
             else f"token positions {cfg.steer_positions} (0 = BOS)")
    det = "" if s.detection is None else f", detection {s.detection:.2f}"
    con.print(Text.assemble(("steering", "bold"), f": feature #{s.feature} ", (f"{s.label or 'unlabelled'}", "bold cyan"),
                            f" matches topic '{s.topic}' (token F1 {s.concept_f1:.2f}; fires on {s.freq:.1%} of "
                            f"tokens{det})"))
    d, t = s.dev, s.test
    con.print(Text(f"  add {s.strength:g} x its typical max activation"
                   + ("" if s.raw_strength is None else f" (= {s.raw_strength:.2f})") + f" at {where}, picked on "
                   f"{d['samples']} dev samples (seed {d['seed']}) from {len(s.candidates)} candidate latent(s) by "
                   + (s.rule if s.met else f"the closest to the targets: no strength met {s.rule}")))
    con.print(Text(f"  held-out ({t['samples']} samples, seed {t['seed']}): '{s.topic}' share of topic words "
              f"{t['share_default']:.0%} -> {t['share_steered']:.0%} (+-{t['share_steered_se']:.0%}); fluency "
              f"{t['fluency_default']:.2f} -> {t['fluency_steered']:.2f}; grammatical sentences "
              f"{t['grammar_default']:.0%} -> {t['grammar_steered']:.0%}  (dev: {d['share_default']:.0%} -> "
              f"{d['share_steered']:.0%}; curve: {s.sweep_html})"))
    if t["share_steered"] < 0.5 or t["grammar_steered"] < 0.8 or t["fluency_steered"] < 0.8:
        con.print("  on the held-out samples the steering missed a target (share >= 50%, fluency >= 0.8, "
                  "grammatical >= 80%)")
    shown = (f"held-out samples: {s.visible} of {t['samples']} are on topic (share >= 50%) only when steered; the "
             f"first {len(s.examples)} of them" if s.visible else
             f"the first {len(s.examples)} held-out samples (none is on topic only when steered)")
    tab = Table(show_lines=True, title=f"{shown}; same seed, {cfg.steer_new_tokens} new tokens", title_justify="left")
    tab.add_column("sample", style="bold", ratio=1, overflow="fold")
    tab.add_column("default", ratio=4, overflow="fold")
    tab.add_column("steered", ratio=4, overflow="fold")
    for e in s.examples:
        tab.add_row(Text(f"#{e['sample']}"), _topic_marked(e["default"], s.topic), _topic_marked(e["steered"], s.topic))
    con.print(tab)


def _topic_marked(text: str, topic: str):
    """The text with the topic's words in bold green (other topics' words dim)."""
    from rich.text import Text

    from toyworld.validate import topic_counts

    out = Text()
    for i, w in enumerate(text.split(" ")):
        counts = topic_counts(w)
        style = "bold green" if counts.get(topic) else ("dim" if any(counts.values()) else "")
        out.append(("" if i == 0 else " "))
        out.append(w, style=style)
    return out


# ------------------------------------------------------------------------------------- serving
def serve_demo(result: DemoResult, *, host: str = "127.0.0.1", port: int = 8000, console: Any = None,
               model: Any = None) -> None:
    """Serve the demo's feature store (browse + steer) with `saesteer serve`'s machinery; blocks
    until interrupted. A busy `port` is replaced by a free one."""
    from saesteer.web import create_app
    from saesteer.web.config import Limits, ServeConfig
    from saesteer.web.launch import open_entries
    from saesteer.web.listen import listening_socket, run_server

    con = console or _console()
    model = model if model is not None else result.model
    if model is None:
        from saesteer.models import load_model

        model = load_model("toy", device="cpu")
    model.eval()
    limits = Limits()
    entries = open_entries([result.paths.store], model=model, sae_dirs=[result.sae_dir], limits=limits)
    try:
        sock = listening_socket(host, port)
    except OSError:
        if not port:
            raise
        con.print(f"port {port} is busy; using a free one")
        sock = listening_socket(host, 0)
    config = ServeConfig(host=host, port=int(sock.getsockname()[1]))
    try:
        app = create_app(entries, config=config, limits=limits, token=os.environ.get("SAESTEER_TOKEN") or None)
    except BaseException:
        sock.close()
        raise
    token = app.state.web.token
    base = f"http://{host}:{config.port}"
    url = f"{base}/" + (f"?token={token}" if token else "")
    con.rule("[bold]web app", align="left")
    s = result.steering
    sid = entries[0].id
    query = s.topic if s is not None else ("ocean" if result.config.steer_topic == AUTO else result.config.steer_topic)

    def ready() -> None:  # once uvicorn accepts connections (saesteer.web.listen)
        con.print(f"[bold green]saesteer serving on {url}[/]  (Ctrl-C stops it)")
        con.print(f"  features: {base}/s/{sid}   search: {base}/s/{sid}/search?q={query}"
                  + (f"   steering playground: {base}/s/{sid}/steer?f={s.feature}" if s else ""))

    run_server(app, sock, on_ready=ready, log_level="warning", proxy_headers=False, server_header=False,
               date_header=False)
