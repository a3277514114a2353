"""steering.fluency's per-token statistics (nll, entropy, varentropy behind every steer-eval and sweep
score) a few positions at a time: what the eager formulas over the whole [positions, vocab] give,
including the cut after the first end-of-text token and rows with nothing to score."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

CHILD = Path(__file__).parent / "helpers" / "bigvocab_child.py"
EOS = 3


class _FixedLogits:
    """A model that returns given logits (as the Bridge does for left-padded rows) with a tokenizer's EOS."""

    def __init__(self, logits_BTV):
        self.logits_BTV = logits_BTV
        self.tokenizer = type("Tok", (), {"eos_token_id": EOS})()

    def __call__(self, tokens_BT, padding_side):
        assert padding_side == "left"
        return self.logits_BTV


def _eager_stats(logits_BTV, tokens_BT, starts):
    out = []
    for b, start in enumerate(starts):
        if start >= tokens_BT.shape[1] or start < 1:
            out.append((0.0, 0.0, 0.0, 0))
            continue
        logp = torch.log_softmax(logits_BTV[b, start - 1:-1].float(), dim=-1)
        target = tokens_BT[b, start:]
        is_eos = target == EOS
        keep = ~((is_eos.cumsum(0) - is_eos.long()) > 0)
        nll = -logp.gather(-1, target[:, None])[:, 0]
        p = logp.exp()
        ent = -(p * logp).sum(-1)
        var = ((p * logp * logp).sum(-1) - ent * ent).clamp(min=0)
        out.append((float(nll[keep].sum()), float(ent[keep].sum()), float(var[keep].sum()), int(keep.sum())))
    return out


@pytest.mark.parametrize("chunk", [1, 3 * 97, 1 << 22])  # one position, chunks of 3, all at once
def test_token_stats_a_few_positions_at_a_time_are_the_eager_ones(monkeypatch, chunk):
    import steering.fluency as fl

    monkeypatch.setattr(fl, "_STATS_CHUNK_ELEMS", chunk)
    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(4, 11, 97, generator=g)).to(torch.bfloat16)
    tokens = torch.randint(4, 97, (4, 11), generator=g)
    tokens[1, 7] = EOS  # row 1 is scored up to and including its EOS
    starts = [5, 5, 11, 1]  # row 2 has nothing to score
    got = fl._token_stats(_FixedLogits(logits), tokens, starts)
    want = _eager_stats(logits, tokens, starts)
    assert got[2] == (0.0, 0.0, 0.0, 0) and got[1][3] == 3
    for g_row, w_row in zip(got, want):
        assert g_row[3] == w_row[3] and g_row[:3] == pytest.approx(w_row[:3], rel=1e-5, abs=1e-6)
    assert all(row[2] > 0 for row in got if row[3])  # varentropy is measured, not clamped away


def test_token_stats_of_a_large_vocabulary_make_no_whole_log_softmax():
    # a row's logits are 32 MB; the eager formulas made four more of that size (log-softmax, exp and two
    # products), slices of 1 MB make a few MB
    out = subprocess.run([sys.executable, str(CHILD), "token_stats"], capture_output=True, text=True, check=True).stdout
    before, after = map(int, out.split())
    assert after - before < 16 * 1024
