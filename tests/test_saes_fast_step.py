"""The fast training step ("fast", "fast_bf16") against the eager autograd reference.

Tolerances (stated once, used below):
- "fast" (exact fp32): the same selected latents, pre-activations bitwise equal, losses and every
  gradient equal to autograd within 1e-5 relative (Frobenius norm of the difference over the
  norm of the reference; elementwise rtol 1e-4 on top). Observed: ~2e-7.
- "fast_bf16": >= 98% of the selected (row, latent) slots equal on random data; losses within
  2e-2 relative; gradients within 2e-2 relative of an fp32 reference that is forced to make the
  same selection, and cosine >= 0.9 with the exact fp32 gradients (flipped near-ties move whole
  encoder columns, so the plain relative error is larger).
"""

import copy

import pytest
import torch

import saes
from saes import native
from saes.fast_step import StepWorkspace, bf16_matmul_is_fast, fast_grads
from saes.losses import auxk_loss, matryoshka_level_losses, mse_loss
from saes.sparse import SparseActs
from saes.step import STEP_METHODS, compute_grads
from saes.threshold import count_above
from saes.topk_select import batch_top_entries, group_size, row_topk, take_top

needs_native = pytest.mark.skipif(not native.available(), reason="no C++ compiler for saes.native")

ARCHS = ["topk", "batchtopk", "matryoshka_batchtopk"]
EXACT = ["fast", pytest.param("fast_native", marks=needs_native)]
BF16 = ["fast_bf16", pytest.param("fast_native_bf16", marks=needs_native)]
REL_TOL = 1e-5
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def make(arch, d_in, d_sae, k, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    kw = {"k": k}
    if arch == "matryoshka_batchtopk":
        kw["matryoshka_widths"] = [max(1, d_sae // 8), d_sae // 2, d_sae]
    sae = saes.create_sae(arch, d_in, d_sae, generator=g, **kw)
    with torch.no_grad():  # non-trivial biases and decoder norms
        sae.b_enc.normal_(0, 0.1, generator=g)
        sae.b_dec.normal_(0, 0.1, generator=g)
        sae.W_dec.mul_(torch.rand(d_sae, 1, generator=g) + 0.5)
    return sae.to(dtype)


def dead_mask(kind, d_sae, seed=3):
    if kind == "none":
        return None
    if kind == "all":
        return torch.ones(d_sae, dtype=torch.bool)
    if kind == "few":  # fewer dead latents than k_aux
        m = torch.zeros(d_sae, dtype=torch.bool)
        m[torch.randperm(d_sae, generator=torch.Generator().manual_seed(seed))[:3]] = True
        return m
    return torch.rand(d_sae, generator=torch.Generator().manual_seed(seed)) < 0.3


def run(sae, x, dead, method, k_aux=6):
    res = compute_grads(sae, x, dead, k_aux=k_aux, method=method)
    return res, {n: getattr(sae, n).grad.clone() for n in PARAMS}


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def assert_grads_match(got, ref, rel=REL_TOL):
    for name in PARAMS:
        assert got[name].shape == ref[name].shape, name
        assert rel_err(got[name], ref[name]) <= rel, (name, rel_err(got[name], ref[name]))
        scale = float(ref[name].abs().max())
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6 * max(scale, 1e-12), msg=name)


def same_slots(a: SparseActs, b: SparseActs) -> float:
    """Share of the reference's selected (row, latent) slots that `a` selected too."""
    da, db = a.to_dense() != 0, b.to_dense() != 0
    return float((da & db).sum()) / max(int(db.sum()), 1)


# ------------------------------------------------------------------- exact fp32 vs autograd
SHAPES = [(64, 16, 256, 4), (1, 16, 64, 8), (33, 8, 64, 60), (128, 32, 512, 16)]


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("dead_kind", ["none", "some", "few", "all"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_D{}_F{}_k{}".format(*s))
@pytest.mark.parametrize("arch", ARCHS)
def test_fast_equals_autograd(arch, shape, dead_kind, method):
    B, D, Fdim, k = shape
    sae = make(arch, D, Fdim, k)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(B + k))
    dead = dead_mask(dead_kind, Fdim)
    ref, ref_g = run(sae, x, dead, "autograd")
    got, got_g = run(sae, x, dead, method)

    torch.testing.assert_close(got.acts.to_dense(), ref.acts.to_dense(), rtol=0, atol=0)
    torch.testing.assert_close(got.acts.offsets_B1, ref.acts.offsets_B1, rtol=0, atol=0)
    assert torch.equal(got.pre_BF, ref.pre_BF)
    for name in ("total", "mse", "aux"):
        a, b = getattr(got, name), getattr(ref, name)
        assert abs(float(a) - float(b)) <= REL_TOL * max(abs(float(b)), 1e-6), (name, float(a), float(b))
    if dead_kind == "none":
        assert float(got.aux) == 0.0
    else:
        assert float(ref.aux) > 0  # the AuxK term is really exercised
    if arch == "matryoshka_batchtopk":
        assert got.level_mse.shape == (3,)
        torch.testing.assert_close(got.level_mse, ref.level_mse, rtol=REL_TOL, atol=0)
    else:
        assert got.level_mse is None and ref.level_mse is None
    torch.testing.assert_close(got.recon_BD, ref.recon_BD, rtol=1e-5, atol=1e-6)
    assert_grads_match(got_g, ref_g)


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_gradients_equal_finite_differences_in_float64(arch):
    """An independent check of the hand-written backward (no autograd): central differences of
    the objective along a random direction, in float64, with dead latents. The AuxK target (the
    residual) is a constant of the objective (detached), so it is held at its value at theta."""
    sae = make(arch, 12, 96, 5, dtype=torch.float64)
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dead, k_aux, coef = dead_mask("some", 96), 7, saes.objective.DEFAULT_AUX_COEF
    res = fast_grads(sae, x, dead, k_aux=k_aux)
    resid = x - res.recon_BD
    g = torch.Generator().manual_seed(2)
    dirs = {n: torch.randn(getattr(sae, n).shape, generator=g, dtype=torch.float64) for n in PARAMS}
    analytic = sum(float((getattr(sae, n).grad * dirs[n]).sum()) for n in PARAMS)

    def loss_at(t):
        s = copy.deepcopy(sae)
        with torch.no_grad():
            for n in PARAMS:
                getattr(s, n).add_(t * dirs[n])
            main = saes.training_loss(s, x).total
            aux = coef * auxk_loss(s.pre_activations(x), resid, s.W_dec, dead, k_aux)
            return float(main + aux)

    assert float(res.total) == pytest.approx(loss_at(0.0), rel=1e-12)
    eps = 1e-6
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert numeric == pytest.approx(analytic, rel=1e-6)


def test_a_wrong_gradient_is_caught():
    """The comparison above fails for a single perturbed gradient entry."""
    sae = make("batchtopk", 16, 256, 4)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    dead = dead_mask("some", 256)
    _, ref_g = run(sae, x, dead, "autograd")
    _, got_g = run(sae, x, dead, "fast")
    assert_grads_match(got_g, ref_g)
    for name in PARAMS:
        bad = dict(got_g)
        bad[name] = got_g[name].clone()
        flat = bad[name].view(-1)
        i = int(flat.abs().argmax())
        flat[i] += 1e-3 * float(flat.abs().max())
        with pytest.raises(AssertionError):
            assert_grads_match(bad, ref_g)


def test_grads_are_overwritten_not_accumulated_and_inputs_are_untouched():
    sae = make("matryoshka_batchtopk", 16, 256, 4)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    x_copy = x.clone()
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    _, first = run(sae, x, None, "fast")
    _, second = run(sae, x, None, "fast")
    for n in PARAMS:
        assert torch.equal(first[n], second[n]), n
    assert torch.equal(x, x_copy)
    for k, v in sae.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_leading_dims_and_other_dtypes_of_the_input_are_flattened_and_cast():
    sae = make("topk", 16, 64, 4)
    x = torch.randn(4, 5, 16, dtype=torch.float64)
    ref, ref_g = run(sae, x, None, "autograd")
    got, got_g = run(sae, x, None, "fast")
    assert got.recon_BD.shape == (20, 16) and got.pre_BF.shape == (20, 64)
    assert_grads_match(got_g, ref_g)


def test_unsupported_architecture_is_an_error_naming_the_fallback():
    sae = saes.create_sae("standard", 8, 32)  # ReLU: loaded, never trained here
    with pytest.raises(ValueError, match="method='autograd'"):
        compute_grads(sae, torch.randn(4, 8), method="fast")


def test_methods_are_registered():
    assert {"autograd", "fast", "fast_bf16", "fast_native", "fast_native_bf16"} <= set(STEP_METHODS)
    assert isinstance(bf16_matmul_is_fast("cpu"), bool)


# ------------------------------------------------------------------------------ bf16
def forced_selection_grads(sae, x, acts):
    """fp32 autograd gradients of the loss with the latents fixed to `acts` (values recomputed)."""
    sae.zero_grad(set_to_none=True)
    x = sae._rows(x)
    pre = sae.pre_activations(x)
    rows = acts.row_ids()
    forced = acts._replace(values_N=pre[rows, acts.indices_N].relu())
    if sae.levels is not None:
        loss = matryoshka_level_losses(sae.level_reconstructions(forced), x).sum()
    else:
        loss = mse_loss(sae.decode(forced), x)
    loss.backward()
    return loss.detach(), {n: getattr(sae, n).grad.clone() for n in PARAMS}


@pytest.mark.parametrize("method", BF16)
@pytest.mark.parametrize("arch", ARCHS)
def test_fast_bf16_selects_nearly_the_same_latents_and_gives_close_gradients(arch, method):
    sae = make(arch, 64, 1024, 16)
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(5))
    ref, ref_g = run(sae, x, None, "autograd")
    got, got_g = run(sae, x, None, method)
    assert got.pre_BF.dtype == torch.bfloat16
    assert same_slots(got.acts, ref.acts) >= 0.98
    for name in ("total", "mse"):
        assert float(getattr(got, name)) == pytest.approx(float(getattr(ref, name)), rel=2e-2)
    for n in PARAMS:
        cos = torch.nn.functional.cosine_similarity(got_g[n].flatten(), ref_g[n].flatten(), dim=0)
        assert cos >= 0.9, (n, float(cos))
    forced_loss, forced_g = forced_selection_grads(sae, x, got.acts)
    assert float(got.total) == pytest.approx(float(forced_loss), rel=2e-2)
    for n in PARAMS:
        assert rel_err(got_g[n], forced_g[n]) <= 2e-2, (n, rel_err(got_g[n], forced_g[n]))


@pytest.mark.parametrize("method", BF16)
@pytest.mark.parametrize("arch", ARCHS)
def test_fast_bf16_auxk_term_is_close(arch, method):
    sae = make(arch, 64, 1024, 16)
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(6))
    dead = dead_mask("some", 1024)
    ref, ref_g = run(sae, x, dead, "autograd", k_aux=32)
    got, got_g = run(sae, x, dead, method, k_aux=32)
    assert float(got.aux) == pytest.approx(float(ref.aux), rel=5e-2)
    for n in PARAMS:
        cos = torch.nn.functional.cosine_similarity(got_g[n].flatten(), ref_g[n].flatten(), dim=0)
        assert cos >= 0.9, (n, float(cos))


# -------------------------------------------------------------------- workspace buffers
def test_workspace_reuses_the_pre_activation_buffer_and_adapts_to_new_shapes():
    sae = make("topk", 16, 64, 4)
    own = StepWorkspace()
    a = fast_grads(sae, torch.randn(32, 16), workspace=own).pre_BF
    b = fast_grads(sae, torch.randn(32, 16), workspace=own).pre_BF
    assert a.data_ptr() == b.data_ptr()
    c = fast_grads(sae, torch.randn(7, 16), workspace=own).pre_BF
    assert c.shape == (7, 64)
    other = fast_grads(sae, torch.randn(32, 16), workspace=StepWorkspace()).pre_BF
    assert other.data_ptr() != a.data_ptr()
    assert own.nbytes() > 0


@pytest.mark.parametrize("method", ["autograd", "fast"])
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_a_training_step_leaves_no_state_on_the_sae(arch, method):
    """Buffers belong to the caller's workspace and the data-parallel group is an argument: the
    SAE module carries neither, so copies and saved state hold the weights and nothing else."""
    from saes.topk_select import BatchGroup

    sae = make(arch, 16, 64, 4)
    before = set(vars(sae))
    compute_grads(sae, torch.randn(32, 16), method=method, workspace=StepWorkspace(), group=BatchGroup())
    compute_grads(sae, torch.randn(32, 16), method=method)
    assert set(vars(sae)) == before
    expected = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if arch != "topk" else set())
    assert set(copy.deepcopy(sae).state_dict()) == expected


