"""The evaluation's parts on planted data: probes, absorption, sparse probing."""

from __future__ import annotations

import pytest
import torch

import saes
from evals.absorption import _word_absorption, first_letter_absorption
from evals.linear import fit_logistic
from evals.probing import ProbingData, balanced_tasks, sparse_probing


def test_newton_and_lbfgs_fits_agree_and_separate() -> None:
    import evals.linear as linear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g) * 3 + 1
    y = (x[:, 0] - 0.5 * x[:, 3] + 0.3 * torch.randn(400, generator=g)) > 1.0
    newton = fit_logistic(x, y)
    assert float((newton.predict(x) == y).double().mean()) > 0.95
    old = linear.NEWTON_MAX_FEATURES
    linear.NEWTON_MAX_FEATURES = 1
    try:
        lbfgs = fit_logistic(x, y, max_iter=500)
    finally:
        linear.NEWTON_MAX_FEATURES = old
    torch.testing.assert_close(newton.w_P, lbfgs.w_P, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(x, torch.zeros(400, dtype=torch.bool))


def test_word_absorption_formulas() -> None:
    cos = torch.tensor([1.0, 0.8, 0.05, 0.0])
    # the main latent carries everything: no absorption
    assert _word_absorption(torch.tensor([3.0, 0, 0, 0]), cos, 3.0, [0]) == (0.0, False)
    # the main latent is silent and latent 1 (aligned with the probe) carries 0.8 * 2 of 3: full absorption
    assert _word_absorption(torch.tensor([0.0, 2.0, 0, 0]), cos, 3.0, [0]) == (1.0, True)
    # the main latent carries 1 of 3, latent 1 carries 1.6: a partial absorption fraction
    fraction, full = _word_absorption(torch.tensor([1.0, 2.0, 0, 0]), cos, 3.0, [0])
    assert fraction == pytest.approx(1.6 / 2.6) and not full
    # a weakly aligned latent (cos 0.05): too weak for the fraction (needs 0.1), enough for full absorption
    # (needs 0.025) when it carries >= 40% of the probe projection (30 * 0.05 = 1.5 of 3), not when less
    assert _word_absorption(torch.tensor([0.0, 0.0, 30.0, 0]), cos, 3.0, [0]) == (0.0, True)
    assert _word_absorption(torch.tensor([0.0, 0.0, 9.0, 0]), cos, 3.0, [0]) == (0.0, False)


def _planted(n_per_letter: int = 20, absorbed: int = 8):
    """Words of letters a, b, c. Letter a's latent (0) is switched off on `absorbed` words, each of
    which has its own token latent whose decoder row points along a: absorption by design."""
    letters = ["a", "b", "c"]
    D = 3 + absorbed + 2
    g = torch.Generator().manual_seed(1)
    words, xs = [], []
    for li, letter in enumerate(letters):
        for i in range(n_per_letter):
            x = torch.zeros(D)
            x[li] = 3.0
            if letter == "a" and i < absorbed:
                x[3 + i] = 2.0
            xs.append(x + 0.01 * torch.randn(D, generator=g))
            words.append(f"{letter}{'x' * (i + 1)}")
    acts = torch.stack(xs)
    F = 3 + absorbed
    sae = saes.create_sae("jumprelu", D, F, apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_dec.zero_()
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.fill_(0.5)
        for li in range(3):
            sae.W_enc[li, li] = 1.0
            sae.W_dec[li, li] = 1.0
        for i in range(absorbed):
            sae.W_enc[3 + i, 0] = -2.0  # letter a's latent is silent on absorbed words
            sae.W_enc[3 + i, 3 + i] = 1.0
            sae.W_dec[3 + i, 0], sae.W_dec[3 + i, 3 + i] = 3.0 / 13 ** 0.5, 2.0 / 13 ** 0.5
    return sae, acts, words, absorbed


def test_planted_absorption_is_found_where_it_was_planted() -> None:
    sae, acts, words, absorbed = _planted()
    res = first_letter_absorption(sae, acts, words, max_k=5, f1_jump=0.5, min_words=4, seed=0)
    a, b = res["per_letter"]["a"], res["per_letter"]["b"]
    assert a["main_latents"] == [0] and b["main_latents"] == [1]
    from evals.absorption import _split

    _, test = _split(len(words), 0)
    planted_in_test = sum(1 for w in test.tolist() if w < absorbed)
    assert planted_in_test > 0
    assert a["full_absorptions"] == planted_in_test  # every absorbed test word, and nothing else
    assert a["mean_absorption_fraction"] == pytest.approx(planted_in_test / a["probe_true_positives"])
    assert b["full_absorptions"] == 0 and b["mean_absorption_fraction"] == 0.0
    assert res["letters"] == 3 and 0 < res["mean_absorption_fraction_score"] < 1


def test_sparse_probing_finds_the_latent_that_is_the_concept() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=g)
    concept = x[:, 2] > 0.5
    sae = saes.create_sae("jumprelu", 8, 16, apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(8, 16, generator=g) * 0.1)  # the other latents: weak, random
        sae.W_enc[:, 5] = 0
        sae.W_enc[2, 5] = 1.0  # latent 5 fires exactly when dim 2 exceeds its threshold
        sae.threshold.fill_(0.5)
    tasks = balanced_tasks({"c": concept}, max_per_class=200, min_positives=10, seed=0)
    res = sparse_probing(sae, ProbingData(x, None, 600), tasks, ks=[1, 3])
    assert res["per_task"]["c"]["k"]["1"]["latents"] == [5]
    assert res["sae_accuracy"]["1"] > 0.95 and res["model_accuracy"] > 0.95
    # a task without enough positives is left out
    assert balanced_tasks({"rare": torch.arange(600) < 3}, max_per_class=200, min_positives=10, seed=0) == []


def test_sparse_latent_table_equals_the_dense_computation() -> None:
    from evals.latents import columns, item_vector, latent_table, ranking

    g = torch.Generator().manual_seed(4)
    sae = saes.create_sae("topk", 8, 32, k=5, generator=g)
    x = torch.randn(50, 8, generator=g)
    item_R = torch.randint(0, 7, (50,), generator=g)
    dense_RF = sae.encode(x).detach()
    pooled_IF = torch.zeros(7, 32).index_add_(0, item_R, dense_RF) / torch.bincount(item_R, minlength=7).clamp_min(1)[:, None]
    table = latent_table(sae, x, item_R, 7, chunk_rows=16)  # chunks: row offsets must carry over
    items = torch.tensor([5, 0, 3])
    torch.testing.assert_close(columns(table, [7, 2, 30], items), pooled_IF[items][:, [7, 2, 30]])
    torch.testing.assert_close(item_vector(table, 3), pooled_IF[3])
    pos, neg = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5, 6])
    diff = pooled_IF[pos].mean(0) - pooled_IF[neg].mean(0)
    assert ranking(table, pos, neg)[:5].tolist() == torch.argsort(-diff.double(), stable=True)[:5].tolist()
    rows = latent_table(sae, x)  # one item per row
    torch.testing.assert_close(columns(rows, list(range(32)), torch.arange(50)), dense_RF)


def test_shared_absorption_words_of_another_prefix_or_model_are_refused() -> None:
    """Word activations shared across evaluate_saes calls must be those the config asks for."""
    from evals.absorption import FirstLetterWords
    from evals.config import EvalConfig
    from evals.run import EvalInputs, evaluate_saes

    model = object()
    inputs = EvalInputs(model, None, None, (), absorption_words=FirstLetterWords(model, None, prefix="The word"))
    with pytest.raises(ValueError, match="absorption_prefix"):
        evaluate_saes({}, inputs, EvalConfig(absorption_prefix=""))
    inputs = inputs._replace(absorption_words=FirstLetterWords(object(), None, prefix=""))
    with pytest.raises(ValueError, match="another model"):
        evaluate_saes({}, inputs, EvalConfig(absorption_prefix=""))
    assert evaluate_saes({}, inputs._replace(model=inputs.absorption_words.model), EvalConfig(absorption_prefix="")) == {}
