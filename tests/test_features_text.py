"""With a model: which latents fire on a text (scoped hook), and logit effects through W_U."""

import pytest
import torch

from features import FeatureStore, LabelProvenance, TensorSource, build_feature_store
from features.analysis import final_norm_transform, logit_effects
from features.text import features_on_text, hook_activations
from helpers.feature_fixtures import make_sae, small_config
from helpers.tiny_model import make_documents

pytestmark = [pytest.mark.usefixtures("one_thread")]

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def sae():
    return make_sae("topk", d_in=32, d_sae=48, seed=0, k=6, metadata={"hook_name": HOOK})


def test_features_on_text_match_a_manual_run_and_leave_no_hooks(model, sae):
    text = "the sailor sees a whale ."
    res = features_on_text(model, sae, text, top_n=3)
    toks = model.to_tokens(text)
    _, cache = model.run_with_cache(toks, names_filter=HOOK)
    with torch.no_grad():
        want_SF = sae.encode(cache[HOOK][0])
    assert torch.allclose(res.acts_SF, want_SF)
    # the tokens' pieces are the decoded text, cut where the tokens are
    assert "".join(t.token for t in res.tokens) == model.tokenizer.decode(toks[0])
    assert [t.token.strip() for t in res.tokens] == model.to_str_tokens(toks[0])
    for s, t in enumerate(res.tokens):
        v, i = want_SF[s].topk(3)
        assert [l.latent for l in t.latents] == [int(j) for j, x in zip(i, v) if x > 0]
        assert [l.act for l in t.latents] == pytest.approx([float(x) for x in v if x > 0])
    assert res.latents and res.latents[0].max_act == pytest.approx(float(want_SF.max()))
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())  # the scoped hook is gone
    with pytest.raises(ValueError, match=r"unknown hook point 'blocks.0.hook_resid_pots'\. Did you mean blocks.0.hook_resid_post"):
        hook_activations(model, "blocks.0.hook_resid_pots", toks)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_a_text_longer_than_the_context_is_refused_not_cut(model, sae):
    """TransformerLens's to_tokens cuts a text to n_ctx by default: the tail's latents would be
    missing without a word. The refusal names the text's length and the context."""
    n_ctx = model.cfg.n_ctx
    fits = " ".join(["sea"] * (n_ctx - 1))  # + BOS: exactly the context
    assert len(features_on_text(model, sae, fits).tokens) == n_ctx
    n = int(model.to_tokens(fits + " sea", truncate=False).shape[1])
    with pytest.raises(ValueError, match=rf"the text is {n} tokens long, more than the model's context of {n_ctx} "
                                         rf"tokens; shorten it"):
        features_on_text(model, sae, fits + " sea")


def test_logit_effects_are_the_centred_scaled_direction_through_W_U(model, sae):
    eff = logit_effects(sae.W_dec, model, n=5)
    d = sae.W_dec.detach()
    want = ((d - d.mean(1, keepdim=True)) * model.ln_final.w.detach()) @ model.W_U.detach()
    v, i = want.topk(5, dim=1)
    assert torch.equal(eff.top_ids_Fn, i) and torch.allclose(eff.top_vals_Fn, v, atol=1e-5)
    v, i = want.topk(5, dim=1, largest=False)
    assert torch.equal(eff.bottom_ids_Fn, i)
    assert "centred" in eff.method and "ln_final.w" in eff.method and "1/sigma" in eff.method
    _, method = final_norm_transform(type("M", (), {"cfg": type("C", (), {"normalization_type": "LNPre"})()})())
    assert "folded" in method


def test_store_with_model_has_logits_labels_and_text_lookup(model, sae, tmp_path):
    texts = make_documents(24, seed=1, min_words=20, max_words=40)
    ids = model.to_tokens(texts)[:, :16]
    _, cache = model.run_with_cache(ids, names_filter=HOOK)
    src = TensorSource(cache[HOOK].reshape(-1, 32), ids, hook_name=HOOK, bos_id=model.tokenizer.bos_token_id)
    path = tmp_path / "m.db"
    build_feature_store(path, sae, src, small_config(n_logits=4), model=model, progress=False)
    with FeatureStore.open(path, readonly=False) as st:
        assert "direct path" in st.meta["logit_method"]
        rec = st.feature(int(st.list_features(sort="freq", limit=1)[0].latent))
        assert len(rec.logits.promoted) == 4 and rec.logits.promoted[0].value >= rec.logits.promoted[-1].value
        assert rec.logits.promoted[0].token == model.tokenizer.decode([rec.logits.promoted[0].token_id])
        assert rec.top_examples[0].text and rec.top_examples[0].tokens[0] != ""
        st.write_label(rec.latent, "the strongest latent", provenance=LabelProvenance("m", "human", "v0"))
        res = features_on_text(model, sae, texts[0][:40], store=st, top_n=2)
        labelled = [l for t in res.tokens for l in t.latents if l.latent == rec.latent]
        assert all(l.label == "the strongest latent" for l in labelled)
        other = make_sae("topk", d_in=32, d_sae=48, seed=9, k=6, metadata={"hook_name": HOOK})
        with pytest.raises(ValueError, match="another SAE"):
            features_on_text(model, other, "a b", store=st)
