"""Child process for the kill-and-rerun test: builds a store and SIGKILLs itself at a chosen event.

    python feature_child.py STORE EVENT N      # EVENT: checkpoint | block | never; kill at its N-th occurrence
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (for helpers.*)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo

from helpers.feature_fixtures import WordTokenizer, make_sae, random_source, small_config  # noqa: E402


def source_sae_cfg():
    return (random_source(seed=3, n_contexts=40, context_length=16, d_in=8, contexts_per_chunk=8),
            make_sae("topk", d_in=8, d_sae=40, seed=3),
            small_config(batch_rows=32, checkpoint_rows=60, write_block=8))


def main() -> None:
    from features import build_feature_store

    store, event, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seen = {"count": 0}

    def on_event(name, info):
        if name == event:
            seen["count"] += 1
            if seen["count"] == n:
                os.kill(os.getpid(), signal.SIGKILL)

    source, sae, cfg = source_sae_cfg()
    build_feature_store(store, sae, source, cfg, tokenizer=WordTokenizer(), progress=False, on_event=on_event)


if __name__ == "__main__":
    main()
