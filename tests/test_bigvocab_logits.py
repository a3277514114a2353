"""Vocabulary-sized work done a slice at a time: the CE/KL of a spliced SAE (logits contexts x
positions x vocab) and the logit effects of the latents (latents x vocab through W_U) give what the
eager formulas give, without making the whole float32 tensor (Gemma's 262k vocabulary: 2 GB per
16 x 128 logits; 2.4 GB for a float32 copy of its bf16 unembedding)."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers.eager_ce import eager_ce_kl_sums

CHILD = Path(__file__).parent / "helpers" / "bigvocab_child.py"


@pytest.mark.parametrize("chunk", [1, 7 * 50, 1 << 22])  # one position, chunks across a row's end, all at once
def test_ce_and_kl_a_chunk_of_positions_at_a_time_are_the_eager_ones(monkeypatch, chunk):
    import training.evaluate as ev

    monkeypatch.setattr(ev, "_CE_CHUNK_ELEMS", chunk)
    g = torch.Generator().manual_seed(0)
    logits, ref = torch.randn(3, 9, 50, generator=g).to(torch.bfloat16), 3 * torch.randn(3, 9, 50, generator=g)
    tokens = torch.randint(0, 50, (3, 9), generator=g)
    ce, kl = ev._next_token_ce_kl(logits, tokens, ref)
    want_ce, want_kl = eager_ce_kl_sums(logits, tokens, ref)
    assert ce.item() == pytest.approx(want_ce.item(), rel=1e-5)
    assert kl.item() == pytest.approx(want_kl.item(), rel=1e-5) and kl.item() > 0
    ce_only, none = ev._next_token_ce_kl(logits, tokens, None)
    assert none is None and ce_only.item() == pytest.approx(want_ce.item(), rel=1e-5)


def _eager_logit_effects(W_dec, model, n):
    d = W_dec.float()
    eff = ((d - d.mean(1, keepdim=True)) * model.ln_final.weight.float()) @ model.W_U.float()
    top, bottom = eff.topk(n, dim=1), eff.topk(n, dim=1, largest=False)
    return top.indices, top.values, bottom.indices, bottom.values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [1 << 24, 200])  # the whole vocabulary at once; slices of 200 // 16 = 12 entries
def test_logit_effects_a_slice_of_the_vocabulary_at_a_time_are_the_eager_ones(monkeypatch, dtype, block):
    import features.analysis as an

    monkeypatch.setattr(an, "_BLOCK_ELEMS", block)
    g = torch.Generator().manual_seed(1)
    ln = torch.nn.LayerNorm(16)
    ln.weight.data, ln.bias.data = 1 + torch.rand(16, generator=g), torch.randn(16, generator=g)
    ln.w = ln.weight  # TransformerLens's name for the gain
    model = SimpleNamespace(W_U=torch.randn(16, 301, generator=g).to(dtype),
                            cfg=SimpleNamespace(normalization_type="LN"), ln_final=ln)
    W_dec = torch.randn(37, 16, generator=g)
    got = an.logit_effects(W_dec, model, 5)
    want = _eager_logit_effects(W_dec, model, 5)
    for name, a, b in zip(("top ids", "top values", "bottom ids", "bottom values"), got[:4], want):
        assert torch.equal(a, b) if a.dtype == torch.int64 else torch.allclose(a, b, rtol=1e-5, atol=1e-5), name
    assert "ln_final.w" in got.method


def test_logit_effects_through_a_bf16_layernorm():
    """The norm's gain is read by running it: a bf16 LayerNorm is run on a bf16 probe (float32 input
    is refused), and its stored weight, the gain, is used as it is."""
    import features.analysis as an

    g = torch.Generator().manual_seed(3)
    ln = torch.nn.LayerNorm(16).to(torch.bfloat16)
    ln.weight.data = (1 + torch.rand(16, generator=g)).to(torch.bfloat16)
    ln.w = ln.weight
    model = SimpleNamespace(W_U=torch.randn(16, 50, generator=g).to(torch.bfloat16),
                            cfg=SimpleNamespace(normalization_type="LN"), ln_final=ln)
    W_dec = torch.randn(7, 16, generator=g)
    got, want = an.logit_effects(W_dec, model, 4), _eager_logit_effects(W_dec, model, 4)
    assert torch.equal(got.top_ids_Fn, want[0]) and torch.allclose(got.top_vals_Fn, want[1], rtol=1e-5, atol=1e-5)


def _peak_growth_kib(what: str) -> int:
    out = subprocess.run([sys.executable, str(CHILD), what], capture_output=True, text=True, check=True).stdout
    before, after = map(int, out.split())
    return after - before


def test_ce_and_kl_of_a_large_vocabulary_make_no_whole_log_softmax():
    # the logits are 32 MB each; the eager formula made four more of that size (log-softmaxes, exp, product),
    # slices of 1 MB make a few MB
    assert _peak_growth_kib("ce_kl") < 16 * 1024


def test_splice_metrics_hold_a_few_contexts_logits_not_the_batchs():
    # 8 contexts x 64 positions x 65,536: 134 MB of logits per pass for the clean and the spliced run each
    # (268 MB held together, +263 MB measured); one context a pass (the budget set in the child): 16 MB of each
    assert _peak_growth_kib("splice") < 96 * 1024


def test_logit_effects_of_a_bf16_unembedding_make_no_float32_copy_of_it():
    # W_U is 64 MB in bf16, 128 MB as one float32 copy; a slice of it and a block product are 4 MB each
    assert _peak_growth_kib("unembed") < 32 * 1024


# slow (a whole checkpoint built and loaded twice): tests/test_rvvocab_norms.py runs Gemma's own RMSNorm module
# (float32 and bf16) against the same eager formula by default
@pytest.mark.slow
def test_logit_effects_of_a_gemma_model_scale_by_its_norms_1_plus_w(tmp_path):
    """Gemma's RMSNorm stores an offset w and multiplies by 1 + w; the Bridge's ln_final.w is that
    offset (zeros in a fresh checkpoint: every effect was 0 and the 'top tokens' ids 0..n)."""
    from transformers import AutoModelForCausalLM

    from features.analysis import logit_effects
    from helpers.real_models import build_family_tokenizer, corpus_documents, save_arch_model
    from saesteer.models import load_model

    tok = build_family_tokenizer("gemma", corpus_documents()[:4], vocab_size=300)
    path = save_arch_model(tmp_path / "gemma3", "gemma3", tok, trained_norms=True)
    model = load_model(str(path))
    hf = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    gain = 1 + hf.model.norm.weight.detach().float()
    assert not torch.allclose(gain, model.ln_final.w.detach().float())  # the stored weight is not the gain
    W_dec = torch.randn(12, 64, generator=torch.Generator().manual_seed(2))
    got = logit_effects(W_dec, model, 5)
    want = (W_dec * gain) @ hf.lm_head.weight.detach().float().T
    v, i = want.topk(5, dim=1)
    assert torch.equal(got.top_ids_Fn, i) and torch.allclose(got.top_vals_Fn, v, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.bottom_ids_Fn, want.topk(5, dim=1, largest=False).indices)
    assert "1 + w" in got.method
