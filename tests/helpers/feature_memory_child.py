"""Child process for the memory test: build stores over synthetic caches of N1, N2, ... contexts,
one after the other, printing after each: peak resident memory so far (KiB), pass state bytes, rows.

    python feature_memory_child.py DIR N1 N2 ...
"""

import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


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
    main()
