"""A fourteenth round of user paths: a researcher in a notebook who already has SAELens (6.x) and
TransformerLens (3.x) objects in memory and calls saesteer's Python API with them: SAELens's own
`HookedSAETransformer` and SAEs built with SAELens's classes, compared with SAELens doing the same
thing its own way.

- `steering.steer(model, sl_sae, ...)` with a `sae_lens.SAE` object (from `SAE.from_pretrained` or
  trained in SAELens) was refused ("saes must be an SAE ..."): it is converted at the API boundary
  (`saes.interop.as_sae`), alone, in a dict or a list, and the steered logits equal SAELens's own
  steering (the SAE spliced with its error term, the latent clamped at `hook_sae_acts_post`);
- a model with a SAELens SAE already spliced at the hook (`model.add_sae(sae, use_error_term=True)`)
  was refused as "unknown hook point" naming the hook the user's SAE records: the edit now lands on
  the splice's output (what flows on), with the same logits as without the splice; spliced without its
  error term (the model runs on the reconstruction) it is refused in words that say what to do;
- a splice made inside a `steer` block (`model.run_with_saes(...)`, `add_sae`, `reset_saes`) replaced
  the hook point steering had hooked, and steering stopped without a word, also for every forward after
  the splice was gone (a silent wrong result): a forward in which a block's steering hook did not run
  now raises, naming the hook;
- SAELens's `SAETransformerBridge` (boot_transformers): its hook_dict lists module paths only, so an
  SAE recording `blocks.0.hook_resid_post` was refused as an unknown hook; it steers there now (SAELens's
  own resolver), with SAELens's own steering's logits, spliced or not; after its `reset_saes` a hook
  point never runs again (SAELens's hooks neither), and steering there is refused instead of doing nothing;
- a HookedTransformer the user loaded (`from_pretrained`: folded norms, centred writing weights) was
  never checked against the SAE's recorded `model_from_pretrained_kwargs` (only models saesteer's
  `load_model` loaded were): its weights now show the processing, and a mismatch is refused naming both
  and the TransformerLens call that loads the right one;
- `build_feature_store`, `contrast_features`, `compare_methods` and `sweep` take the SAELens object too
  (the store's fire counts and maxima are SAELens's own `encode`; compare_methods read `sae.d_sae`);
  `evaluate_saes` took only LoadedSAEs: an SAE in memory (ours or SAELens's) now too, with SAELens's
  encode/decode and `run_with_saes` loss;
- on a `default_prepend_bos=False` model with an SAE recording `prepend_bos=True`, `compare` and `sweep`
  fed the SAE its BOS but `with steer(...) as s: s.generate(...)` did not: now it does;
- a bf16 model with the SAE left in fp32 steers within the model's own rounding of SAELens's steering.
"""

from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("sae_lens")

from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig  # noqa: E402
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig  # noqa: E402
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig  # noqa: E402

from steering import FeatureEdit, SteeringError, steer  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread")]

HOOK = "blocks.0.hook_resid_post"
D_MODEL, D_SAE = 32, 64
TEXT = "the whale carries bread to the harbor, and the sailor sees the ship"
TOL = {"rtol": 1e-4, "atol": 1e-4}


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from helpers.tiny_model import make_tokenizer

    return make_tokenizer()


def hooked_sae_transformer(seed: int = 0):
    """SAELens's HookedSAETransformer, random, over the tiny word tokenizer (a fresh one: splices mutate it)."""
    import warnings

    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    tok = _tokenizer()
    cfg = HookedTransformerConfig(n_layers=2, d_model=D_MODEL, n_ctx=64, d_head=8, n_heads=4, d_mlp=4 * D_MODEL,
                                  d_vocab=len(tok), act_fn="gelu_new", normalization_type="LN", device="cpu")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        return HookedSAETransformer(cfg, tokenizer=tok).eval()