# ------------------------------------------------------------------------ selections
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,F,k,group", [(50, 512, 8, None), (7, 256, 16, 4), (3, 64, 64, None), (1, 4096, 32, None)])
def test_row_topk_equals_torch_topk(B, F, k, group, dtype):
    x = torch.randn(B, F, generator=torch.Generator().manual_seed(F + k)).to(dtype)
    vals, idx = row_topk(x, k, group)
    ref_vals, ref_idx = x.topk(k, dim=1)
    torch.testing.assert_close(vals.sort(dim=1).values, ref_vals.sort(dim=1).values, rtol=0, atol=0)
    torch.testing.assert_close(x.gather(1, idx), vals, rtol=0, atol=0)
    if dtype == torch.float32:  # no ties: the same columns
        assert torch.equal(idx.sort(dim=1).values, ref_idx.sort(dim=1).values)
    assert all(len(set(r.tolist())) == k for r in idx)  # distinct columns per row


def test_group_size_choices():
    assert group_size(8192, 32) == 16
    assert group_size(64, 60) == 0  # k close to the width: plain topk
    assert group_size(96, 2) in (4, 8)
    g = group_size(8192, 64)
    assert 8192 % g == 0 and 8192 // g >= 4 * 64


@pytest.mark.parametrize("seed", range(4))
def test_batch_top_entries_with_ties_dominating_rows_and_negatives(seed):
    g = torch.Generator().manual_seed(seed)
    B, Fdim, k = 40, 128, 5
    pre = torch.randint(-3, 6, (B, Fdim), generator=g).float()  # many ties at the cut
    pre[seed] += 20.0  # one row holds more than 2k of the winners
    vals, rows, cols = batch_top_entries(pre, k)
    flat_ref = pre.relu().flatten().topk(k * B).values
    assert vals.numel() == int((flat_ref > 0).sum())  # exactly the k*B best, positives only
    torch.testing.assert_close(vals.sort().values, flat_ref[flat_ref > 0].sort().values, rtol=0, atol=0)
    torch.testing.assert_close(pre[rows, cols], vals, rtol=0, atol=0)
    key = rows * Fdim + cols
    assert bool((key.diff() > 0).all())  # row-major, latents ascending within a row
    assert bool((rows == seed).sum() > 2 * k)


