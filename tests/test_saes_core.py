"""The SAE core: fast paths against eager references, losses against hand computations."""

import pytest
import torch

import saes
from saes.batchtopk import batch_topk_select, batch_topk_select_reference
from saes.losses import auxk_loss, fvu, mse_loss
from saes.sparse import SparseActs, sparse_decode

ARCHS = ["topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "standard"]


def make(arch, d_in=16, d_sae=64, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
        kw.setdefault("k", 4)
    if arch == "matryoshka_batchtopk":
        kw.setdefault("matryoshka_widths", [8, 24, d_sae])
    sae = saes.create_sae(arch, d_in, d_sae, generator=g, **kw)
    with torch.no_grad():  # non-trivial biases and thresholds
        sae.b_enc.normal_(0, 0.1, generator=g)
        sae.b_dec.normal_(0, 0.1, generator=g)
        if hasattr(sae, "threshold"):
            sae.threshold.uniform_(0.0, 0.3, generator=g)
    return sae


def ragged_acts(seed=0, B=12, d_sae=40, density=0.15):
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(B, d_sae, generator=g) * (torch.rand(B, d_sae, generator=g) < density)
    dense[3] = 0  # an empty row
    return SparseActs.from_dense(dense)


@pytest.mark.parametrize("kind", ["topk", "ragged"])
def test_sparse_decode_matches_dense_in_output_and_every_gradient(kind):
    g = torch.Generator().manual_seed(1)
    B, D, Fdim = 12, 8, 40
    if kind == "topk":
        vals, idx = torch.rand(B, Fdim, generator=g).topk(5, dim=1)
        acts = SparseActs.from_topk(vals, idx, Fdim)
    else:
        acts = ragged_acts(B=B, d_sae=Fdim)
    W = torch.randn(Fdim, D, generator=g)
    b = torch.randn(D, generator=g)
    grad_out = torch.randn(B, D, generator=g)
    results = {}
    for method in ("embedding_bag", "dense"):
        v = acts.values_N.clone().requires_grad_(True)
        Wm = W.clone().requires_grad_(True)
        bm = b.clone().requires_grad_(True)
        out = sparse_decode(acts._replace(values_N=v), Wm, bm, method)
        out.backward(grad_out)
        results[method] = (out.detach(), v.grad, Wm.grad, bm.grad)
    for fast, ref, name in zip(results["embedding_bag"], results["dense"], ["out", "d_values", "d_W_dec", "d_b_dec"]):
        torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-6, msg=name)
    if kind == "ragged":
        assert acts.counts()[3] == 0  # the empty row decodes to the bias alone
        torch.testing.assert_close(results["embedding_bag"][0][3], b)


def test_unknown_decode_method_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="embedding_bag"):
        sparse_decode(ragged_acts(), torch.zeros(40, 4), None, "fancy")


