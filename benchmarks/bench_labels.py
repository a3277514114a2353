"""Label quality on the toy world, where every token's concepts are known.

    python benchmarks/bench_labels.py concepts [--work DIR]     # do offline labels name the concept?
    python benchmarks/bench_labels.py simulation [--work DIR]   # true vs shuffled labels, offline and loopback judge
    python benchmarks/bench_labels.py output [--work DIR]       # output scores vs measured topic steering
    python benchmarks/bench_labels.py all --write               # all three, into benchmarks/RESULTS.md

The toy store (cache -> TopK SAE -> feature store with concept matches) is built in --work the
first time, as `bench_autointerp.py toyworld` builds it, and reused after.

concepts: every latent that is the best match of a toy-world concept with token F1 >= --min-f1 is
labelled by each offline explainer (the token lists of `autointerp.offline`, the concept phrases of
`autointerp.concept` without and with the toy world's lexicon). A label *names* its concept when

  (a) the concept's plain name is among its words (`toyworld.lexicon.CONCEPT_NAMES`: "ocean" for
      topic:ocean, "preposition" for pos:prep), or
  (b) its first word is one of the concept's words and so are at least half of its words (of a
      label "NAME: a, b, c", the listed words a, b, c; of "a / b / c in THEME context: ...", the
      words it fires on, a, b, c).

The concept's words are measured on the cache, not looked up: the tokens whose occurrences carry
the concept at least half of the time. A label's words are its text split at spaces and the
separators the explainers write (" / ", ", ", ": ", "(near: ... )"), without the word "context".
The old measure (README: 14/15) was rule (b)'s first half alone on the token lists.

simulation: for each labelled latent, simulation scores (correlation of predicted with true
per-token activations on held-out examples) of its own label and of a label drawn from another
latent (a fixed derangement); the mean gap, with the offline simulator and with the loopback
judge's simulator (tests/helpers/judge_server.py, whose fake LLM predicts from the label's words).

output: for each toy topic, the feature `steering.search.contrast_features` picks; its output
score (`autointerp.output_score`, offline: does steering raise the share of the label's words?)
against the steering success measured with the toy world's topic validator (topic share of the
steered text minus the unsteered one); Spearman correlation over the topics' features.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Labels"
NOTES = [
    'Reading: at token F1 >= 0.5 the matched latents are mostly word-class latents (prepositions, speech verbs, names), which the token lists already named; the concept phrases name them as well (and, with the toy lexicon, by their category: "preposition: by, in, under"), and gain where a latent is about a context: at F1 >= 0.3 (questions, plurals, numbers, tenses) they name 32-33 of 42 concepts against 27. Topic latents never reach token F1 0.5 (a topic\'s tags sit on its content words only, a topic latent fires on every token of its documents); their labels are in the output table above ("the / a / wet in ocean context: salty, diver, sailor"), where the token lists read "the / a / wet (near: \\" / diver)". The README\'s earlier 14/15 came from another SAE run and the first-word measure. The simulation gap is large offline because the offline simulator predicts from the same words the offline explainer chose; the loopback judge only knows the label text. The output scores track steering success (Spearman +0.76): a latent whose label\'s words show up when it is added is one that moves the text to its topic.',
]
_SEPARATORS = re.compile(r"\(near:|\)| / |, |: ")


def label_words(label: str) -> list[str]:
    """A label's words, in order: split at spaces and the explainers' separators, lowercased."""
    words = []
    for part in _SEPARATORS.split(label.lower()):
        for w in part.split():
            w = w.strip()
            if w and w != "context":
                words.append(w)
    return words


def names_concept(label: str, concept: str, concept_words: set[str], concept_name: str | None) -> bool:
    """Rule (a) or (b) of the module docstring."""
    words = label_words(label)
    if not words:
        return False
    if concept_name and re.search(rf"(?<![\w-]){re.escape(concept_name)}(?![\w-])", label.lower()):
        return True
    named = re.match(r"^([^/:()]+): (.+)$", label)
    inside = re.match(r"^(.+?) in [^:]+ context: ", label)
    if inside:  # "a / b / c in THEME context: ...": it fires on a, b, c (inside the theme)
        words = label_words(inside.group(1)) or words
    elif named and not named.group(1).endswith(" context"):  # "NAME: a, b, c": the listed words are the evidence
        words = label_words(named.group(2)) or words
    hits = sum(1 for w in words if w in concept_words)
    return words[0] in concept_words and 2 * hits >= len(words)


def first_token_rule(label: str, concept_words: set[str]) -> bool:
    """The old measure: the first word is one of the concept's words."""
    words = label_words(label)
    return bool(words) and words[0] in concept_words


