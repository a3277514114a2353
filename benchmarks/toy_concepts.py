"""The toy world's ground-truth concept recovery: for a list of SAE settings, train each SAE (one at
a time, on one shared activation cache), score every concept's best single latent (F1, as
`features.concepts`), and set it against the linear ceiling at the same hook (`evals.ceiling`).
Used by `python benchmarks/bench_features.py toy` (see its --help).

A setting is written `arch=topk,d_sae=2048,k=16,lr=2e-3,layer=1,tokens=8M,widths=64/256/2048` (JumpReLU: no k,
`arch=jumprelu,l0_coefficient=0.1`);
omitted keys take the command's defaults. Each SAE is trained in `<work>/runs/<slug>/` and reused
when its `bench.json` is there (so a re-run only trains the new settings); CPU seconds are the
training process's (all threads), measured around `training.train`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

ARCH_SHORT = {"topk": "topk", "batchtopk": "batchtopk", "matryoshka_batchtopk": "matryoshka", "jumprelu": "jumprelu"}
F1_GOAL = 0.8


@dataclass(frozen=True)
class ToySAE:
    arch: str = "topk"
    d_sae: int = 1024
    k: int = 16
    lr: float | None = None  # None: the trainer's width rule (2e-4 / sqrt(d_sae / 16384))
    layer: int = 2  # hook blocks.<layer>.hook_resid_post
    tokens: int = 8_000_000
    widths: tuple[int, ...] = ()  # Matryoshka prefixes (empty: the trainer's ~4x steps)
    l0_coefficient: float | None = None  # JumpReLU's sparsity penalty (None: its default); JumpReLU ignores k

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.hook_resid_post"

    @property
    def slug(self) -> str:
        lr = "lrW" if self.lr is None else f"lr{self.lr:g}"
        w = "-w" + ".".join(map(str, self.widths)) if self.widths else ""
        c = "" if self.l0_coefficient is None else f"-c{self.l0_coefficient:g}"
        return f"L{self.layer}-{self.arch}-f{self.d_sae}-k{self.k}-{lr}-t{self.tokens}{w}{c}"

    @property
    def label(self) -> str:
        lr = "LR width rule" if self.lr is None else f"LR {self.lr:g}"
        w = f", levels {'/'.join(map(str, self.widths))}" if self.widths else ""
        if self.arch == "jumprelu":
            sparsity = "no k, L0 penalty " + ("default" if self.l0_coefficient is None else f"{self.l0_coefficient:g}")
        else:
            sparsity = f"k {self.k}"
        return (f"{ARCH_SHORT.get(self.arch, self.arch)} L{self.layer} d_sae {self.d_sae} {sparsity}, {lr}, "
                f"{_tokens(self.tokens)} tokens{w}")


def _tokens(n: int) -> str:
    return f"{n / 1e6:g}M" if n % 100_000 == 0 else f"{n:,}"


def _count(text: str) -> int:
    t = text.strip().lower().replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def parse_sae(text: str, defaults: ToySAE) -> ToySAE:
    """`arch=topk,d_sae=2048,...` over `defaults`; an unknown key or bad value names the key."""
    from saes.registry import canonical_name

    changes: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in {f for f in ToySAE.__dataclass_fields__}:
            raise SystemExit(f"--sae {text!r}: {part!r} is not key=value with a key of "
                             f"{', '.join(ToySAE.__dataclass_fields__)}")
        try:
            if key == "arch":
                changes[key] = canonical_name(value.strip())
            elif key in ("lr", "l0_coefficient"):
                changes[key] = None if value.strip() in ("", "auto", "width", "default") else float(value)
            elif key == "widths":
                changes[key] = tuple(int(w) for w in value.replace("/", " ").split())
            elif key == "tokens":
                changes[key] = _count(value)
            else:
                changes[key] = int(value)
        except ValueError:
            raise SystemExit(f"--sae {text!r}: bad value for {key}: {value!r}") from None
    return replace(defaults, **changes)


# ---------------------------------------------------------------------------------------------
def cache_tokens(work: Path, layers: list[int], train_tokens: int, eval_tokens: int, log=print) -> dict[str, Path]:
    """One cache per split holding every layer's residual stream (built once, then confirmed)."""
    from saesteer.models import load_model
    from training.cache import build_cache
    from training.cache_config import CacheConfig
    from training.text import TextConfig

    model = load_model("toy", device="cpu")
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in sorted(set(layers))]
    out = {}
    for split, n in (("train", train_tokens), ("validation", eval_tokens)):
        out[split] = work / f"cache-{split}"
        t0 = time.process_time()
        build_cache(model, TextConfig(dataset="toy", split=split, context_length=128),
                    CacheConfig(out=str(out[split]), hooks=hooks, max_tokens=n), progress=False, log=None)
        log(f"cache {split}: {hooks}, up to {n:,} tokens, {time.process_time() - t0:.0f} CPU s")
    return out


