"""`saesteer features build` with the parts of its store write timed, or its pass alone.

    python benchmarks/features_build_parts.py build --sae SAE --cache CACHE [--model M] --out X.db --overwrite --no-progress
        the CLI command; prints RESULT {json}: process CPU seconds of the whole command, of the store
        write (features.build._write: relations, then blocks), of each relation (decoder and co-activation
        neighbours, activation correlations, logit effects), of the blocks' rows (_block_rows, example
        texts included), of the example texts and of the SQLite block writes; wall seconds of the
        command, of the store write and of the relations' logit effects; peak RSS
    python benchmarks/features_build_parts.py pass SAE CACHE HOOK
        the pass alone (FeatureAccumulator.update over the cache's batches, 1 torch thread): PASS {json}
    python benchmarks/features_build_parts.py threads SAE CACHE HOOK MODEL STATE [--rounds 5]
        the store write's small tensor work (co-activation neighbours, activation correlations, every
        block's rows) from a saved pass state (`features build` stopped after its pass leaves
        X.db.building.state.safetensors), run with 1 torch thread and with torch's default, rounds
        interleaved: THREADS {json} with the medians of process CPU and wall seconds per part and
        thread count, the load average before and after, and whether the results are equal
    python benchmarks/features_build_parts.py compare --tree old=DIR --tree new=DIR \
            --shape mid=SAE,CACHE,MODEL [--shape big=...] --rounds 3 [--rounds-for big=1] --work DIR
        `build` of every shape by every tree (PYTHONPATH=DIR), rounds interleaved (each run under
        `flock /work/wt/bench.lock`); then per shape and tree the medians, the store's bytes per table
        (SQLite's dbstat) and whether the stores read the same (`examples` and the other tables, hashed;
        with schema 3 the windows and example_refs tables themselves, ids included, and the search text):
        a markdown table, and the raw figures as JSON in --work

Run it from the tree to measure (PYTHONPATH=TREE), each run under `flock /work/wt/bench.lock`,
trees interleaved; benchmarks/RESULTS.md "features build: co-activation rows and the store write".
"""

import collections
import json
import resource
import sys
import time

T: collections.Counter = collections.Counter()
T0 = time.perf_counter()  # the process's start, near enough: wall seconds of the command with its imports


def wrap(owner, name: str, key: str, wall: bool = False) -> None:
    """Time owner.name: process CPU seconds into T[key] (with `wall`, wall seconds into T[key_wall])."""
    f = getattr(owner, name)

    def timed(*a, **k):
        c, w = time.process_time(), time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            T[key] += time.process_time() - c
            if wall:
                T[key.replace("_cpu_s", "_wall_s")] += time.perf_counter() - w

    setattr(owner, name, timed)


def build(argv: list[str]) -> int:
    import features.build as fb
    from features.store import FeatureStore
    from saesteer.cli import main

    wrap(fb, "_write", "write_cpu_s", wall=True)
    wrap(fb, "_block_rows", "block_rows_cpu_s")
    if hasattr(fb, "WindowTexts"):
        wrap(fb.WindowTexts, "get", "texts_cpu_s")
    else:  # before features.windowtexts
        wrap(fb, "token_texts", "texts_cpu_s")
    wrap(FeatureStore, "write_feature_block", "sqlite_cpu_s")
    for name in ("decoder_neighbours", "coact_neighbours", "activation_correlations", "logit_effects"):
        wrap(fb, name, f"{name}_cpu_s", wall=name == "logit_effects")  # the relations, before the blocks
    rc = main(["features", "build", *argv])
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT", json.dumps({**T, "cpu_s": ru.ru_utime + ru.ru_stime, "wall_s": time.perf_counter() - T0,
                                "rss_mb": ru.ru_maxrss / 1024}), flush=True)
    return rc