def sae_lens_sae(arch: str = "standard", seed: int = 0, hook: str = HOOK):
    """An SAE made with SAELens's own classes, random weights with working biases and thresholds."""
    if arch == "standard":
        sl = StandardSAE(StandardSAEConfig(d_in=D_MODEL, d_sae=D_SAE))
    elif arch == "topk":
        sl = TopKSAE(TopKSAEConfig(d_in=D_MODEL, d_sae=D_SAE, k=8))
    else:
        sl = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_MODEL, d_sae=D_SAE))
    sl.cfg.metadata.hook_name = hook
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sl.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if name.startswith("b_") else 0.3))
        if hasattr(sl, "threshold"):
            sl.threshold.copy_(torch.rand(D_SAE, generator=g) * 0.2)
    return sl.eval()


def saelens_clamped_logits(model, sl, tokens, latent: int, value: float):
    """SAELens's own steering, as its tutorials do it: the SAE spliced with its error term, the latent
    set at `hook_sae_acts_post`."""
    def clamp(acts, hook):  # noqa: ARG001 - TransformerLens's hook signature
        acts[..., latent] = value
        return acts

    model.add_sae(sl, use_error_term=True)
    try:
        with torch.no_grad(), model.hooks(fwd_hooks=[(f"{sl.cfg.metadata.hook_name}.hook_sae_acts_post", clamp)]):
            return model(tokens)
    finally:
        model.reset_saes()


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_steer_takes_a_sae_lens_sae_and_matches_saelens_own_steering(arch):
    model, sl = hooked_sae_transformer(), sae_lens_sae(arch)
    tokens = model.to_tokens(TEXT)
    latent = 5
    want = saelens_clamped_logits(model, sl, tokens, latent, 4.0)
    with torch.no_grad():
        clean = model(tokens)
        for given in (sl, {"res": sl}, [sl]):
            with steer(model, given, [FeatureEdit(latent, "clamp", 4.0, sae=None if not isinstance(given, dict) else "res")]):
                got = model(tokens)
            torch.testing.assert_close(got, want, **TOL)
    assert (want - clean).abs().max() > 1e-2  # the clamp changes the output: the comparison means something


def test_steer_on_a_model_with_the_sae_spliced_with_its_error_term():
    model, sl = hooked_sae_transformer(), sae_lens_sae()
    tokens = model.to_tokens(TEXT)
    with torch.no_grad(), steer(model, sl, "7:clamp=3"):
        want = model(tokens)  # no splice
    model.add_sae(sl, use_error_term=True)
    with torch.no_grad():
        spliced_clean = model(tokens)
        with steer(model, sl, "7:clamp=3") as s:
            got = model(tokens)
            assert [r.hook_name for r in s.edits] == [f"{HOOK}.hook_sae_output"]
        after = model(tokens)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(after, spliced_clean)  # the splice is as the user left it
    assert (got - spliced_clean).abs().max() > 1e-2


def test_a_steering_vector_on_a_model_with_the_sae_spliced_lands_on_what_flows_on():
    from steering import VectorEdit

    model, sl = hooked_sae_transformer(), sae_lens_sae()
    tokens = model.to_tokens(TEXT)
    vector = VectorEdit(HOOK, torch.linspace(-1, 1, D_MODEL), 2.0, positions="prompt")
    with torch.no_grad(), steer(model, None, vector):
        want = model(tokens)
    model.add_sae(sl, use_error_term=True)
    with torch.no_grad(), steer(model, None, vector):
        torch.testing.assert_close(model(tokens), want, **TOL)


def test_steer_on_a_model_running_on_the_reconstruction_is_refused_saying_what_to_do():
    model, sl = hooked_sae_transformer(), sae_lens_sae()
    model.add_sae(sl, use_error_term=False)
    with pytest.raises(SteeringError, match=r"without its error term.*use_error_term=True.*reset_saes"):
        with steer(model, sl, "7:clamp=3"):
            pass