def test_batch_top_entries_in_bf16_and_degenerate_inputs():
    pre = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)).bfloat16()
    vals, rows, cols = batch_top_entries(pre, 8)
    assert vals.dtype == torch.bfloat16 and vals.numel() == 64 * 8
    ref = pre.float().flatten().topk(64 * 8).values
    torch.testing.assert_close(vals.float().sort().values, ref.sort().values, rtol=0, atol=0)
    empty = batch_top_entries(-pre.float().abs() - 1, 8)
    assert empty[0].numel() == 0
    one = batch_top_entries(pre[:1].float(), 300)  # k*B beyond the width: every positive entry
    assert one[0].numel() == int((pre[:1] > 0).sum())


def test_count_above_equals_the_naive_count_across_dtypes():
    pre = torch.randn(1000, 64, generator=torch.Generator().manual_seed(0))
    thr = torch.rand(64) * 0.5
    expected = (pre > thr).sum(0)
    assert torch.equal(count_above(pre, thr), expected)
    pre_bf = pre.bfloat16()
    assert torch.equal(count_above(pre_bf, thr), (pre_bf.float() > thr).sum(0))


def test_threshold_update_from_bf16_pre_activations_keeps_fp32_counts():
    """Counts above 256 are not representable in bf16; the update must not round them."""
    sae = make("batchtopk", 8, 16, 2)
    with torch.no_grad():
        sae.threshold.fill_(0.5)
    pre = torch.full((2000, 16), 1.0)
    pre[:1001, 0] = 0.0  # latent 0 fires on 999 rows above threshold
    acts = SparseActs.from_dense(torch.zeros(2000, 16).index_fill_(1, torch.tensor([0]), 2.0))  # selected 2000x
    ref = copy.deepcopy(sae)
    sae.update_inference_form_(pre.bfloat16(), acts, lr=0.1)
    ref.update_inference_form_(pre, acts, lr=0.1)
    assert sae.threshold.dtype == torch.float32
    torch.testing.assert_close(sae.threshold, ref.threshold, rtol=0, atol=0)