@pytest.mark.parametrize("arch", ARCHS)
def test_training_loss_gradients_equal_between_decoders(arch):
    sae = make(arch)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    grads = {}
    for method in ("embedding_bag", "dense"):
        sae.zero_grad()
        out = saes.training_loss(sae, x, dead_mask_F=dead, k_aux=6, decode_method=method)
        out.total.backward()
        grads[method] = (out.total.detach(), [p.grad.clone() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)])
    torch.testing.assert_close(grads["embedding_bag"][0], grads["dense"][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(grads["embedding_bag"][1], grads["dense"][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("B,F,k", [(64, 256, 8), (5, 32, 3), (1, 16, 16), (30, 50, 20)])
def test_batch_topk_two_stage_selection_equals_flat_topk(B, F, k):
    g = torch.Generator().manual_seed(B * F + k)
    pre = torch.randn(B, F, generator=g)
    pre[0] += 5.0  # one row dominates: forces the candidate window to grow
    fast = batch_topk_select(pre, k)
    ref = batch_topk_select_reference(pre, k)
    torch.testing.assert_close(fast.to_dense(), ref.to_dense(), rtol=0, atol=0)
    assert int(fast.counts().sum()) <= k * B


def test_batch_topk_selects_k_per_row_on_average_and_drops_non_positive():
    pre = torch.randn(100, 200, generator=torch.Generator().manual_seed(0))
    acts = batch_topk_select(pre, 10)
    assert acts.values_N.numel() == 1000 and (acts.values_N > 0).all()
    all_neg = batch_topk_select(-pre.abs() - 1, 10)
    assert all_neg.values_N.numel() == 0


def test_topk_encode_has_exactly_k_nonnegative_latents_per_token():
    sae = make("topk", k=5)
    x = torch.randn(3, 7, 16)
    acts = sae.encode(x)
    assert acts.shape == (3, 7, 64)
    assert ((acts != 0).sum(-1) <= 5).all() and (acts >= 0).all()
    pre = sae.pre_activations(x.reshape(-1, 16))
    expected = torch.zeros_like(pre).scatter(1, pre.topk(5, dim=1).indices, pre.topk(5, dim=1).values.relu())
    torch.testing.assert_close(acts.reshape(-1, 64), expected)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk", "jumprelu"])
def test_threshold_encoding_of_a_token_does_not_depend_on_its_batch(arch):
    sae = make(arch)
    x = torch.randn(20, 16)
    alone = torch.stack([sae.encode(x[i : i + 1])[0] for i in range(20)])
    torch.testing.assert_close(sae.encode(x), alone)


def test_frequency_matched_thresholds_reproduce_training_firing_rates():
    torch.manual_seed(0)
    sae = make("batchtopk", d_in=16, d_sae=64, k=4)
    with torch.no_grad():
        sae.threshold.zero_()
    for _ in range(1500):
        x = torch.randn(256, 16)
        pre = sae.pre_activations(x)
        sae.update_inference_form_(pre, sae.training_select(pre), lr=0.05)
    x = torch.randn(20000, 16)
    pre = sae.pre_activations(x)
    train_rate = torch.bincount(batch_topk_select(pre[:16384], 4).indices_N, minlength=64) / 16384
    infer_rate = (sae.encode(x[:16384]) > 0).float().mean(0)
    assert abs(infer_rate.sum() - 4.0) < 0.2  # mean L0 matches k
    busy = train_rate > 0.02
    rel_err = ((infer_rate[busy] - train_rate[busy]).abs() / train_rate[busy]).median()
    assert rel_err < 0.1, rel_err


def test_matryoshka_prefixes_match_masked_dense_reconstructions():
    sae = make("matryoshka_batchtopk", k=6)
    x = torch.randn(40, 16)
    acts = sae.training_select(sae.pre_activations(x))
    recons = sae.level_reconstructions(acts)
    dense = acts.to_dense()
    for width, recon in zip(sae.levels, recons):
        ref = dense[:, :width] @ sae.W_dec[:width] + sae.b_dec
        torch.testing.assert_close(recon, ref, rtol=1e-5, atol=1e-5)
    assert sae.level_of(torch.tensor([0, 7, 8, 23, 24, 63])).tolist() == [0, 0, 1, 1, 2, 2]
    out = saes.training_loss(sae, x)
    assert out.level_mse.shape == (3,)
    torch.testing.assert_close(out.total, out.level_mse.sum())


def test_losses_against_hand_computation():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    r = torch.tensor([[1.0, 1.0], [2.0, 6.0]])
    assert mse_loss(r, x).item() == pytest.approx((1 + 1) / 2)
    # variance around the mean: mean = [2, 4]; energy = 1+4+1+4 = 10; residual energy = 2
    assert fvu(r, x).item() == pytest.approx(0.2)
    assert saes.explained_variance(r, x).item() == pytest.approx(0.8)


def test_auxk_loss_hand_computation_and_zero_without_dead_latents():
    pre = torch.tensor([[3.0, 1.0, 2.0, -1.0]])
    W = torch.eye(4, 2) + torch.tensor([[0, 0], [0, 0], [0, 1.0], [1.0, 0]])
    resid = torch.tensor([[0.5, 1.0]])
    assert auxk_loss(pre, resid, W, torch.zeros(4, dtype=torch.bool), 2).item() == 0.0
    assert auxk_loss(pre, resid, W, None, 2).item() == 0.0
    dead = torch.tensor([False, True, True, True])
    # top-2 dead pre-activations: latent 2 (2.0) and latent 1 (1.0): recon = 2*W[2] + 1*W[1] = [0, 2] + [0, 1]
    # -> [0, 3]; error vs residual [0.5, 1.0] = 0.25 + 4 = 4.25; scale = min(3/2, 1) = 1
    assert auxk_loss(pre, resid, W, dead, 2).item() == pytest.approx(4.25)
    # k_aux = 6 > 3 dead: scale 3/6, k = 3 -> latent 3 is negative and contributes 0
    assert auxk_loss(pre, resid, W, dead, 6).item() == pytest.approx(0.5 * 4.25)


@pytest.mark.parametrize("arch", ARCHS)
def test_folding_activation_scale_keeps_latents_and_reconstructions(arch):
    sae = make(arch)
    x = torch.randn(50, 16, dtype=torch.float64)
    sae = sae.double()
    s = 3.7
    scaled = sae(x * s)
    sae.fold_activation_scale_(s)
    raw = sae(x)
    torch.testing.assert_close(raw.acts.to_dense(), scaled.acts.to_dense())
    torch.testing.assert_close(raw.recon, scaled.recon / s)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "topk"])
def test_folding_decoder_norm_keeps_reconstructions(arch):
    sae = make(arch).double()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1, dtype=torch.float64) + 0.5)
    x = torch.randn(30, 16, dtype=torch.float64)
    before = sae(x).recon
    sae.fold_decoder_norm_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(sae(x).recon, before)