@pytest.mark.parametrize("splice", ["run_with_saes", "add_sae", "saes"])
def test_a_splice_made_inside_the_steer_block_is_refused_not_silently_unsteered(splice):
    model, sl = hooked_sae_transformer(), sae_lens_sae()
    tokens = model.to_tokens(TEXT)
    with torch.no_grad(), steer(model, sl, "7:clamp=3"):
        model(tokens)
        with pytest.raises(SteeringError, match=rf"steering's hook at {HOOK} did not run in this forward pass"):
            if splice == "run_with_saes":  # it splices, runs, and puts a new hook point back
                model.run_with_saes(tokens, saes=[sl], use_error_term=True)
                model(tokens)
            elif splice == "add_sae":
                model.add_sae(sl, use_error_term=True)
                model(tokens)
            else:
                with model.saes(saes=[sl]):
                    model(tokens)


def test_a_transcoder_steers_on_a_model_with_sae_lens_saes_spliced_at_its_hooks():
    """A SAELens SAE spliced (with its error term) at a transcoder's target hook: the target was refused as
    an "unknown hook point" (the splice puts a wrapper there; only SAE and vector edits were sent to its
    output). Spliced at its target or its input, the steered logits are those without the splice."""
    import saes

    hook_in, hook_out = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
    tc = saes.create_sae("jumprelu", D_MODEL, D_SAE, generator=torch.Generator().manual_seed(0), d_out=D_MODEL,
                         apply_b_dec_to_input=False, metadata={"hook_name": hook_in, "hook_name_out": hook_out})
    with torch.no_grad():
        tc.b_enc.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))  # latents that fire
    model = hooked_sae_transformer()
    tokens = model.to_tokens(TEXT)
    with torch.no_grad():
        clean = model(tokens)
        with steer(model, tc, "5:clamp=4"):
            want = model(tokens)
    assert (want - clean).abs().max() > 1e-3
    for where in (hook_out, hook_in):
        model.add_sae(sae_lens_sae(hook=where), use_error_term=True)
        with torch.no_grad(), steer(model, tc, "5:clamp=4"):
            torch.testing.assert_close(model(tokens), want, **TOL)
        model.reset_saes()


def test_reset_hooks_inside_the_steer_block_is_refused_naming_it():
    """TransformerLens tutorials call `model.reset_hooks()` before a run: inside a `steer` block it removes
    steering's hooks; the forward raises (as for a splice) and the message names reset_hooks, not only
    SAELens's splices, which this user never made."""
    model = hooked_sae_transformer()
    with torch.no_grad(), steer(model, sae_lens_sae(), "7:clamp=3"):
        model.reset_hooks()
        with pytest.raises(SteeringError, match=r"did not run.*or the hook was removed \(model.reset_hooks\(\)\)"):
            model(model.to_tokens(TEXT))


@pytest.mark.parametrize("hook_in, hook_out", [("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"),
                                               ("blocks.0.hook_resid_mid", "blocks.1.hook_resid_post")])
def test_a_splice_at_a_transcoders_input_inside_the_steer_block_is_refused_not_read_stale(hook_in, hook_out):
    """A transcoder's edit reads its latents from the input hook's activation kept in this forward pass:
    a SAELens SAE spliced at that hook inside the `steer` block replaced the hook point, the kept
    activation stayed the previous forward's (same shape: each generation step), and the edit read the
    latents of other tokens without a word (the target hook still ran, so nothing was checked)."""
    import saes

    model = hooked_sae_transformer()
    tc = saes.create_sae("jumprelu", D_MODEL, D_SAE, generator=torch.Generator().manual_seed(0), d_out=D_MODEL,
                         apply_b_dec_to_input=False, metadata={"hook_name": hook_in, "hook_name_out": hook_out})
    first, second = model.to_tokens(["the whale carries bread", "a sailor sees the ship"])
    with torch.no_grad(), steer(model, tc, "5:clamp=4"):
        model(first[None])
        model.add_sae(sae_lens_sae(hook=hook_in), use_error_term=True)
        with pytest.raises(SteeringError, match=rf"steering's hook at {hook_in} did not run in this forward pass"):
            model(second[None])


