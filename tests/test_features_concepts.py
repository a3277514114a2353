"""Concept matching: per (latent, concept) F1 over tokens, streamed."""


import pytest
import torch

from features import TensorSource
from features.concepts import concept_f1, concept_f1_over_source
from helpers.feature_fixtures import identity_sae, single_thread


one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def test_concept_f1_finds_the_planted_latent_and_counts_by_hand():
    # latent 0 fires exactly on concept "a"; latent 1 on half of "b" plus 2 extra tokens; latent 2 never
    a = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0], dtype=torch.bool)
    b = torch.tensor([0, 1, 1, 1, 1, 0, 0, 0], dtype=torch.bool)
    x = torch.zeros(8, 3)
    x[a, 0] = 2.0
    x[[1, 2, 6, 7], 1] = 1.0  # tp 2 of b's 4; fires 4 -> precision 0.5, recall 0.5
    m = torch.stack([a, b], 1)
    sae = identity_sae(3)
    sc = concept_f1(sae, [(x[:5], m[:5]), (x[5:], m[5:])], ["a", "b"])  # two batches
    assert sc.tp_FC.tolist() == [[3, 2], [1, 2], [0, 0]] and sc.pos_C.tolist() == [3, 4]
    best = sc.best("a")
    assert (best.latent, best.f1, best.precision, best.recall) == (0, 1.0, 1.0, 1.0)
    assert sc.best("b").latent == 0  # 2 tp / (3 fires + 4 positives) = 4/7 beats latent 1's 0.5
    assert sc.f1_FC()[1, 1].item() == pytest.approx(0.5)
    assert sc.fraction_at_least(0.8) == 0.5
    assert [m.latent for m in sc.top("b", 3)] == [0, 1, 2]
    with pytest.raises(KeyError, match="unknown concept"):
        sc.best("c")


def test_concept_f1_over_a_cache_reads_tags_of_each_rows_context_and_position():
    ctx = torch.tensor([[1, 5, 6, 5], [1, 6, 5, 7]])
    keep = torch.ones(2, 4, dtype=torch.bool)
    keep[:, 0] = False
    tok = ctx[keep]
    x = torch.zeros(6, 2)
    x[tok == 5, 0] = 1.0  # latent 0 fires on token 5
    x[tok == 7, 1] = 1.0
    src = TensorSource(x, ctx, keep, bos_id=1)
    sc = concept_f1_over_source(identity_sae(2), src, lambda ids: {"five": ids == 5, "seven": ids == 7}, ["five", "seven"],
                                batch_rows=4)
    assert sc.n_rows == 6 and sc.best("five").f1 == 1.0 and sc.best("seven").latent == 1
