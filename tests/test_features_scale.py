"""Parts of the feature store whose cost grows with the number of latents: their fast versions
against the eager references (see benchmarks/RESULTS.md, "Scale")."""

import pytest
import torch

from features.analysis import CoactSample, coact_neighbours, coact_neighbours_dense


def random_sample(F: int, Q: int, K: int, seed: int, hot: int | None = None) -> CoactSample:
    """Each latent's sampled events with the latents active on them (distinct per event, -1
    padded); `hot` concentrates the activity on a few latents so that counts tie often."""
    g = torch.Generator().manual_seed(seed)
    pool = hot or F
    lat = torch.full((F, Q, K), -1, dtype=torch.int32)
    n_sample = torch.randint(0, Q + 1, (F,), generator=g)
    for f in range(F):
        for q in range(int(n_sample[f])):
            m = int(torch.randint(1, K + 1, (1,), generator=g))
            act = torch.randperm(pool, generator=g)[:m]
            act[0] = f  # the event is one of f's firings: f is active on it
            lat[f, q, : len(act.unique())] = act.unique().to(torch.int32)
    n_fires = n_sample + torch.randint(0, 50, (F,), generator=g) * (n_sample == Q)
    return CoactSample(lat, n_sample, n_fires)


def rows_agree(fast, ref, f: int) -> None:
    ids_a, sc_a, c_a = fast.ids_Fn[f], fast.score_Fn[f], fast.count_Fn[f]
    ids_b, sc_b = ref.ids_Fn[f], ref.score_Fn[f]
    assert torch.equal(sc_a, sc_b), (f, sc_a, sc_b)  # the same scores in the same (descending) order
    assert torch.equal(ids_a == -1, ids_b == -1)
    # the same neighbours, except where equal scores straddle the cut (then either is right)
    cut = sc_b[(ids_b >= 0)].min() if bool((ids_b >= 0).any()) else None
    for i, s in zip(ids_a.tolist(), sc_a.tolist()):
        if i >= 0 and s != cut:
            assert i in ids_b.tolist(), (f, i, ids_a, ids_b)
    # ties inside the kept list: the lower id first
    for j in range(len(ids_a) - 1):
        if ids_a[j + 1] >= 0 and sc_a[j] == sc_a[j + 1]:
            assert ids_a[j] < ids_a[j + 1]
    assert bool((c_a[ids_a >= 0] > 0).all()) and bool((c_a[ids_a < 0] == 0).all())


@pytest.mark.parametrize("F, Q, K, n, hot, seed", [(60, 6, 5, 4, None, 0), (80, 8, 6, 10, 12, 1), (40, 3, 4, 50, 8, 2)])
@pytest.mark.parametrize("block", [None, 7])
def test_sparse_coactivation_neighbours_equal_the_dense_reference(F, Q, K, n, hot, seed, block, monkeypatch):
    """`block`: latents per block made small, so that rows of several blocks are checked."""
    import features.analysis

    if block:
        monkeypatch.setattr(features.analysis, "_BLOCK_ELEMS", 8 * Q * K * block)
    sample = random_sample(F, Q, K, seed, hot)
    fast, ref = coact_neighbours(sample, n), coact_neighbours_dense(sample, n)
    assert fast.ids_Fn.shape == ref.ids_Fn.shape == (F, n)
    for f in range(F):
        rows_agree(fast, ref, f)
    # the counts are the sampled co-firings
    for f in range(F):
        for i, c in zip(fast.ids_Fn[f].tolist(), fast.count_Fn[f].tolist()):
            if i >= 0:
                assert c == int((sample.lat_FQK[f] == i).any(dim=1).sum())