def test_feature_store_text_and_contrast_take_a_sae_lens_sae_and_read_saelens_encoding(tmp_path):
    """build_feature_store, features_on_text and contrast_features with the SAELens object: the store's
    per-latent maxima and fire counts are SAELens's own `encode` of the same activations."""
    import sqlite3

    from features import BuildConfig, build_feature_store
    from features.source import TensorSource
    from features.text import features_on_text
    from steering.search import contrast_features

    model, sl = hooked_sae_transformer(), sae_lens_sae("jumprelu")
    tokens = model.to_tokens([TEXT, "a tree and bread , the sea sees the shore"])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
        acts = cache[HOOK].reshape(-1, D_MODEL)
        want = sl.encode(acts)
    build_feature_store(tmp_path / "s.db", sl, TensorSource(acts, tokens, hook_name=HOOK), BuildConfig(),
                        model=model, progress=False)
    with sqlite3.connect(tmp_path / "s.db") as con:
        rows = con.execute("SELECT latent, n_fires, max_act FROM features ORDER BY latent").fetchall()
    assert [n for _, n, _ in rows] == (want > 0).sum(0).tolist()
    torch.testing.assert_close(torch.tensor([m for _, _, m in rows]), want.max(0).values.clamp(min=0), **TOL)

    on_text = features_on_text(model, sl, TEXT, top_n=3)
    torch.testing.assert_close(on_text.acts_SF, want[: tokens.shape[1]][: on_text.acts_SF.shape[0]], **TOL)

    found = contrast_features(model, sl, [TEXT], ["a tree"], top=3)
    assert len(found) == 3 and all(0 <= c.latent < D_SAE for c in found)


# ---------------------------------------------------------------------------------------------
# SAELens's SAETransformerBridge (TransformerLens 3's bridge, booted with boot_transformers)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from helpers.tiny_hf import save_tiny_gpt2

    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def sae_transformer_bridge(path):
    import warnings

    from sae_lens import SAETransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SAETransformerBridge.boot_transformers(str(path), device="cpu")


def test_sae_transformer_bridge_steers_at_transformerlens_hook_names_as_saelens_does(tiny_gpt2):
    """SAETransformerBridge's hook_dict lists module paths only (blocks.0.hook_out), so an SAE recording
    blocks.0.hook_resid_post (SAELens's registry names) was refused as an unknown hook point; it now
    steers where SAELens splices it, with SAELens's own steering's logits, spliced or not."""
    model = sae_transformer_bridge(tiny_gpt2)
    sl = sae_lens_sae()
    tokens = model.to_tokens("anna saw two red boats near the reef .")

    def clamp(acts, hook):  # noqa: ARG001
        acts[..., 5] = 4.0
        return acts

    with torch.no_grad():
        clean = model(tokens)
        with steer(model, sl, "5:clamp=4"):
            got = model(tokens)
        model.add_sae(sl, use_error_term=True)
        with steer(model, sl, "5:clamp=4"):
            got_spliced = model(tokens)
        with model.hooks(fwd_hooks=[(model.get_sae_hook_name(sl), clamp)]):  # SAELens's own steering
            want = model(tokens)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got_spliced, want, **TOL)
    assert (want - clean).abs().max() > 1e-2


def test_sae_transformer_bridge_splice_inside_the_block_is_refused(tiny_gpt2):
    model = sae_transformer_bridge(tiny_gpt2)
    sl = sae_lens_sae()
    tokens = model.to_tokens("anna saw two red boats near the reef .")
    with torch.no_grad(), steer(model, sl, "5:clamp=4"):
        with pytest.raises(SteeringError, match="did not run in this forward pass"):
            model.run_with_saes(tokens, saes=[sl], use_error_term=True)