def train_one(spec: ToySAE, cache_train: Path, work: Path, log=print) -> dict:
    """Train `spec` (or reuse it); returns its bench.json record."""
    from training.config import CheckpointConfig, EvalConfig, LogConfig, OptimConfig, RunConfig, SAESpec, TrainConfig, takes_k
    from training.reader import CacheReader
    from training.run import train

    run_dir = work / "runs" / spec.slug
    record_path = run_dir / "bench.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    cfg = RunConfig(
        saes=[SAESpec(spec.arch, d_sae=spec.d_sae, k=spec.k if takes_k(spec.arch) else None, matryoshka_widths=list(spec.widths), lr=spec.lr, name="sae",
                      options={} if spec.l0_coefficient is None else {"l0_coefficient": spec.l0_coefficient})],
        train=TrainConfig(total_tokens=spec.tokens, batch_size=4096, dead_tokens=1_000_000),
        optim=OptimConfig(),
        checkpoint=CheckpointConfig(every_tokens=0),
        eval=EvalConfig(every_tokens=0, ce_contexts=0),
        log=LogConfig(progress=False),
    )
    reader = CacheReader(cache_train, batch_size=4096, hook=spec.hook, seed=0, epochs=None)
    log(f"training {spec.label} ...")
    t0, c0 = time.perf_counter(), time.process_time()
    train(cfg, reader, run_dir, provenance={"model_name": "toyworld-tiny", "hook_name": spec.hook}, resume="never")
    record = {"spec": asdict(spec), "cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0,
              "load_average": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M")}
    record_path.write_text(json.dumps(record, indent=1))
    log(f"  {record['cpu_s']:.0f} CPU s, {record['wall_s']:.0f} s wall")
    return record


@dataclass
class Scored:
    spec: ToySAE
    record: dict
    best: dict  # concept -> ConceptMatch
    dead: int
    dense: int
    l0: float  # mean latents firing per validation token
    latent: dict = field(default_factory=dict)  # concept -> its best latent
    fits: dict = field(default_factory=dict)  # concept -> (the concept its best latent fits best, that F1)


def score_one(spec: ToySAE, record: dict, cache_val: Path, work: Path, names: list[str], min_positives: int) -> Scored:
    import saes as saes_pkg
    import toyworld
    from features import CacheSource
    from features.concepts import concept_f1_over_source

    sae = saes_pkg.load_sae(work / "runs" / spec.slug / "saes" / "sae").eval()
    source = CacheSource(cache_val, hook=spec.hook)
    scores = concept_f1_over_source(sae, source, lambda ids: toyworld.concept_masks(ids, names), names)
    best = {m.concept: m for m in scores.best_per_concept(min_positives=min_positives)}
    freq = scores.fires_F.double() / scores.n_rows
    f1_FC = scores.f1_FC()
    latent, fits = {}, {}
    for c in best:
        latent[c] = f = int(torch.argsort(-f1_FC[:, names.index(c)], stable=True)[0])  # as ConceptScores.top
        j = int(torch.argmax(f1_FC[f]))
        fits[c] = (names[j], float(f1_FC[f, j]))
    (work / "runs" / spec.slug / "concepts.json").write_text(json.dumps([m.__dict__ for m in best.values()], indent=1))
    return Scored(spec, record, best, int((scores.fires_F == 0).sum()), int((freq > 0.1).sum()),
                  float(scores.fires_F.sum()) / scores.n_rows, latent, fits)


def activation_rows(cache: Path, hook: str, names: list[str], max_rows: int | None, seed: int = 0):
    """(activations [R, D] float32, concept masks [R, C] bool) of a cache's rows, a seeded random
    sample of `max_rows` of them when given."""
    import toyworld
    from features import CacheSource

    source = CacheSource(cache, hook=hook)
    xs, ms = [], []
    L = source.context_length
    for batch in source.batches(0, 64):
        seq_C = torch.arange(batch.first_context, batch.first_context + batch.n_contexts)
        masks = toyworld.concept_masks(source.window_tokens(seq_C, torch.zeros_like(seq_C), L), names)
        m_CLK = torch.stack([masks[n].bool() for n in names], -1)
        ms.append(m_CLK[batch.seq_index_B - batch.first_context, batch.positions_B])
        xs.append(batch.acts_BD.float())
        if max_rows is not None and sum(len(x) for x in xs) >= 4 * max_rows:
            break
    x, m = torch.cat(xs), torch.cat(ms)
    if max_rows is not None and len(x) > max_rows:
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_rows]
        x, m = x[keep], m[keep]
    return x, m