# ------------------------------------------------------------------------------------------------
# concepts


def matched_latents(store_path: Path, min_f1: float):
    from features import FeatureStore

    with FeatureStore.open(store_path) as st:
        best = [m for m in st.concept_matches() if m.rank == 0 and m.f1 >= min_f1]
    if not best:
        raise SystemExit(f"{store_path} has no concept matched with F1 >= {min_f1}")
    return sorted(best, key=lambda m: -m.f1)


def label_copy(store_path: Path, tmp: Path, ids: list[int], **label_cfg) -> dict[int, tuple[str, dict]]:
    """Label `ids` on a copy of the store (offline); latent -> (label, detail)."""
    from autointerp.config import LabelConfig
    from autointerp.featurestore import FeatureStoreLabels
    from autointerp.runner import label_latents

    copy = tmp / f"labels-{len(list(tmp.iterdir()))}.db"
    shutil.copy(store_path, copy)
    with FeatureStoreLabels.open(copy) as labels:
        label_latents(labels, None, LabelConfig(overwrite=True, **label_cfg), progress=False, latents=ids)
        out = {}
        for i in ids:
            lab = labels.store.label(i)
            out[i] = (lab.text, lab.provenance.extra["autointerp"].get("detail", {})) if lab else ("(failed)", {})
    return out