def test_sae_transformer_bridge_after_reset_saes_refuses_instead_of_steering_nothing(tiny_gpt2):
    """SAETransformerBridge.reset_saes leaves a hook point out of the forward (its hooks, SAELens's own
    included, never run again): `steer` there changed nothing, without a word; now the forward raises."""
    model = sae_transformer_bridge(tiny_gpt2)
    sl = sae_lens_sae()
    model.add_sae(sl, use_error_term=True)
    model.reset_saes()
    with torch.no_grad(), steer(model, sl, "5:clamp=4"):
        with pytest.raises(SteeringError, match="did not run in this forward pass.*boot the model again"):
            model(model.to_tokens("anna saw two red boats near the reef ."))


# ---------------------------------------------------------------------------------------------
# the model's weight processing against the SAE's recorded model_from_pretrained_kwargs


def test_a_notebook_model_processed_otherwise_than_the_sae_records_is_refused_naming_both():
    """An SAE recording model_from_pretrained_kwargs (center_writing_weights=False: SAELens's trainer
    writes it) steered a HookedTransformer from `from_pretrained` (processed: centred writing weights,
    other residual activations) without a word: the check needed saesteer's load_model. The model's
    own weights now show its processing (LNPre, rows summing to 0)."""
    sl = sae_lens_sae()
    sl.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": False}
    raw = hooked_sae_transformer()
    with steer(raw, sl, "5:clamp=4"):
        pass  # raw weights: what the SAE records
    processed = hooked_sae_transformer()
    processed.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    with pytest.raises(Exception, match=r"center_writing_weights=False.*from_pretrained_no_processing"):
        with steer(processed, sl, "5:clamp=4"):
            pass
    with steer(processed, sl, "5:clamp=4", allow_model_mismatch=True):
        pass
    sl.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": True, "fold_ln": True}
    with steer(processed, sl, "5:clamp=4"):
        pass
    with pytest.raises(Exception, match=r"raw weights.*HookedTransformer.from_pretrained\("):
        with steer(raw, sl, "5:clamp=4"):
            pass


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_processed_model_is_seen_processed_not_refused(dtype):
    """`from_pretrained(..., dtype=torch.bfloat16)`: centred rows rounded to bf16 sum to ~1e-4 of the
    largest entry, not 1e-5: the model was seen as not centred and an SAE asking for the processed
    model refused it (naming an adapter that does not exist here). Raw weights in half precision are
    still told apart."""
    sl = sae_lens_sae()
    sl.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": True, "fold_ln": True}
    processed = hooked_sae_transformer()
    processed.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    with steer(processed.to(dtype), sl, "5:clamp=4"):
        pass
    with pytest.raises(Exception, match=r"raw weights.*HookedTransformer.from_pretrained\("):
        with steer(hooked_sae_transformer().to(dtype), sl, "5:clamp=4"):
            pass


def test_a_notebook_model_processed_flag_by_flag_is_refused_naming_the_flag_to_set():
    """`from_pretrained(..., center_writing_weights=False)` (folded, not centred) against an SAE asking
    for centred weights: refused, naming the from_pretrained flag to set; the message spoke of a
    TransformerBridge adapter, which a HookedTransformer built in a notebook does not have."""
    sl = sae_lens_sae()
    sl.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": True, "fold_ln": True}
    model = hooked_sae_transformer()
    model.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=True)
    with pytest.raises(Exception, match=r"center_writing_weights=False there; load it with "
                                        r"HookedTransformer.from_pretrained\(\.\.\., center_writing_weights=True\)"
                                        r", or pass allow_model_mismatch=True") as e:
        with steer(model, sl, "5:clamp=4"):
            pass
    assert "TransformerBridge" not in str(e.value)


def test_a_notebook_models_weights_are_read_once_until_they_change(monkeypatch):
    """Every `steer` (each sweep strength, each compare_methods run) read the embedding's and the
    unembedding's rows again (~80 ms a call on GPT-2's, seconds on a 256k vocabulary): read once per
    tensor, and again after the weights change in place (process_weights_), so the verdict follows them."""
    import saes.processing as processing

    reads = []
    read = processing._rows_centred
    monkeypatch.setattr(processing, "_rows_centred", lambda W: reads.append(1) or read(W))
    sl = sae_lens_sae()
    sl.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": False}
    model = hooked_sae_transformer()
    for _ in range(3):
        with steer(model, sl, "5:clamp=4"):
            pass
    assert len(reads) == 2  # W_E and W_U, once
    with torch.no_grad():
        model.W_E.sub_(model.W_E.mean(-1, keepdim=True))  # centred in place, as center_writing_weights does
    with pytest.raises(Exception, match=r"center_writing_weights=False"):
        with steer(model, sl, "5:clamp=4"):
            pass


