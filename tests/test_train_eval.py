"""Evaluation metrics against hand computations; CE loss recovered on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.eager_ce import eager_splice_metrics
from saes import create_sae
from training.evaluate import evaluate_activations, sae_reconstructor, splice_metrics

X = [[1.0, 2.0, 0.5], [-1.0, 0.0, 2.0], [0.3, -0.7, 1.1], [2.0, 1.0, -1.0], [0.0, 0.5, 0.25]]
W_ENC = [[0.9, -0.2, 0.1, -1.0], [0.1, 0.8, 0.3, -1.0], [-0.4, 0.2, 0.9, -1.0]]  # [D=3, F=4]; latent 3 never fires
B_ENC = [0.05, -0.1, 0.0, -0.5]
W_DEC = [[1.0, 0.1, 0.0], [0.0, 1.0, 0.2], [0.1, 0.0, 1.0], [0.5, 0.5, 0.5]]
B_DEC = [0.1, -0.2, 0.3]


def _sae(arch="topk", **kw):
    sae = create_sae(arch, 3, 4, k=1, **kw)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor(W_ENC))
        sae.b_enc.copy_(torch.tensor(B_ENC))
        sae.W_dec.copy_(torch.tensor(W_DEC))
        sae.b_dec.copy_(torch.tensor(B_DEC))
    return sae


def _hand(scale: float, select):
    """Plain-python evaluation: rows read as scale * x, recon / scale compared with x."""
    n, D, F = len(X), 3, 4
    resid, l0, fires = 0.0, 0, [0] * F
    level_resid = {}
    for x in X:
        xs = [scale * v for v in x]
        pre = [sum((xs[i] - B_DEC[i]) * W_ENC[i][j] for i in range(D)) + B_ENC[j] for j in range(F)]
        active = select(pre)  # {latent: value}
        l0 += sum(1 for v in active.values() if v != 0)
        for j, v in active.items():
            fires[j] += v != 0
        for width in (2, 4):
            r = [B_DEC[i] + sum(v * W_DEC[j][i] for j, v in active.items() if j < width) for i in range(D)]
            level_resid[width] = level_resid.get(width, 0.0) + sum((x[i] - r[i] / scale) ** 2 for i in range(D))
        recon = [B_DEC[i] + sum(v * W_DEC[j][i] for j, v in active.items()) for i in range(D)]
        resid += sum((x[i] - recon[i] / scale) ** 2 for i in range(D))
    mean = [sum(x[i] for x in X) / n for i in range(D)]
    total = sum((x[i] - mean[i]) ** 2 for x in X for i in range(D))
    return {
        "explained_variance": 1 - resid / total, "mse": resid / n, "l0": l0 / n,
        "eval_dead_fraction": sum(f == 0 for f in fires) / F, "dense_fraction": sum(f / n > 0.3 for f in fires) / F,
        "levels": {w: (1 - r / total, r / n) for w, r in level_resid.items()},
    }


def _top1(pre):
    j = max(range(len(pre)), key=lambda i: pre[i])
    return {j: max(pre[j], 0.0)}


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_topk_metrics_match_hand_computation(scale: float) -> None:
    got = evaluate_activations(_sae(), torch.tensor(X), scale=scale, dense_threshold=0.3)
    want = _hand(scale, _top1)
    for key in ("explained_variance", "mse", "l0", "eval_dead_fraction", "dense_fraction"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    assert got["eval_rows"] == 5
    batched = evaluate_activations(_sae(), [torch.tensor(X[:2]), torch.tensor(X[2:])], scale=scale, dense_threshold=0.3)
    assert batched["explained_variance"] == pytest.approx(got["explained_variance"], rel=1e-9)


def test_matryoshka_levels_match_hand_computation() -> None:
    thr = [0.2, 0.5, 0.1, 0.0]
    sae = _sae("matryoshka_batchtopk", matryoshka_widths=[2, 4])
    with torch.no_grad():
        sae.threshold.copy_(torch.tensor(thr))

    def by_threshold(pre):
        return {j: p for j, p in enumerate(pre) if p > thr[j] and p > 0}

    got = evaluate_activations(sae, torch.tensor(X), dense_threshold=0.3)
    want = _hand(1.0, by_threshold)
    assert got["l0"] == pytest.approx(want["l0"])
    assert got["explained_variance"] == pytest.approx(want["explained_variance"], rel=1e-5)
    assert [lv["width"] for lv in got["levels"]] == [2, 4]
    for lv in got["levels"]:
        ev, mse = want["levels"][lv["width"]]
        assert lv["explained_variance"] == pytest.approx(ev, rel=1e-5) and lv["mse"] == pytest.approx(mse, rel=1e-5)
    assert got["levels"][-1]["explained_variance"] == pytest.approx(got["explained_variance"])


# ------------------------------------------------------------------------------- in the model
@pytest.fixture(scope="module")
def tiny():
    from helpers.tiny_model import make_model, make_tokenizer

    tok = make_tokenizer()
    model = make_model(tok, d_model=32, n_layers=2, n_ctx=16, n_heads=2, seed=0)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, len(tok), (6, 12), generator=g)
    tokens[:, 0] = tok.bos_token_id
    return model, tokens, tok.bos_token_id


def test_ce_recovered_identity_is_one_and_zero_is_zero(tiny) -> None:
    model, tokens, _ = tiny
    hook = "blocks.0.hook_resid_post"
    ident = splice_metrics(model, lambda x: x, hook, tokens, batch_size=4)
    assert ident.ce_loss_recovered == 1.0 and ident.kl_div == pytest.approx(0.0, abs=1e-7)
    assert ident.ce_loss_spliced == ident.ce_loss_clean
    zero = splice_metrics(model, torch.zeros_like, hook, tokens, batch_size=4)
    assert zero.ce_loss_recovered == 0.0 and zero.ce_loss_spliced == zero.ce_loss_zero
    assert zero.kl_div > 0 and zero.ce_loss_zero != zero.ce_loss_clean
    # the eager formulas: mean next-token NLL over every predicted position, mean KL(clean || zero-ablated)
    clean_ce, _, _, _, kl = eager_splice_metrics(model, tokens, (), hook, torch.zeros_like)
    assert ident.ce_loss_clean == pytest.approx(clean_ce, rel=1e-5)
    assert zero.kl_div == pytest.approx(kl, rel=1e-5)
    assert not model.hook_dict[hook].fwd_hooks  # scoped hooks are gone afterwards


def test_identity_sae_recovers_everything_and_kept_positions(tiny) -> None:
    model, tokens, bos = tiny
    d = model.cfg.d_model
    sae = create_sae("topk", d, 2 * d, k=d)
    with torch.no_grad():  # pre = [x, -x]; the d positive parts rebuild x exactly
        eye = torch.eye(d)
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    m = splice_metrics(model, sae_reconstructor(sae, scale=3.0), "blocks.1.hook_resid_pre", tokens, batch_size=4)
    assert m.ce_loss_recovered == pytest.approx(1.0, abs=1e-4) and m.kl_div < 1e-6
    # keeping BOS clean in both the spliced and the ablated pass changes the zero baseline only
    kept = splice_metrics(model, torch.zeros_like, "blocks.1.hook_resid_pre", tokens, keep_token_ids=[bos])
    assert kept.ce_loss_recovered == 0.0 and not math.isclose(kept.ce_loss_zero, m.ce_loss_zero)


def test_unknown_hook_is_an_error(tiny) -> None:
    model, tokens, _ = tiny
    with pytest.raises(ValueError, match="unknown hook point 'blocks.9.hook_resid_post'"):
        splice_metrics(model, lambda x: x, "blocks.9.hook_resid_post", tokens)
