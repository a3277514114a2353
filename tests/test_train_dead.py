"""Dead-latent counting: latents that can never fire are counted dead, and only they."""

from __future__ import annotations

import torch

from saes import SparseActs
from training.config import RunConfig, SAESpec, TrainConfig
from training.trainer import Trainer
from training.update import fired_counts, update_dead_counters_


def test_fired_counts_ignore_zero_valued_selections() -> None:
    # TopK picks k entries per row even when fewer are positive: those have value 0 and did not fire
    acts = SparseActs.from_topk(torch.tensor([[2.0, 0.0], [1.0, 3.0]]), torch.tensor([[0, 1], [1, 2]]), 4)
    assert fired_counts(acts).tolist() == [1, 1, 1, 0]


def test_counter_window() -> None:
    since = torch.zeros(3, dtype=torch.int64)
    update_dead_counters_(since, torch.tensor([1, 0, 0]), 100)
    update_dead_counters_(since, torch.tensor([0, 2, 0]), 50)
    assert since.tolist() == [50, 0, 150]
    assert (since >= 150).tolist() == [False, False, True]


def test_latents_that_cannot_fire_are_dead() -> None:
    D, F, B = 16, 64, 256
    never = torch.arange(48, 64)
    cfg = RunConfig(
        saes=[SAESpec("topk", d_sae=F, k=4)],
        train=TrainConfig(total_tokens=40 * B, batch_size=B, dead_tokens=8 * B, normalize_activations=False,
                          b_dec_init="zeros", step_method="autograd"),
    )
    tr = Trainer(cfg, D)
    sae = tr.members[0].sae
    with torch.no_grad():  # latents 48..63 read only dims 8..15, where the data is zero, and have a large negative bias
        sae.W_enc[:8, never] = 0
        sae.W_enc[8:, never] = sae.W_enc[8:, never] / sae.W_enc[8:, never].norm(dim=0)
        sae.b_enc[never] = -50.0
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        x = torch.zeros(B, D)
        x[:, :8] = torch.randn(B, 8, generator=g)
        tr.train_batch(x)
    m = tr.members[0]
    dead = m.dead_mask(cfg.train.dead_tokens)
    assert dead[never].all()
    assert (m.since_fired_F[never] == 40 * B).all()  # never reset once
    assert tr.dead_fraction(m) == float(dead.float().mean()) >= len(never) / F
    live = torch.ones(F, dtype=torch.bool)
    live[never] = False
    # the latents that could fire did fire recently (they are the only ones the data reaches)
    assert int(dead[live].sum()) < int(live.sum()) // 2
    assert torch.isfinite(sae.W_enc).all()
