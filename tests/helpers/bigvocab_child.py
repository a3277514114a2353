"""Child process for the vocabulary-memory tests: peak resident memory (KiB) before and after one
call that reads a vocabulary-sized tensor, printed as two numbers.

    python bigvocab_child.py ce_kl      # training.evaluate's CE/KL of [4, 64, 32768] float32 logits
    python bigvocab_child.py splice     # training.evaluate.splice_metrics over 8 x 64 contexts at vocab 65536
    python bigvocab_child.py unembed    # features.analysis.logit_effects through a bf16 [512, 65536] W_U
    python bigvocab_child.py token_stats  # steering.fluency's per-token stats of [2, 256, 32768] logits
"""

import resource
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def ce_kl() -> None:
    import torch

    import training.evaluate as ev

    ev._CE_CHUNK_ELEMS = 1 << 18  # 1 MB slices: their temporaries are small beside the logits
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 64, 32768, generator=g)  # 32 MB each
    ref = torch.randn(4, 64, 32768, generator=g)
    tokens = torch.randint(0, 32768, (4, 64), generator=g)
    ev._next_token_ce_kl(logits[:1, :2], tokens[:1, :2], ref[:1, :2])  # torch's first-call set-up, not measured
    before = peak()
    ev._next_token_ce_kl(logits, tokens, ref)
    print(before, peak(), flush=True)


def splice() -> None:
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    import training.evaluate as ev

    ev._LOGITS_PASS_ELEMS = 1 << 22  # one context's logits (16 MB) per pass; the batch's 8 would be 134 MB
    ev._CE_CHUNK_ELEMS = 1 << 18  # 1 MB slices of log-softmax
    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=64, d_head=8, n_heads=2, d_vocab=65536,
                                  act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg).eval()
    tokens = torch.randint(0, 65536, (8, 64), generator=torch.Generator().manual_seed(0))

    def halve(x):
        return 0.5 * x

    ev.splice_metrics(model, halve, "blocks.0.hook_resid_post", tokens[:1, :4])  # first-call set-up, not measured
    before = peak()
    ev.splice_metrics(model, halve, "blocks.0.hook_resid_post", tokens, batch_size=8)
    print(before, peak(), flush=True)


def unembed() -> None:
    import torch

    import features.analysis as an

    an._BLOCK_ELEMS = 1 << 20  # 4 MB slices and block products
    g = torch.Generator().manual_seed(0)
    W_U = torch.empty(512, 65536, dtype=torch.bfloat16)  # 64 MB; 128 MB as float32
    for r in range(0, 512, 16):  # made a slice at a time: no float32 copy in the peak before the call
        W_U[r:r + 16] = torch.randn(16, 65536, generator=g)
    model = SimpleNamespace(W_U=W_U, cfg=SimpleNamespace(normalization_type="RMSPre"))
    W_dec = torch.randn(64, 512, generator=g)
    before = peak()
    an.logit_effects(W_dec, model, 10)
    print(before, peak(), flush=True)


def token_stats() -> None:
    import torch

    import steering.fluency as fl

    fl._STATS_CHUNK_ELEMS = 1 << 18  # 1 MB slices
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 256, 32768, generator=g)  # 32 MB a row
    tokens = torch.randint(0, 32768, (2, 256), generator=g)

    class FixedLogits:  # a model whose forward gives these logits
        tokenizer = SimpleNamespace(eos_token_id=None)

        def __call__(self, toks, padding_side):
            return logits[:, :toks.shape[1]]

    model = FixedLogits()
    fl._token_stats(model, tokens[:, :3], [1, 1])  # torch's first-call set-up, not measured
    before = peak()
    fl._token_stats(model, tokens, [1, 1])
    print(before, peak(), flush=True)


if __name__ == "__main__":
    __import__("torch").set_num_threads(1)
    {"ce_kl": ce_kl, "splice": splice, "unembed": unembed, "token_stats": token_stats}[sys.argv[1]]()