def test_compare_methods_sweep_and_compare_take_a_sae_lens_sae():
    """compare_methods read `sae.d_sae` of the SAELens object (AttributeError); it, `sweep` and
    `compare` now take it, with the results of the same SAE converted by hand."""
    from saes.interop import from_sae_lens
    from steering import GenerationConfig, SweepConfig, compare, compare_methods
    from steering.evaluate import OfflineScorer
    from steering.sweeps import sweep

    model, sl = hooked_sae_transformer(), sae_lens_sae()
    gen = GenerationConfig(max_new_tokens=4, seed=0)
    scorer = OfflineScorer(lambda text: text.count("sea") / 4, lambda text: (1, 1))
    prompts = ["the ship", "a tree"]
    for sae in (sl, from_sae_lens(sl)):
        card = compare_methods(model, sae, scorer, prompts=prompts, latents=[5], gen_config=gen, with_perplexity=False,
                               typical_max=lambda latent: 2.0)
        points = sweep(model, sae, 5, prompts, scorer, SweepConfig(strengths=[0, 3], op="add", unit="raw",
                                                                   perplexity=False), gen_config=gen).points
        texts = compare(model, sae, "5:clamp=30", prompts, gen).steered
        if sae is sl:
            want = (card.to_json(), [p.concept for p in points], texts)
    assert (card.to_json(), [p.concept for p in points], texts) == want


def test_a_bridge_in_compatibility_mode_counts_as_processed(tiny_gpt2):
    """TransformerBridge.enable_compatibility_mode folds and centres but keeps its config's norm: an SAE
    asking for a processed model is accepted there (no false refusal over fold_ln, which changes the MLP's
    input), one asking for raw weights refused; the same bridge booted raw the other way round. The
    refusals name the bridge's own call (they named HookedTransformer.from_pretrained, another class)."""
    sl = sae_lens_sae(hook="blocks.0.mlp.hook_in")
    model = sae_transformer_bridge(tiny_gpt2)
    wants_processed = {"center_writing_weights": True, "fold_ln": True}
    sl.cfg.metadata.model_from_pretrained_kwargs = wants_processed
    with pytest.raises(Exception, match=r"raw weights.*Call model.enable_compatibility_mode\(\) on the bridge"):
        with steer(model, sl, "5:clamp=4"):
            pass
    model.enable_compatibility_mode(disable_warnings=True)
    with steer(model, sl, "5:clamp=4"):
        pass
    sl.cfg.metadata.model_from_pretrained_kwargs = {"fold_ln": False}
    with pytest.raises(Exception, match=r"fold_ln=False.*Boot the bridge again without enable_compatibility_mode"):
        with steer(model, sl, "5:clamp=4"):
            pass


def test_evaluate_saes_takes_sae_objects_and_agrees_with_saelens_splice():
    """evaluate_saes took only LoadedSAEs (AttributeError 'sae' on an SAE in memory): a `sae_lens.SAE`
    (or ours) is taken as it is, and its metrics are SAELens's own: its encode/decode on the held-out
    rows, and the CE loss of `run_with_saes` (every position spliced: keep_ids=())."""
    from evals.activations import collect
    from evals.config import EvalConfig
    from evals.run import EvalInputs, evaluate_saes

    model, sl = hooked_sae_transformer(), sae_lens_sae("topk")
    tokens = model.to_tokens(TEXT)
    held = collect(model, [HOOK], tokens)
    got = evaluate_saes({"mine": sl}, EvalInputs(model, held, ce_tokens=tokens, keep_ids=()),
                        EvalConfig(absorption=False, probing=False))["mine"]["metrics"]
    x = held.acts[HOOK].float()
    with torch.no_grad():
        acts = sl.encode(x)
        want_loss = model.run_with_saes(tokens, saes=[sl], return_type="loss")
        clean_loss = model(tokens, return_type="loss")
    assert got["l0"] == pytest.approx(float((acts > 0).sum(-1).float().mean()), rel=1e-5)
    assert got["mse"] == pytest.approx(float(((sl.decode(acts) - x) ** 2).sum(-1).mean()), rel=1e-4)
    assert got["ce_loss_spliced"] == pytest.approx(float(want_loss), rel=1e-4)
    assert got["ce_loss_clean"] == pytest.approx(float(clean_loss), rel=1e-4)