def test_folding_decoder_norm_is_refused_for_topk_where_it_would_change_the_selection():
    with pytest.raises(ValueError, match="would change which latents"):
        make("topk").fold_decoder_norm_()


def test_wrong_width_input_is_an_error_naming_both_widths():
    sae = make("topk")
    with pytest.raises(ValueError, match=r"width 15 .* d_in=16"):
        sae.encode(torch.randn(4, 15))


@pytest.mark.parametrize(
    "arch,kw,match",
    [
        ("topk", {"k": 0}, "k must be a positive integer"),
        ("topk", {"k": 100}, "must not exceed d_sae"),
        ("matryoshka_batchtopk", {"k": 2, "matryoshka_widths": [8, 4, 64]}, "strictly increasing"),
        ("matryoshka_batchtopk", {"k": 2, "matryoshka_widths": [8, 32]}, "must end at d_sae"),
        ("nonsense", {}, "unknown SAE architecture 'nonsense'; known: batchtopk"),
    ],
)
def test_bad_configs_name_the_field(arch, kw, match):
    with pytest.raises(ValueError, match=match):
        saes.create_sae(arch, 16, 64, **kw)


def test_default_matryoshka_widths_nest_up_to_d_sae():
    assert saes.MatryoshkaConfig(d_in=8, d_sae=8192).matryoshka_widths == [128, 512, 2048, 8192]
    assert saes.MatryoshkaConfig(d_in=8, d_sae=64).matryoshka_widths == [16, 64]
    assert saes.MatryoshkaConfig(d_in=8, d_sae=8, k=2).matryoshka_widths == [4, 8]


def test_forward_changes_no_parameter_or_buffer():
    sae = make("batchtopk")
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    sae(torch.randn(10, 16))
    saes.training_loss(sae, torch.randn(10, 16))
    for k, v in sae.state_dict().items():
        assert torch.equal(v, before[k]), k