def bench_concepts(store_path: Path, cache: Path, min_f1: float, cmd: str) -> list[str]:
    from bench_autointerp import concept_words
    from toyworld.lexicon import CONCEPT_NAMES

    best = matched_latents(store_path, min(min_f1, 0.3))  # the summary also reports F1 >= 0.3
    ids = sorted({m.latent for m in best})
    words = concept_words(cache)
    variants = [("token lists (`--explainer tokens`, before)", {"explainer": "tokens"}),
                ("concept phrases, no lexicon (`--lexicon none`)", {"lexicon": "none"}),
                ("concept phrases, toy lexicon (`--lexicon toy`, the demo's)", {"lexicon": "toy"})]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in variants:
            t0 = time.perf_counter()
            results[name] = label_copy(store_path, Path(tmp), ids, **cfg)
            print(f"{name}: {len(ids)} latents in {time.perf_counter() - t0:.1f} s", flush=True)
    strict = [m for m in best if m.f1 >= min_f1]
    lines = [
        f"Toy world, offline labels of the best latent of every concept with token F1 >= {min_f1} "
        f"({len(strict)} concepts, {len({m.latent for m in strict})} latents; {len(best)} concepts and "
        f"{len(ids)} latents at F1 >= 0.3). *Names it*: the concept's plain name is in the label, or its "
        "first word and at least half of its words are the concept's words (tokens carrying the concept in >= 50% of "
        "their occurrences, measured on the cache). *First word*: the old measure (the first word is a concept word). "
        f"`{cmd}`",
        "",
        f"| explainer | names it (F1 >= {min_f1}) | first word (old measure) | names it (F1 >= 0.3) |",
        "|---|---|---|---|",
    ]
    table = ["| concept | latent | F1 | " + " | ".join(n.split(" (")[0] for n, _ in variants) + " |",
             "|---|---|---|" + "---|" * len(variants)]
    score = {n: [0, 0] for n, _ in variants}
    loose = {n: 0 for n, _ in variants}  # names it, F1 >= 0.3
    n_loose = len(best)
    for m in [m for m in best if m.f1 < min_f1]:
        for n, _ in variants:
            loose[n] += names_concept(results[n][m.latent][0], m.concept, words.get(m.concept, set()),
                                      CONCEPT_NAMES.get(m.concept))
    best = [m for m in best if m.f1 >= min_f1]
    for m in best:
        cw = words.get(m.concept, set())
        name = CONCEPT_NAMES.get(m.concept)
        cells = []
        for n, _ in variants:
            text = results[n][m.latent][0]
            ok = names_concept(text, m.concept, cw, name)
            score[n][0] += ok
            score[n][1] += first_token_rule(text, cw)
            cells.append(f"{text} {'**yes**' if ok else 'no'}")
        table.append(f"| {m.concept} | {m.latent} | {m.f1:.2f} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    for n, _ in variants:
        a, b = score[n]
        c = a + loose[n]
        lines.append(f"| {n} | **{a}/{len(best)} = {a / len(best):.0%}** | {b}/{len(best)} = {b / len(best):.0%} | "
                     f"{c}/{n_loose} = {c / n_loose:.0%} |")
    lines += ["", *table]
    print("\n".join(lines))
    return lines


# ------------------------------------------------------------------------------------------------
# simulation: true vs shuffled labels


def pick_latents(store_path: Path, n: int) -> list[int]:
    """The n most frequent alive latents that are not dense (dense ones fire nearly everywhere)."""
    from features import FeatureStore

    with FeatureStore.open(store_path) as st:
        rows = st.list_features(sort="freq", filter={"alive_only": True, "exclude_flags": ["dense"]}, limit=n)
    return sorted(r.latent for r in rows)


def simulation_scores(store_path: Path, labels: dict[int, tuple[str, dict]], judge, pairs: dict[int, int]):
    """latent -> (score of its own label, score of the label of pairs[latent])."""
    import asyncio

    from autointerp.config import LabelConfig
    from autointerp.featurestore import FeatureStoreLabels
    from autointerp.runner import Labeller
    from autointerp.simulation import SimulationScorer

    labeller = Labeller(None, LabelConfig())
    scorer = SimulationScorer(judge, seed=0)

    async def run(splits):
        out = {}
        for i, split in splits.items():
            own = await scorer.score(i, labels[i][0], labels[i][1], split)
            j = pairs[i]
            other = await scorer.score(i, labels[j][0], labels[j][1], split)
            out[i] = (own.value, other.value)
        return out

    with FeatureStoreLabels.open(store_path) as st:
        splits = {i: labeller.split(st.examples(i)) for i in labels}
    return asyncio.run(run(splits))


def bench_simulation(store_path: Path, n: int, cmd: str) -> list[str]:
    import random

    from autointerp.backends import OpenAIBackend
    from autointerp.judge import Judge
    from helpers.judge_server import JudgeServer, fake_llm_answer

    ids = pick_latents(store_path, n)
    with tempfile.TemporaryDirectory() as tmp:
        labels = label_copy(store_path, Path(tmp), ids)
    ids = [i for i in ids if labels[i][0] != "(failed)"]
    order = ids[:]
    random.Random(0).shuffle(order)
    pairs = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}  # a derangement
    rows = []
    t0 = time.perf_counter()
    offline = simulation_scores(store_path, labels, None, pairs)
    rows.append(("offline simulator (`autointerp.simulation.predict_tokens`)", offline, time.perf_counter() - t0))
    with JudgeServer(fake_llm_answer) as srv:
        judge = Judge(OpenAIBackend("fake-judge", base_url=srv.url, timeout_s=30), cache=None, concurrency=8)
        t0 = time.perf_counter()
        loop = simulation_scores(store_path, {i: (t, {}) for i, (t, _) in labels.items()}, judge, pairs)
        rows.append(("loopback judge (tests/helpers/judge_server.py: strength 10 on the label's words)", loop,
                     time.perf_counter() - t0))
    lines = [
        f"Simulation scores (Pearson correlation of the activations predicted from a label with the true ones, "
        f"held-out activating and silent contexts) of each latent's own offline label and of another latent's "
        f"label (a fixed derangement), over the {len(ids)} most frequent non-dense latents. `{cmd}`",
        "",
        "| simulator | own label (mean) | shuffled label (mean) | mean gap | own > shuffled | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, res, dt in rows:
        own = [a for a, _ in res.values() if a is not None]
        sh = [b for _, b in res.values() if b is not None]
        gaps = [a - b for a, b in res.values() if a is not None and b is not None]
        wins = sum(1 for a, b in res.values() if a is not None and b is not None and a > b)
        lines.append(f"| {name} | {statistics.mean(own):.3f} | {statistics.mean(sh):.3f} | "
                     f"**{statistics.mean(gaps):+.3f}** | {wins}/{len(gaps)} | {dt:.1f} |")
    print("\n".join(lines))
    return lines


# ------------------------------------------------------------------------------------------------
# output scores vs measured steering


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from autointerp.simulation import pearson

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    return pearson(ranks(xs), ranks(ys))


def bench_output(store_path: Path, sae_dir: Path, per_topic: int, samples: int, cmd: str) -> list[str]:
    from autointerp.config import LabelConfig
    from autointerp.featurestore import FeatureStoreLabels
    from autointerp.runner import label_latents
    from saes import load_sae
    from saesteer.outputscore import OutputScoreConfig, score_outputs
    from steering import FeatureEdit, GenerationConfig, StoreLink
    from steering.generation import generate
    from steering.search import contrast_features
    from steering.session import steer
    from toyworld import topic_share
    from toyworld.grammar import generate_document
    from toyworld.lexicon import TOPICS
    from toyworld.model import load_model

    model = load_model(device="cpu")
    sae = load_sae(sae_dir)
    if not sae.cfg.metadata.get("hook_name"):  # bench_autointerp trains from the cache without recording it
        import json

        manifest = json.loads((store_path.parent / "cache" / "manifest.json").read_text())
        hooks = manifest.get("hook_names") or manifest.get("hooks") or []
        sae.cfg.metadata["hook_name"] = hooks[0] if isinstance(hooks, list) else next(iter(hooks))
    docs = {t: [generate_document(f"bench-labels-{t}-{i}", topic=t).text for i in range(24)] for t in TOPICS}
    picks: list[tuple[str, int]] = []
    ranks = [0, 1, 4, 12, 30][:per_topic]  # strong and weak candidates: steering success must vary
    for t in TOPICS:
        negative = [d for u in TOPICS if u != t for d in docs[u][:6]]
        cands = contrast_features(model, sae, docs[t], negative, top=max(ranks) + 1)
        for r in ranks:
            if r < len(cands) and all(cands[r].latent != f for _, f in picks):
                picks.append((t, cands[r].latent))
    cfg = OutputScoreConfig(samples=samples)
    gen = GenerationConfig(max_new_tokens=cfg.new_tokens, seed=cfg.seed, stop_at_eos=False)
    prompts = [cfg.prompt] * cfg.samples
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "store.db"
        shutil.copy(store_path, copy)
        with FeatureStoreLabels.open(copy) as labels:
            ids = sorted({f for _, f in picks})
            label_latents(labels, None, LabelConfig(overwrite=True, lexicon="toy"), progress=False, latents=ids)
            st = labels.store
            scores = score_outputs(model, sae, st, ids, cfg)
            link = StoreLink(st)
            base = generate(model, prompts, gen).texts
            rows = []
            for t, f in picks:
                edit = FeatureEdit(f, "add", cfg.strength, unit="max_act", positions=cfg.edit_positions())
                with steer(model, sae, [edit], typical_max=link.typical_max) as s:
                    steered = s.generate(prompts, gen).texts
                gain = statistics.mean(topic_share(b).get(t, 0.0) - topic_share(a).get(t, 0.0)
                                       for a, b in zip(base, steered))
                rows.append((t, f, st.label(f).text, scores[f].value, gain))
    dt = time.perf_counter() - t0
    rho = spearman([r[3] for r in rows], [r[4] for r in rows])
    from autointerp.simulation import pearson

    r_p = pearson([r[3] for r in rows], [r[4] for r in rows])
    lines = [
        f"Output scores (offline: does adding the latent at BOS and the first four generated tokens, {cfg.strength}x its "
        f"typical max, raise the share of its label's words? win rate over {samples} seed-paired generations of "
        f"{cfg.new_tokens} tokens) against measured steering success (the toy validator's share of the topic's words, "
        f"steered minus unsteered, same generations' settings) for {per_topic} `contrast_features` candidates of each "
        f"of the 8 topics (ranks {ranks}: strong and weak ones; {len(rows)} latents; {dt:.0f} s). `{cmd}`",
        "",
        f"**Spearman {rho:+.2f}**, Pearson {r_p:+.2f} over {len(rows)} latents.",
        "",
        "| topic | latent | label | output score | topic share gain |",
        "|---|---|---|---|---|",
    ]
    for t, f, lab, o, g in sorted(rows, key=lambda r: -r[3]):
        lines.append(f"| {t} | {f} | {lab.replace('|', '/')} | {o:.2f} | {g:+.2f} |")
    print("\n".join(lines))
    return lines


# ------------------------------------------------------------------------------------------------


def write_section(body: list[str]) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, leaving the others alone."""
    from results_md import replace_section

    replace_section(SECTION, SECTION + "\n\n" + "\n".join(body), RESULTS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("concepts", "simulation", "output", "all"))
    ap.add_argument("--work", type=Path, default=Path("runs/bench_autointerp_toy"),
                    help="directory with (or for) the toy cache, SAE and feature store")
    ap.add_argument("--toy-tokens", type=int, default=150_000)
    ap.add_argument("--train-tokens", type=int, default=2_000_000)
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--min-f1", type=float, default=0.5)
    ap.add_argument("--latents", type=int, default=100, help="simulation: how many latents")
    ap.add_argument("--per-topic", type=int, default=4, help="output: candidate latents per toy topic (ranks 0, 1, 4, 12, 30)")
    ap.add_argument("--samples", type=int, default=8, help="output: generation pairs per latent")
    ap.add_argument("--write", action="store_true", help="write the results into benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    from bench_autointerp import build_toy_store

    store = build_toy_store(args.work, tokens=args.toy_tokens, d_sae=args.d_sae, k=args.k, train_tokens=args.train_tokens)
    base = (f"--work {args.work} --toy-tokens {args.toy_tokens} --train-tokens {args.train_tokens} "
            f"--d-sae {args.d_sae} --k {args.k}")
    body: list[str] = [f"Machine: {os.cpu_count()} CPU cores; {time.strftime('%Y-%m-%d')}.", ""]
    if args.what in ("concepts", "all"):
        body += bench_concepts(store, args.work / "cache", args.min_f1,
                               f"python benchmarks/bench_labels.py concepts {base} --min-f1 {args.min_f1}")
        body.append("")
    if args.what in ("simulation", "all"):
        body += bench_simulation(store, args.latents, f"python benchmarks/bench_labels.py simulation {base} "
                                 f"--latents {args.latents}")
        body.append("")
    if args.what in ("output", "all"):
        sae_dir = args.work / "run" / "saes" / f"topk_k{args.k}_f{args.d_sae}"
        body += bench_output(store, sae_dir, args.per_topic, args.samples,
                             f"python benchmarks/bench_labels.py output {base} --per-topic {args.per_topic} "
                             f"--samples {args.samples}")
        body.append("")
    if args.what == "all":
        body += NOTES
    if args.write:
        write_section(body)
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