def test_a_bf16_model_steered_with_an_fp32_sae_lens_sae_is_as_close_as_the_model_itself():
    """A bf16 model, the SAE left in fp32 (what `SAE.from_pretrained` gives): the steered logits are as
    far from the fp32 model's SAELens steering as the bf16 model's own logits are from the fp32 model's."""
    sl = sae_lens_sae()
    m32, m16 = hooked_sae_transformer(), hooked_sae_transformer().to(torch.bfloat16)
    tokens = m32.to_tokens(TEXT)
    want = saelens_clamped_logits(m32, sl, tokens, 5, 4.0)
    with torch.no_grad():
        rounding = (m16(tokens).float() - m32(tokens)).abs().max()
        with steer(m16, sl, "5:clamp=4"):
            got = m16(tokens)
    assert got.dtype == torch.bfloat16 and sl.W_dec.dtype == torch.float32
    assert (got.float() - want).abs().max() <= 2 * rounding


def test_session_generate_gives_prompts_the_bos_the_sae_records_on_a_model_without_default_bos():
    """A model with default_prepend_bos=False (GPT-NeoX, Qwen2 in TransformerLens) and an SAE recording
    prepend_bos=True (SAELens's from_pretrained SAEs do): `compare` and `sweep` fed the SAE's BOS, but
    `with steer(...) as s: s.generate(...)` (the README's example) fed none; now all three do."""
    from steering import GenerationConfig, compare

    model, sl = hooked_sae_transformer(), sae_lens_sae()
    model.cfg.default_prepend_bos = False
    sl.cfg.metadata.prepend_bos = True
    bos = model.tokenizer.bos_token_id
    gen = GenerationConfig(max_new_tokens=4, seed=0)
    with steer(model, sl, "5:clamp=30@prompt") as s:
        got = s.generate(["the ship"], gen)
        unset = s.generate(["the ship"], gen, prepend_bos=False)  # the caller's choice still wins
    assert got.tokens[0][0] == bos and unset.tokens[0][0] != bos
    assert got.texts == compare(model, sl, "5:clamp=30@prompt", ["the ship"], gen).steered


def test_evaluate_saes_refuses_an_sae_recorded_for_other_weight_processing_than_the_models():
    """evaluate_saes measured an SAE on a model processed otherwise than the SAE records (its
    activations are others) without a word, where steer, compare and features_on_text refuse: it now
    runs the same check, and `allow_model_mismatch` in its inputs overrides it."""
    from evals.activations import collect
    from evals.config import EvalConfig
    from evals.run import EvalInputs, evaluate_saes

    sl = sae_lens_sae()
    sl.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": False}
    processed = hooked_sae_transformer()
    processed.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    tokens = processed.to_tokens(TEXT)
    inputs = EvalInputs(processed, collect(processed, [HOOK], tokens), ce_tokens=tokens, keep_ids=())
    cfg = EvalConfig(absorption=False, probing=False)
    with pytest.raises(Exception, match=r"center_writing_weights=False"):
        evaluate_saes({"mine": sl}, inputs, cfg)
    assert "l0" in evaluate_saes({"mine": sl}, inputs._replace(allow_model_mismatch=True), cfg)["mine"]["metrics"]