def ceiling_for_layer(layer: int, caches: dict[str, Path], work: Path, names: list[str], fit_rows: int,
                      min_positives: int, log=print) -> dict:
    """Linear ceiling per concept at `layer` (computed once, kept in <work>/ceiling-L<layer>.json)."""
    from evals.ceiling import linear_ceiling

    path = work / f"ceiling-L{layer}-{fit_rows}.json"
    if path.exists():
        return json.loads(path.read_text())
    hook = f"blocks.{layer}.hook_resid_post"
    c0 = time.process_time()
    x_fit, y_fit = activation_rows(caches["train"], hook, names, fit_rows)
    x_test, y_test = activation_rows(caches["validation"], hook, names, None)
    ceiling = linear_ceiling(x_fit, y_fit, x_test, y_test, names, min_positives=min_positives)
    out = {"fit_rows": len(x_fit), "test_rows": len(x_test), "cpu_s": time.process_time() - c0,
           "f1": {c: p._asdict() for c, p in ceiling.items()}}
    path.write_text(json.dumps(out, indent=1))
    log(f"linear ceiling at {hook}: {sum(p.f1 >= F1_GOAL for p in ceiling.values())}/{len(ceiling)} concepts >= {F1_GOAL}, "
        f"{out['cpu_s']:.0f} CPU s")
    return out


# ---------------------------------------------------------------------------------------------
def concept_family(concept: str, families: dict[str, list[str]]) -> str:
    from toyworld.lexicon import CONTEXT_TAGS

    if ":" in concept:
        prefix = concept.split(":")[0] + ":*"
        if len(families.get(prefix, [])) >= 3:
            return prefix
    return "context (dialogue, question, imperative, tense)" if concept in CONTEXT_TAGS else "other categories"


def families_of(concepts: list[str]) -> dict[str, list[str]]:
    by_prefix: dict[str, list[str]] = {}
    for c in concepts:
        if ":" in c:
            by_prefix.setdefault(c.split(":")[0] + ":*", []).append(c)
    out: dict[str, list[str]] = {}
    for c in concepts:
        out.setdefault(concept_family(c, by_prefix), []).append(c)
    return dict(sorted(out.items(), key=lambda kv: (kv[0].startswith(("context", "other")), -len(kv[1]), kv[0])))


def share(values: list[float]) -> float:
    return sum(v >= F1_GOAL for v in values) / max(len(values), 1)


def why_failed(match, ceiling_f1: float | None) -> str:
    """Why a concept's best latent stays under the goal, from its precision and recall."""
    if ceiling_f1 is not None and ceiling_f1 < F1_GOAL:
        return "low ceiling"
    if match.precision < 0.5 <= match.recall:
        return "absorbed"  # the best latent fires on a superset: a broader concept's latent
    if match.recall < 0.5 <= match.precision:
        return "split"  # the best latent fires on a part of it: the concept is spread over latents
    return "near miss" if match.precision >= 0.5 else "no match"
