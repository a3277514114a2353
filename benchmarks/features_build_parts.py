"""`saesteer features build` with the parts of its store write timed, or its pass alone.

    python benchmarks/features_build_parts.py build --sae SAE --cache CACHE [--model M] --out X.db --overwrite --no-progress
        the CLI command; prints RESULT {json}: process CPU seconds of the whole command, of the store
        write (features.build._write: relations, then blocks), of the blocks' rows (_block_rows, example
        texts included), of the example texts and of the SQLite block writes; peak RSS
    python benchmarks/features_build_parts.py pass SAE CACHE HOOK
        the pass alone (FeatureAccumulator.update over the cache's batches, 1 torch thread): PASS {json}

Run it from the tree to measure (PYTHONPATH=TREE), each run under `flock /work/wt/bench.lock`,
trees interleaved; benchmarks/RESULTS.md "features build: co-activation rows and the store write".
"""

import collections
import json
import resource
import sys
import time

T: collections.Counter = collections.Counter()


def wrap(owner, name: str, key: str) -> None:
    f = getattr(owner, name)

    def timed(*a, **k):
        c = time.process_time()
        try:
            return f(*a, **k)
        finally:
            T[key] += time.process_time() - c

    setattr(owner, name, timed)


def build(argv: list[str]) -> int:
    import features.build as fb
    from features.store import FeatureStore
    from saesteer.cli import main

    wrap(fb, "_write", "write_cpu_s")
    wrap(fb, "_block_rows", "block_rows_cpu_s")
    if hasattr(fb, "WindowTexts"):
        wrap(fb.WindowTexts, "get", "texts_cpu_s")
    else:  # before features.windowtexts
        wrap(fb, "token_texts", "texts_cpu_s")
    wrap(FeatureStore, "write_feature_block", "sqlite_cpu_s")
    rc = main(["features", "build", *argv])
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT", json.dumps({**T, "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024}), flush=True)
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


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    sys.exit(build(rest) if mode == "build" else pass_alone(*rest))