# --------------------------------------------------------------------- native kernels
@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,F,k", [(64, 8192 // 8, 32), (9, 1000, 7), (5, 50, 40), (3, 64, 64), (1, 4099, 16)])
def test_native_row_topk_equals_torch_topk(B, F, k, dtype):
    x = torch.randn(B, F, generator=torch.Generator().manual_seed(F)).to(dtype)
    vals, idx = native.row_topk(x, k)
    ref_vals, ref_idx = x.topk(k, dim=1)
    assert vals.dtype == torch.float32 and idx.dtype == torch.int64
    torch.testing.assert_close(vals.sort(dim=1).values, ref_vals.float().sort(dim=1).values, rtol=0, atol=0)
    torch.testing.assert_close(x.gather(1, idx).float(), vals, rtol=0, atol=0)
    assert all(len(set(r.tolist())) == k for r in idx)
    if dtype == torch.float32:
        assert torch.equal(idx.sort(dim=1).values, ref_idx.sort(dim=1).values)


@needs_native
@pytest.mark.parametrize("B,F,k", [(64, 1024, 32), (5, 50, 40), (3, 4099, 16)])
def test_native_row_topk_with_a_fused_bias_equals_add_then_topk(B, F, k):
    g = torch.Generator().manual_seed(B)
    x, bias = torch.randn(B, F, generator=g), torch.randn(F, generator=g)
    ref = x + bias
    vals, idx = native.row_topk(x, k, bias)
    assert torch.equal(x, ref)  # added in place, bitwise as torch's add
    torch.testing.assert_close(vals.sort(dim=1).values, ref.topk(k, dim=1).values.sort(dim=1).values, rtol=0, atol=0)
    assert torch.equal(idx.sort(dim=1).values, ref.topk(k, dim=1).indices.sort(dim=1).values)
    with pytest.raises(ValueError, match="bias has shape"):
        native.row_topk(x, k, bias[:-1])
    with pytest.raises(ValueError, match="float32"):
        native.row_topk(x.bfloat16(), k, bias)


