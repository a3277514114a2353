"""Child process for the memory tests: build stores over synthetic caches of N1, N2, ... contexts,
one after the other, printing after each: peak resident memory so far (KiB), pass state bytes, rows.

    python feature_memory_child.py DIR N1 N2 ...
    python feature_memory_child.py dense F      # one pass batch where every row fires all F latents:
                                                # peak memory before and after it (KiB)
"""

import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def dense_batch(F: int) -> None:
    import torch

    from features import BuildConfig, TensorSource
    from features.accumulate import FeatureAccumulator
    from helpers.feature_fixtures import identity_sae

    torch.set_num_threads(1)
    x = torch.rand(256, F) + 0.5  # acts = relu(x): every latent on every row
    src = TensorSource(x, torch.randint(2, 50, (4, 64)))
    cfg = BuildConfig(batch_rows=256, checkpoint_rows=0, negative_pool=16, n_negative=4, n_quantile=32, coact_kmax=32)
    sae = identity_sae(F)
    acc = FeatureAccumulator(F, cfg, 64)
    (batch,) = src.batches(0, 4)
    acts = sae.encode_sparse(batch.acts_BD)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    acc.update(acts, batch)
    print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)


def main() -> None:
    import torch

    from features import BuildConfig, SyntheticSource, build_feature_store
    from saes import create_sae

    torch.set_num_threads(1)
    out_dir = Path(sys.argv[1])
    sae = create_sae("topk", 128, 128, k=8, generator=torch.Generator().manual_seed(0)).eval()
    cfg = BuildConfig(batch_rows=4096, checkpoint_rows=0, negative_pool=256)
    for n in map(int, sys.argv[2:]):
        src = SyntheticSource(n, 64, 128, contexts_per_chunk=64, seed=0)
        res = build_feature_store(out_dir / f"{n}.db", sae, src, cfg, progress=False)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, res.state_bytes, res.n_rows, flush=True)

if __name__ == "__main__":
    if sys.argv[1] == "dense":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (helpers)
        dense_batch(int(sys.argv[2]))
    else:
        main()
