"""The CE / KL evaluation of a spliced SAE, taken a few positions at a time (training.evaluate's
`_CE_CHUNK_ELEMS`), through `splice_metrics` on a model: every metric equals the eager formula over
the whole [contexts, positions, vocab] log-softmax, with BOS positions (at the start and mid-row, where
a second document begins) kept clean, and KL in the direction KL(clean || spliced)."""

import pytest
import torch

from helpers.eager_ce import eager_splice_metrics
from training.evaluate import splice_metrics

HOOK = "blocks.0.hook_resid_post"


@pytest.mark.parametrize("positions_per_chunk", [1, 3, None])  # one position, 3 (across rows' ends), all
def test_splice_metrics_in_chunks_are_the_eager_ones_with_bos_kept(monkeypatch, positions_per_chunk):
    import training.evaluate as ev
    from helpers.tiny_model import make_model, make_tokenizer

    tok = make_tokenizer()
    model = make_model(tok, d_model=32, n_layers=2, n_ctx=16, n_heads=2, seed=0)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, len(tok), (5, 12), generator=g)
    tokens[:, 0] = tokens[1, 6] = tokens[3, 9] = tok.bos_token_id
    if positions_per_chunk is not None:
        monkeypatch.setattr(ev, "_CE_CHUNK_ELEMS", positions_per_chunk * model.cfg.d_vocab)

    def halve(x):
        return 0.5 * x

    got = splice_metrics(model, halve, HOOK, tokens, keep_token_ids=[tok.bos_token_id], batch_size=2)
    want = eager_splice_metrics(model, tokens, [tok.bos_token_id], HOOK, halve)
    names = ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero", "ce_loss_recovered", "kl_div")
    for name, w in zip(names, want):
        assert getattr(got, name) == pytest.approx(w, rel=1e-5, abs=1e-7), name
    assert got.kl_div > 0
