"""Latent-edit arithmetic: the fast paths against the eager reference, exact no-op edits."""

import pytest
import torch

import saes
from steering.interventions import LatentEditor, current_activations, op_coefficients, reference_edit

ARCHS = ["jumprelu", "batchtopk", "matryoshka_batchtopk", "topk", "standard"]


def make(arch, d_in=16, d_sae=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    kw = {"k": 6} if arch in ("topk", "batchtopk", "matryoshka_batchtopk") else {}
    if arch == "matryoshka_batchtopk":
        kw["matryoshka_widths"] = [16, d_sae]
    sae = saes.create_sae(arch, d_in, d_sae, generator=g, **kw)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2, generator=g)
        sae.b_dec.normal_(0, 0.1, generator=g)
        if hasattr(sae, "threshold"):
            sae.threshold.uniform_(-0.1, 0.3, generator=g)  # some negative: must still need pre > 0
    return sae


def inputs(n=40, d=16, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_encoding_rules_pick_the_read_path():
    assert make("jumprelu").encoding_rule == "threshold"
    assert make("batchtopk").encoding_rule == "threshold"
    assert make("matryoshka_batchtopk").encoding_rule == "threshold"
    assert make("topk").encoding_rule == "topk"
    assert make("standard").encoding_rule == "relu"  # its own pre-activation decides: no full encode


@pytest.mark.parametrize("arch", ARCHS)
def test_current_activations_equal_the_full_encode(arch):
    sae, x = make(arch), inputs()
    dense = sae.encode(x)
    ids = [0, 5, 17, 63]
    got = current_activations(sae, x, ids)
    torch.testing.assert_close(got, dense[:, ids], rtol=1e-5, atol=1e-6)
    # firing pattern is identical, not just close
    assert torch.equal(got != 0, dense[:, ids] != 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_edit_matches_reference(arch):
    sae, x = make(arch), inputs()
    dense = sae.encode(x)
    active = (dense != 0).sum(0).argsort(descending=True)[:3].tolist()  # latents that do fire
    ops = [(active[0], "clamp", 2.5), (active[1], "scale", 3.0), (active[2], "ablate", 0.0), (9, "add", -1.5)]
    coefs = [op_coefficients(op, v) for _, op, v in ops]
    editor = LatentEditor(sae, [f for f, _, _ in ops], [c[0] for c in coefs], [c[1] for c in coefs])
    fast = editor.apply(x)
    ref = reference_edit(sae, x, ops)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(editor.delta(x) + x, fast, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_no_op_edits_are_bit_identical(arch):
    sae, x = make(arch), inputs()
    ids = [1, 2, 3]
    for op, value in [("add", 0.0), ("scale", 1.0)]:
        c1, c0 = op_coefficients(op, value)
        out = LatentEditor(sae, ids, [c1] * 3, [c0] * 3).apply(x)
        assert torch.equal(out, x), op
    # clamp to the current value, row by row (a clamp value is one number per edit); the current
    # value is read by the same path on the same rows (a [1, D] matmul may round differently
    # from a [40, D] one, so values read from another batch are equal only within float tolerance)
    for r in range(5):
        row = x[r : r + 1]
        current = current_activations(sae, row, ids).detach()
        c1c0 = [op_coefficients("clamp", float(v)) for v in current[0]]
        out = LatentEditor(sae, ids, [c[0] for c in c1c0], [c[1] for c in c1c0]).apply(row)
        assert torch.equal(out, row)


def test_ablate_a_non_firing_latent_changes_nothing():
    sae, x = make("jumprelu"), inputs()
    dense = sae.encode(x)
    dead = int((dense != 0).sum(0).argmin())
    rows = dense[:, dead] == 0
    out = LatentEditor(sae, [dead], [-1.0], [0.0]).apply(x[rows])
    assert torch.equal(out, x[rows])


def test_mixed_dtypes_cast_back_to_the_activation_dtype():
    sae, x = make("jumprelu"), inputs()
    x16 = x.to(torch.bfloat16)
    out = LatentEditor(sae, [3], [-1.0], [4.0]).apply(x16)
    assert out.dtype == torch.bfloat16
    ref = reference_edit(sae, x16.float(), [(3, "clamp", 4.0)])
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_conditional_edit_applies_only_where_the_trigger_fires():
    for arch in ARCHS:
        sae, x = make(arch), inputs(60)
        dense = sae.encode(x)
        trig = int((dense != 0).float().mean(0).sub(0.5).abs().argmin())  # fires on about half the rows
        fires = dense[:, trig] > 0.05
        assert 0 < int(fires.sum()) < x.shape[0], arch
        editor = LatentEditor(sae, [5, 9], [-1.0, 0.0], [3.0, 1.0], triggers=[(trig, 0.05), None])
        out = editor.apply(x)
        ref_on = reference_edit(sae, x, [(5, "clamp", 3.0), (9, "add", 1.0)])
        ref_off = reference_edit(sae, x, [(9, "add", 1.0)])
        want = torch.where(fires.unsqueeze(1), ref_on, ref_off)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(editor.fired(x)[:, 0], fires) and bool(editor.fired(x)[:, 1].all())


@pytest.mark.parametrize("arch", ["jumprelu", "matryoshka_batchtopk", "standard"])
def test_threshold_ties_are_decided_as_the_row_alone_decides(arch):
    """Thresholds set to a row's own pre-activation (as a quantile sets them): whether the latent
    fires must not depend on which other latents (or rows) are read alongside."""
    sae, x = make(arch, d_in=32, d_sae=96), inputs(40, d=32)
    with torch.no_grad():
        pre = sae.pre_activations(x)
        if hasattr(sae, "threshold"):
            for f in range(12):
                sae.threshold[f] = pre[f, f]
        else:  # ReLU: ties at 0
            sae.b_enc[:12] -= pre[torch.arange(12), torch.arange(12)]
    alone = torch.cat([sae.encode(x[r : r + 1]) for r in range(x.shape[0])])
    for ids in ([3], [3, 40], list(range(12)), [7, 1, 90, 11]):
        got = current_activations(sae, x, ids)
        assert torch.equal(got != 0, alone[:, ids] != 0), ids
        for r in (0, 3, 7):  # one row at a time, as the batched engine may see it
            assert torch.equal(current_activations(sae, x[r : r + 1], ids) != 0, alone[r : r + 1, ids] != 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_an_added_latent_is_not_read_and_mixed_edits_still_equal_the_reference(arch):
    """An add changes its latent by a constant, so its activation is not read: a conditional add
    reads its trigger only, and an add listed before a clamp leaves the clamp's column in place."""
    sae, x = make(arch), inputs(60)
    dense = sae.encode(x)
    trig = int((dense != 0).float().mean(0).sub(0.5).abs().argmin())  # fires on about half the rows
    fires = dense[:, trig] > 0.05
    only_add = LatentEditor(sae, [9], [0.0], [2.0], triggers=[(trig, 0.05)])
    assert only_add.read_ids_R.tolist() == [trig]
    want = torch.where(fires.unsqueeze(1), reference_edit(sae, x, [(9, "add", 2.0)]), x)
    torch.testing.assert_close(only_add.apply(x), want, rtol=1e-5, atol=1e-5)
    counts = (dense != 0).sum(0)
    counts[[trig, 9]] = -1
    busy, other = counts.topk(2).indices.tolist()  # two firing latents besides the trigger
    mixed = LatentEditor(sae, [9, busy, other], [0.0, -1.0, 1.0], [1.5, 3.0, 0.0], triggers=[None, (trig, 0.05), None])
    assert mixed.read_ids_R.tolist() == [busy, other, trig]
    on = reference_edit(sae, x, [(9, "add", 1.5), (busy, "clamp", 3.0), (other, "scale", 2.0)])
    off = reference_edit(sae, x, [(9, "add", 1.5), (other, "scale", 2.0)])
    torch.testing.assert_close(mixed.apply(x), torch.where(fires.unsqueeze(1), on, off), rtol=1e-5, atol=1e-5)
    assert bool((dense[:, busy] != 0).any()) and bool((dense[:, other] != 0).any())


@pytest.mark.parametrize("arch", ["jumprelu", "standard"])
def test_a_nan_row_does_not_switch_off_the_near_threshold_check_of_the_other_rows(arch):
    """Padding or a broken input can hand the hook a NaN row: the other rows' ties at the
    threshold must still be decided as the SAE decides them, and the NaN row read as the SAE
    reads it (ReLU: NaN; a threshold: off)."""
    sae, x = make(arch, d_in=32, d_sae=96), inputs(40, d=32)
    with torch.no_grad():
        pre = sae.pre_activations(x)
        for f in range(12):
            if hasattr(sae, "threshold"):
                sae.threshold[f] = pre[f, f]
            else:
                sae.b_enc[f] -= pre[f, f]
    ids = list(range(12))
    alone = torch.cat([sae.encode(x[r : r + 1]) for r in range(x.shape[0])])[:, ids]
    x_nan = torch.cat([x, torch.full((1, 32), float("nan"))])
    got = current_activations(sae, x_nan, ids)
    assert torch.equal(got[:40] != 0, alone != 0)
    own = sae.encode(x_nan[40:])[0, ids]
    assert torch.equal(got[40].isnan(), own.isnan()) and torch.equal(got[40].nan_to_num(7.0), own.nan_to_num(7.0))
    one = current_activations(sae, x_nan[40:], [5])  # one latent: one threshold for all, a scalar op decides
    assert torch.equal(one.isnan(), own[5:6].isnan().unsqueeze(0)) and torch.equal(one.nan_to_num(7.0), own[5:6].nan_to_num(7.0).unsqueeze(0))
