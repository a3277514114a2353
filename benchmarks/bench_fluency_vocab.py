"""Peak memory and CPU time of steering.fluency's per-token statistics (behind every steer-eval and
sweep score) for a generation batch at Gemma's 262,144-entry vocabulary: 2 rows x 128 tokens of
float32 logits (268 MB, as the model gives them), 112 scored tokens a row.

    flock /work/wt/bench.lock python benchmarks/bench_fluency_vocab.py            # this checkout
    flock /work/wt/bench.lock python benchmarks/bench_fluency_vocab.py --code /tmp/base   # another one

Prints the peak resident growth (MB) over the logits and the process CPU seconds of one call.
"""

import argparse
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

parser = argparse.ArgumentParser()
parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1], help="checkout to import")
parser.add_argument("--vocab", type=int, default=262144)
args = parser.parse_args()
sys.path.insert(0, str(args.code))

import torch  # noqa: E402

import steering.fluency as fl  # noqa: E402

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
logits = torch.randn(2, 128, args.vocab, generator=g)
tokens = torch.randint(0, args.vocab, (2, 128), generator=g)


class FixedLogits:  # a model whose forward gives these logits
    tokenizer = SimpleNamespace(eos_token_id=None)

    def __call__(self, toks, padding_side):
        return logits[:, :toks.shape[1]]


fl._token_stats(FixedLogits(), tokens[:, :3], [1, 1])  # torch's first-call set-up, not measured
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
c0 = time.process_time()
fl._token_stats(FixedLogits(), tokens, [16, 16])
cpu = time.process_time() - c0
print(f"{args.code}: peak +{(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024} MB, cpu {cpu:.2f} s")