@needs_native
def test_native_batch_top_entries_with_a_fused_bias_equals_add_then_select():
    g = torch.Generator().manual_seed(0)
    pre, bias = torch.randn(256, 1040, generator=g), torch.randn(1040, generator=g)
    thr = torch.rand(1040, generator=g)
    ref = pre + bias
    vals, rows, cols, counts = native.batch_top_entries(pre, 5, thr, bias_F=bias)
    assert torch.equal(pre, ref)
    assert torch.equal(counts, (ref > thr).sum(0))  # counted after the bias
    ref_vals, ref_rows, ref_cols, _ = native.batch_top_entries(ref.clone(), 5, thr)
    assert torch.equal(vals, ref_vals) and torch.equal(rows, ref_rows) and torch.equal(cols, ref_cols)


@needs_native
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_native_step_with_nan_input_adds_the_bias_before_the_torch_fallback(arch):
    sae = make(arch, 16, 256, 4)
    with torch.no_grad():
        sae.b_enc.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    x[3, 2] = float("nan")
    got = fast_grads(sae, x, kernels="native")
    ref = fast_grads(copy.deepcopy(sae), x)
    torch.testing.assert_close(got.pre_BF, ref.pre_BF, rtol=0, atol=0, equal_nan=True)


@needs_native
def test_native_row_topk_falls_back_on_nan_and_inf_rows():
    x = torch.randn(6, 512, generator=torch.Generator().manual_seed(0))
    x[1, 100] = float("nan")
    x[4, 7] = float("inf")
    vals, idx = native.row_topk(x, 5)
    ref_vals, ref_idx = x.topk(5, dim=1, sorted=False)
    torch.testing.assert_close(vals, ref_vals, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(idx, ref_idx)


@needs_native
@pytest.mark.parametrize("levels", [1, 3])
def test_native_decode_grad_equals_the_torch_ops(levels):
    g = torch.Generator().manual_seed(0)
    B, D, Fdim, L = 30, 24, 120, levels
    counts = torch.randint(0, 9, (B,), generator=g)  # ragged rows, some empty
    rows = torch.arange(B).repeat_interleave(counts)
    idx = torch.cat([torch.randperm(Fdim, generator=g)[: int(c)].sort().values for c in counts])
    vals = torch.randn(idx.numel(), generator=g).relu_()  # some exact zeros
    widths = torch.tensor([20, 70, Fdim][-L:]) if L > 1 else torch.tensor([Fdim])
    level = torch.bucketize(idx, widths, right=True)
    W_dec, b_dec, x = torch.randn(Fdim, D, generator=g), torch.randn(D, generator=g), torch.randn(B, D, generator=g)
    offsets = torch.zeros(B + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    recon, g_QD, sq, dvals = native.decode_grad(offsets, idx, level if L > 1 else None, vals, W_dec, b_dec, x, L, True)
    parts = torch.zeros(B, L, D).index_put_((rows, level), vals[:, None] * W_dec[idx], accumulate=True)
    ref_recon = parts.cumsum(1) + b_dec
    err = ref_recon - x[:, None]
    ref_g = (2.0 / B) * err.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(recon, ref_recon[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_QD.view(B, L, D), ref_g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sq, err.pow(2).sum(-1).double(), rtol=1e-5, atol=1e-5)
    ref_dvals = (W_dec[idx] * ref_g[rows, level]).sum(1) * (vals > 0)
    torch.testing.assert_close(dvals, ref_dvals, rtol=1e-5, atol=1e-6)


def test_native_kernels_refuse_other_dtypes_with_the_fallback_named():
    sae = make("topk", 16, 64, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="kernels='torch'"):
        fast_grads(sae, torch.randn(8, 16), kernels="native")
    with pytest.raises(ValueError, match="unknown kernels"):
        fast_grads(sae, torch.randn(8, 16), kernels="cuda")


@needs_native
@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
def test_native_step_counts_rows_above_thresholds_for_the_threshold_update(arch):
    sae = make(arch, 16, 256, 4)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    assert fast_grads(sae, x, kernels="native").above_threshold_F is None  # thresholds unset: not counted
    with torch.no_grad():
        sae.threshold.uniform_(0.05, 0.5, generator=torch.Generator().manual_seed(1))
    assert fast_grads(sae, x).above_threshold_F is None  # the pure-torch step leaves it to the update
    res = fast_grads(sae, x, kernels="native")
    assert torch.equal(res.above_threshold_F, (res.pre_BF > sae.threshold).sum(0))
    recounted = copy.deepcopy(sae)
    sae.update_inference_form_(res.pre_BF, res.acts, lr=0.1, above_threshold_F=res.above_threshold_F)
    recounted.update_inference_form_(res.pre_BF, res.acts, lr=0.1)
    assert torch.equal(sae.threshold, recounted.threshold)


def _batch_entries(impl, pre, k):
    if impl == "torch":
        return batch_top_entries(pre, k)
    vals, rows, cols, _ = native.batch_top_entries(pre, k)
    keep = take_top(vals, min(k * pre.shape[0], pre.numel()))
    return vals[keep], rows[keep], cols[keep]


@pytest.mark.parametrize("impl", ["torch", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize(
    "case", ["random_large", "ties", "dominant_row", "bf16", "negative", "k_beyond_groups", "odd_width"]
)
def test_batch_top_entries_equals_the_flat_reference(case, impl):
    """Shapes above 2**18 entries take the two-pass path of the torch version too."""
    g = torch.Generator().manual_seed(0)
    B, Fdim, k = 256, 1040, 5
    if case == "random_large":  # enough group maxima for the sampled floor
        B, Fdim, k = 512, 4096, 16
        pre = torch.randn(B, Fdim, generator=g)
    elif case == "ties":
        pre = torch.randint(-3, 6, (B, Fdim), generator=g).float()
    elif case == "dominant_row":
        pre = torch.randn(B, Fdim, generator=g)
        pre[3] += 10.0
    elif case == "bf16":
        B, Fdim = 512, 4096
        pre = torch.randn(B, Fdim, generator=g).bfloat16()
    elif case == "negative":
        pre = -torch.rand(B, Fdim, generator=g) - 0.1
        pre[5, 17] = 0.5
    elif case == "k_beyond_groups":
        k = 80  # k*B > B*F/16 groups
        pre = torch.randn(B, Fdim, generator=g)
    else:
        Fdim = 1030  # a partial last group (native) / groups of 2 (torch)
        pre = torch.randn(B, Fdim, generator=g)
    vals, rows, cols = _batch_entries(impl, pre, k)
    ref = saes.batchtopk.batch_topk_select_reference(pre.float(), k).to_dense()
    got = torch.zeros(B, Fdim).index_put_((rows, cols), vals.float())
    if case in ("ties", "bf16"):  # tied values may be picked from other slots: compare the multiset
        torch.testing.assert_close(got.flatten().sort().values, ref.flatten().sort().values, rtol=0, atol=0)
    else:
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert bool(((rows * Fdim + cols).diff() > 0).all())  # row-major, latents ascending


@needs_native
def test_native_batch_top_entries_declines_nan():
    pre = torch.randn(16, 64)
    pre[2, 3] = float("nan")
    assert native.batch_top_entries(pre, 4) is None


def test_native_kernels_without_a_compiler_fail_with_the_fallback_named(monkeypatch):
    monkeypatch.setattr(native, "_LIB", None)
    monkeypatch.setattr(native, "compiler", lambda: None)
    assert not native.available()
    with pytest.raises(RuntimeError, match="kernels='torch'"):
        native.load()