def pass_alone(sae_path: str, cache: str, hook: str) -> int:
    import torch

    import features.accumulate as A
    from features import BuildConfig, CacheSource
    from saes import load_sae

    torch.set_num_threads(1)
    sae, src, cfg = load_sae(sae_path), CacheSource(cache, hook=hook), BuildConfig()
    wrap(A._BatchContext, "row_latents", "row_latents_cpu_s")
    acc = A.FeatureAccumulator(sae.cfg.d_sae, cfg, src.context_length, bos_id=src.bos_id)
    with torch.no_grad():
        for b in src.batches(0, max(1, cfg.batch_rows // src.context_length)):
            acts = sae.encode_sparse(b.acts_BD)
            c = time.process_time()
            acc.update(acts, b)
            T["update_cpu_s"] += time.process_time() - c
    print("PASS", json.dumps(dict(T)), flush=True)
    return 0


def threads(argv: list[str]) -> int:
    import hashlib
    import os
    import statistics

    import torch
    from safetensors import safe_open
    from transformers import AutoTokenizer

    import features.build as fb
    from features import BuildConfig, CacheSource
    from features.accumulate import FeatureAccumulator
    from features.analysis import CoactSample, activation_correlations, coact_neighbours, decoder_neighbours
    from features.finalize import finalize
    from features.windowtexts import WindowTexts
    from saes import load_sae
    from saes.threads import torch_threads

    sae_path, cache, hook, model, state = argv[:5]
    rounds = int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else 5
    sae, src, cfg = load_sae(sae_path), CacheSource(cache, hook=hook), BuildConfig()
    acc = FeatureAccumulator(sae.cfg.d_sae, cfg, src.context_length, bos_id=src.bos_id)
    with safe_open(state, framework="pt") as f:
        acc.load_state_dict({k: f.get_tensor(k) for k in f.keys()})
    res = finalize(acc)
    tok = AutoTokenizer.from_pretrained(model)
    W_dec = sae.W_dec.detach().float()
    dec_norm, dec_nb = W_dec.norm(dim=1), decoder_neighbours(W_dec, cfg.n_neighbours)
    sample = CoactSample(res.coact_lat_FQK, res.coact_n_F, res.n_fires_F)
    F, default = sae.cfg.d_sae, torch.get_num_threads()

    def parts():
        co = coact_neighbours(sample, cfg.n_neighbours)
        yield "coact_neighbours", co
        corr = activation_correlations(sample, res.coact_val_FQK, res.coact_self_FQ, res.sum_F, res.sumsq_F, res.n_rows,
                                       cfg.n_neighbours)
        yield "activation_correlations", corr
        wt, blocks = WindowTexts(), []
        for f0 in range(0, F, cfg.write_block):
            blocks.append(fb._block_rows(f0, min(F, f0 + cfg.write_block), res, dec_norm, dec_nb, co, corr, None, None,
                                         src, tok, cfg.window_before, cfg.window, wt))
        yield "block_rows", blocks

    def digest(blocks) -> str:  # outside the timings
        h = hashlib.sha256()
        for rows in blocks:
            h.update(repr((rows[:2], rows[3:], rows[2].windows, rows[2].columns)).encode())
        return h.hexdigest()

    figures: dict = collections.defaultdict(list)
    results: dict = {}
    load = [os.getloadavg()]
    for r in range(rounds):
        for n in ((1, default) if r % 2 == 0 else (default, 1)):  # interleaved, each first in turn
            with torch_threads(n):
                c, w = time.process_time(), time.perf_counter()
                for name, out in parts():
                    figures[name, n, "cpu_s"].append(time.process_time() - c)
                    figures[name, n, "wall_s"].append(time.perf_counter() - w)
                    results.setdefault(name, {})[n] = digest(out) if name == "block_rows" else out
                    c, w = time.process_time(), time.perf_counter()
        load.append(os.getloadavg())
    same = {name: all(_equal(v, next(iter(by_n.values()))) for v in by_n.values()) for name, by_n in results.items()}
    print("THREADS", json.dumps({"default_threads": default, "rounds": rounds, "load_1m": [round(x[0], 1) for x in load],
                                 "equal": same, "median": {f"{k[0]} {k[1]}t {k[2]}": round(statistics.median(v), 3)
                                                           for k, v in figures.items()},
                                 "all": {f"{k[0]} {k[1]}t {k[2]}": [round(x, 3) for x in v] for k, v in figures.items()}}),
          flush=True)
    return 0


def _equal(a, b) -> bool:
    """Tensors of two NamedTuples (or two digests) equal, NaN where NaN."""
    if isinstance(a, str):
        return a == b
    import torch
    return all(torch.equal(x, y) or bool(((x == y) | (x.isnan() & y.isnan())).all()) for x, y in zip(a, b))


PARTS = [("whole `features build`", "cpu_s"), ("store write (`_write`)", "write_cpu_s"),
         ("... decoder neighbours", "decoder_neighbours_cpu_s"), ("... logit effects", "logit_effects_cpu_s"),
         ("... co-activation neighbours", "coact_neighbours_cpu_s"),
         ("... activation correlations", "activation_correlations_cpu_s"),
         ("... rows of the blocks (`_block_rows`)", "block_rows_cpu_s"), ("... ... example texts", "texts_cpu_s"),
         ("... SQLite block writes", "sqlite_cpu_s")]
WALL = [("whole `features build`", "wall_s"), ("store write (`_write`)", "write_wall_s"),
        ("... logit effects", "logit_effects_wall_s")]


def store_figures(db: str) -> dict:
    """Bytes on disk, bytes per table (indexes counted with their table) and a hash of what readers read."""
    import hashlib
    import os
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    owner = {n: t for n, t in con.execute("SELECT name, tbl_name FROM sqlite_master")}
    per: collections.Counter = collections.Counter()
    for name, size in con.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
        t = owner.get(name, name)
        per["feature_fts" if t.startswith("feature_fts") else t] += size
    digest = {}
    for table, order in (("examples", "id"), ("features", "latent"), ("neighbours", "latent, kind, rank"),
                         ("correlations", "latent, rank"), ("logit_effects", "latent, kind, rank"), ("vocab", "token_id"),
                         ("windows", "id"), ("example_refs", "id"), ("feature_fts", "rowid")):
        if table not in owner:  # schema 2: no windows, example_refs
            continue
        h = hashlib.sha256()
        for row in con.execute(f"SELECT * FROM {table} ORDER BY {order}"):
            h.update(repr(row).encode())
        digest[table] = h.hexdigest()[:16]
    n_latents = con.execute("SELECT COUNT(*) FROM features").fetchone()[0]
    n_examples = con.execute("SELECT COUNT(*) FROM examples").fetchone()[0]
    con.close()
    size = sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
    return {"bytes": size, "tables": dict(per), "hash": digest, "latents": n_latents, "examples": n_examples}


def compare(argv: list[str]) -> int:
    import argparse
    import os
    import statistics
    import subprocess
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="features_build_parts.py compare")
    ap.add_argument("--tree", action="append", required=True, help="NAME=DIR (a source tree)")
    ap.add_argument("--shape", action="append", required=True, help="NAME=SAE,CACHE[,MODEL]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rounds-for", action="append", default=[], help="SHAPE=N: fewer rounds for a large shape")
    ap.add_argument("--work", required=True)
    a = ap.parse_args(argv)
    trees = dict(t.split("=", 1) for t in a.tree)
    shapes = {k: v.split(",") for k, v in (s.split("=", 1) for s in a.shape)}
    rounds = {k: a.rounds for k in shapes} | {k: int(v) for k, v in (r.split("=", 1) for r in a.rounds_for)}
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    runs: dict = {(s, t): [] for s in shapes for t in trees}
    stores: dict = {}
    for r in range(max(rounds.values())):
        for shape, (sae, cache, *model) in shapes.items():
            if r >= rounds[shape]:
                continue
            for tree, src in trees.items():
                out = work / f"{shape}-{tree}.db"
                cmd = ["flock", "/work/wt/bench.lock", sys.executable, __file__, "build", "--sae", sae, "--cache", cache,
                       *(["--model", model[0]] if model else []), "--out", str(out), "--overwrite", "--no-progress"]
                p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src})
                line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
                if p.returncode or not line:
                    raise RuntimeError(f"{shape} {tree}: {p.stderr[-2000:]}")
                runs[shape, tree].append(json.loads(line[0][7:]))
                print(shape, tree, f"round {r + 1}", line[0][7:], flush=True)
                stores[shape, tree] = store_figures(str(out))
    (work / "figures.json").write_text(json.dumps({"runs": {f"{s} {t}": v for (s, t), v in runs.items()},
                                                   "stores": {f"{s} {t}": v for (s, t), v in stores.items()}}, indent=1))
    cols = [(s, t) for s in shapes for t in trees]
    print("| figure | " + " | ".join(f"{s} {t}" for s, t in cols) + " |")
    print("|---|" + "---:|" * len(cols))

    def med(key):
        return [statistics.median(x.get(key, 0.0) for x in runs[c]) for c in cols]

    for label, key in PARTS:
        print(f"| {label} (CPU s) | " + " | ".join(f"{v:.1f}" for v in med(key)) + " |")
    for label, key in WALL:
        print(f"| {label} (wall s) | " + " | ".join(f"{v:.1f}" for v in med(key)) + " |")
    print("| peak RSS MB | " + " | ".join(f"{v:,.0f}" for v in med("rss_mb")) + " |")
    print("| store MB | " + " | ".join(f"{stores[c]['bytes'] / 1e6:,.1f}" for c in cols) + " |")
    print("| KB per latent | " + " | ".join(f"{stores[c]['bytes'] / 1e3 / max(1, stores[c]['latents']):,.1f}" for c in cols) + " |")
    tables = sorted({t for c in cols for t in stores[c]["tables"]}, key=lambda t: -max(stores[c]["tables"].get(t, 0) for c in cols))
    for t in tables[:8]:
        print(f"| ... {t} MB | " + " | ".join(f"{stores[c]['tables'].get(t, 0) / 1e6:,.1f}" for c in cols) + " |")
    for shape in shapes:
        common = set.intersection(*(set(stores[shape, t]["hash"]) for t in trees))  # tables every tree's store has
        hashes = {t: {k: v for k, v in stores[shape, t]["hash"].items() if k in common} for t in trees}
        same = all(h == next(iter(hashes.values())) for h in hashes.values())
        print(f"{shape}: {stores[shape, next(iter(trees))]['examples']:,} examples; the trees' stores read the same: {same}"
              + ("" if same else f" {hashes}"))
    print("rounds:", rounds)
    return 0


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    modes = {"build": build, "compare": compare, "threads": threads}
    sys.exit(modes[mode](rest) if mode in modes else pass_alone(*rest))
