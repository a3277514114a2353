"""Review of the storewrite merge: the co-activation pairs' int32 keys at a width past int32's
square root (46,340 latents: f * F + g would overflow, the block-local keys must not), on a
synthetic sample (no build)."""

from __future__ import annotations

import torch

from features.analysis import CoactSample, activation_correlations, coact_neighbours

F = 50_000  # F * F = 2.5e9 > 2**31: only block-local keys r * F + g fit in int32


def _every_latent_fires_with_the_last():
    """Latent f < F-1 fires once, on token f, with latent F-1 beside it; latent F-1 fires on every
    token but the last (value 1 everywhere). Each sample holds one event [f, F-1]: the largest key
    of a block's last row is r * F + F - 1, the pair that overflows first."""
    last = F - 1
    lat_FQK = torch.stack([torch.arange(F, dtype=torch.int32), torch.full((F,), last, dtype=torch.int32)], 1)[:, None, :]
    n_fires = torch.ones(F, dtype=torch.int64)
    n_fires[last] = F - 1
    sample = CoactSample(lat_FQK, torch.ones(F, dtype=torch.int64), n_fires)
    val_FQK = torch.ones(F, 1, 2)
    self_FQ = torch.ones(F, 1)
    sum_F = n_fires.double()
    return sample, val_FQK, self_FQ, sum_F, sum_F.clone()


def test_coactivation_pairs_past_int32_square_root_name_the_right_latents():
    sample, val, self_, s, ss = _every_latent_fires_with_the_last()
    nb = coact_neighbours(sample, 3)
    assert (nb.ids_Fn[:-1, 0] == F - 1).all() and (nb.ids_Fn[:, 1:] == -1).all() and nb.ids_Fn[-1, 0] == -1
    assert (nb.count_Fn[:-1, 0] == 1).all()  # Jaccard: 1 together / (1 + (F - 1) - 1)
    assert torch.allclose(nb.score_Fn[:-1, 0], torch.tensor(1 / (F - 1)))

    corr = activation_correlations(sample, val, self_, s, ss, F, 3)
    assert (corr.ids_Fn[:-1, 0] == F - 1).all() and (corr.ids_Fn[:, 1:] == -1).all() and corr.ids_Fn[-1, 0] == -1
    # x_f: 1 at token f; x_g: 1 but at the last token. N S_fg - S_f S_g = F - (F - 1) = 1
    var_f, var_g = F * 1 - 1, F * (F - 1) - (F - 1) ** 2
    expected = 1 / (var_f * var_g) ** 0.5
    assert torch.allclose(corr.pearson_Fn[:-1, 0].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5)
