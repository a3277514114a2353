"""Raw weights by default, TransformerLens's weight processing when asked (`--process-weights`),
recorded through the chain and matched to SAELens's way of loading models.

- the identity tells the two apart (id suffix '+processed'), and a model loaded the other way is
  refused with the flag named;
- `saesteer cache --process-weights` -> `saesteer train`: the manifest, saesteer.json and cfg.json
  (`model_from_pretrained_kwargs`) record it, the CE evaluation and later commands re-load the
  model processed;
- SAELens, loading the model as cfg.json tells it (`from_pretrained_no_processing(**kwargs)`, here
  `load_and_process_state_dict(**kwargs)` on the toy model, which is not on TransformerLens's list),
  gets the logits we get with the SAE spliced in.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch

from saes.identity import PROCESSING, ModelIdentity, ModelMismatchError, check_same_model, identity_of_sae, same_model
from saesteer.cli import main
from saesteer.models import load_model, load_recorded_model, model_identity

HOOK = "blocks.2.hook_resid_post"
H = "c" * 64


def test_the_identity_tells_raw_and_processed_weights_apart():
    raw = ModelIdentity("toy", "toyworld-tiny", weights_sha256=H)
    pro = ModelIdentity("toy", "toyworld-tiny", weights_sha256=H, weights="processed")
    assert pro.id == raw.id + "+processed" and not same_model(raw, pro)
    assert ModelIdentity.from_id(pro.id) == ModelIdentity("toy", "toyworld-tiny", weights_sha256=H[:16], weights="processed")
    assert ModelIdentity.from_json({k: v for k, v in raw.to_json().items() if k != "weights"}) == raw  # older records
    assert ModelIdentity.from_json(pro.to_json()) == pro
    assert pro.saelens_load_kwargs == {"fold_ln": True, "center_writing_weights": True, "center_unembed": True,
                                       "fold_value_biases": True}
    assert not any(raw.saelens_load_kwargs.values())
    with pytest.raises(ModelMismatchError, match=r"--process-weights\).*raw weights \(no --process-weights\).*--x"):
        check_same_model(pro, raw, recorded_in="the cache c", given_as="--model toy", override="--x")


def test_processing_centres_the_residual_stream_and_keeps_the_predictions():
    raw, pro = load_model("toy", device="cpu"), load_model("toy", device="cpu", process_weights=True)
    assert model_identity(pro).processed and model_identity(pro).id == model_identity(raw).id + "+processed"
    toks = torch.randint(1, 400, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lr, cr = raw.run_with_cache(toks, names_filter=[HOOK])
        lp, cp = pro.run_with_cache(toks, names_filter=[HOOK])
    assert cr[HOOK].mean(-1).abs().max() > 1e-2 and cp[HOOK].mean(-1).abs().max() < 1e-5
    torch.testing.assert_close(lp.log_softmax(-1), lr.log_softmax(-1), rtol=1e-4, atol=1e-4)


def test_an_hf_checkpoint_is_processed_through_the_bridge(tmp_path):
    from helpers.tiny_hf import save_tiny_gpt2
    from training.runner import ActivationRunner

    path = str(save_tiny_gpt2(tmp_path / "gpt2"))
    raw, pro = load_model(path, device="cpu"), load_model(path, device="cpu", process_weights=True)
    assert model_identity(pro).processed and not model_identity(raw).processed
    toks = torch.randint(1, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    hook = "blocks.1.hook_resid_post"
    with torch.no_grad():
        lr, cr = raw.run_with_cache(toks, names_filter=[hook])
        lp, cp = pro.run_with_cache(toks, names_filter=[hook])
    assert cr[hook].mean(-1).abs().max() > 1e-3 and cp[hook].mean(-1).abs().max() < 1e-5
    torch.testing.assert_close(lp.log_softmax(-1), lr.log_softmax(-1), rtol=1e-4, atol=1e-4)
    runner = ActivationRunner(pro, [hook])  # the cache reads the processed activations, whichever forward it uses
    torch.testing.assert_close(runner.run(toks)[hook], cp[hook], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A processed cache and a short training run on it (with the CE evaluation), and a raw cache."""
    d = tmp_path_factory.mktemp("pw")
    common = ["--dataset", "toy", "--max-tokens", "2048", "--shard-contexts", "8", "--hooks", HOOK, "--no-progress"]
    assert main(["cache", "--model", "toy", "--process-weights", "--out", str(d / "cache"), *common]) == 0
    assert main(["cache", "--model", "toy", "--out", str(d / "raw"), *common]) == 0
    assert main(["train", "--cache", str(d / "cache"), "--out", str(d / "run"), "--total-tokens", "1024",
                 "--batch-size", "256", "--holdout-tokens", "256", "--d-sae", "128", "--k", "8",
                 "--architecture", "topk", "--progress", "false", "--num-threads", "1",
                 "--checkpoint-every-tokens", "0", "--eval-every-tokens", "0", "--eval-ce-contexts", "2",
                 "--allow-eval-overlap", "true"]) == 0
    return d


def test_the_chain_records_processed_weights_and_reloads_them(chain, capsys):
    manifest = json.loads((chain / "cache" / "manifest.json").read_text())
    assert manifest["model_identity"]["weights"] == "processed" and manifest["model"]["id"].endswith("+processed")
    folder = chain / "run" / "saes" / "topk_k8_f128"
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["metadata"]["model_from_pretrained_kwargs"] == ModelIdentity("toy", "t", weights="processed").saelens_load_kwargs
    metrics = json.loads((chain / "run" / "metrics.json").read_text())["saes"]["topk_k8_f128"]
    assert metrics["ce_loss_recovered"] == metrics["ce_loss_recovered"]  # the CE evaluation ran (a number, not NaN)

    import saes

    recorded = identity_of_sae(saes.read_provenance(folder))
    assert recorded.processed
    for spec in (None, "toy"):  # the record decides, with or without --model
        model = load_recorded_model(recorded, spec, recorded_in="the SAE")
        assert model_identity(model).processed
    with pytest.raises(ModelMismatchError, match="--process-weights"):
        check_same_model(recorded, model_identity(load_model("toy", device="cpu")), recorded_in="the SAE",
                         given_as="the model", override="--allow-model-mismatch")

    capsys.readouterr()
    assert main(["cache", "--process-weights", "--out", str(chain / "raw"), "--dataset", "toy", "--max-tokens", "2048",
                 "--shard-contexts", "8", "--hooks", HOOK, "--no-progress"]) == 2
    assert "raw weights" in capsys.readouterr().err
    assert main(["train", "--cache", str(chain / "raw"), "--out", str(chain / "run2"), "--process-weights", "true",
                 "--total-tokens", "512", "--batch-size", "256", "--holdout-tokens", "256", "--d-sae", "64",
                 "--progress", "false"]) == 2
    assert "--process-weights" in capsys.readouterr().err


def test_sae_lens_loading_the_model_as_cfg_json_says_gets_our_logits(chain):
    from sae_lens import SAE as SaeLensSAE
    from sae_lens import HookedSAETransformer

    import saes
    from training.evaluate import sae_reconstructor

    folder = chain / "run" / "saes" / "topk_k8_f128"
    with pytest.warns(UserWarning, match="from_pretrained_no_processing"):
        sl = SaeLensSAE.load_from_disk(folder)
    kwargs = dict(sl.cfg.metadata.model_from_pretrained_kwargs)
    raw = load_model("toy", device="cpu")

    def twin(**process):
        m = HookedSAETransformer(copy.deepcopy(raw.cfg), tokenizer=raw.tokenizer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.load_and_process_state_dict(copy.deepcopy(raw.state_dict()), **process)
        return m.eval()

    ours = load_model("toy", device="cpu", process_weights=True)
    sae = saes.load_sae(folder)
    toks = torch.randint(1, 400, (2, 16), generator=torch.Generator().manual_seed(1))
    toks[:, 0] = raw.tokenizer.bos_token_id
    recon = sae_reconstructor(sae)
    with torch.no_grad(), ours.hooks(fwd_hooks=[(HOOK, lambda act, hook: recon(act))]):
        want = ours(toks)
    no_processing = {k: False for k in kwargs}
    with torch.no_grad():
        got = twin(**{**no_processing, **kwargs}).run_with_saes(toks, saes=[sl])
        unprocessed = twin(**no_processing).run_with_saes(toks, saes=[sl])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (unprocessed.log_softmax(-1) - want.log_softmax(-1)).abs().max() > 1e-3  # the other weights: other outputs


def test_which_hooks_each_processing_flag_changes_is_measured_on_gpt2(real_models):
    """`saes.processing.FLAG_CHANGES` (which flags of a SAELens SAE's model_from_pretrained_kwargs
    matter at its hook) against the activations of a GPT-2 HookedTransformer loaded with that one
    flag: every hook point, opt-in ones included, changes exactly under the flags the table names."""
    from helpers.real_models import hooked_sae_transformer
    from saes.identity import PROCESSING
    from saes.processing import flags_changing

    path = real_models.path("gpt2")

    def activations(**flags):
        model = hooked_sae_transformer(path, **flags)
        model.set_use_attn_result(True)
        model.set_use_hook_mlp_in(True)
        model.set_use_split_qkv_input(True)
        toks = model.to_tokens(["def f(x):\n    return x + 1", "The caf\u00e9 is open."])
        with torch.no_grad():
            return model.run_with_cache(toks)[1]

    raw = activations()
    assert {"blocks.1.attn.hook_result", "blocks.1.hook_mlp_in", "blocks.1.hook_q_input", "blocks.1.mlp.hook_in",
            "unembed.hook_out"} <= set(raw.keys())
    for flag in PROCESSING:
        got = activations(**{flag: True})
        changed = {h for h in raw.keys() if not torch.allclose(raw[h], got[h], atol=1e-4, rtol=1e-4)}
        assert changed == {h for h in raw.keys() if flag in flags_changing(h)}, flag


def test_what_a_saelens_sae_asks_of_the_model_follows_its_hooks():
    """model_from_pretrained_kwargs are from_pretrained_no_processing's (flags default to False) and
    only the flags that change the SAE's hook(s) count: raw, processed, either, or neither (refused)."""
    import saes
    from saes.formats.base import LoadedSAE
    from saes.processing import check_processing, processing_wanted

    def loaded(hook, kwargs, out=None):
        md = {"hook_name": hook, "model_from_pretrained_kwargs": kwargs, **({"hook_name_out": out} if out else {})}
        sae = saes.create_sae("topk", 8, 16, k=2, generator=torch.Generator().manual_seed(0), metadata=md)
        return LoadedSAE(sae, {}, "sae_lens:r/x", "sae_lens_registry")

    from transformer_lens import HookedTransformerConfig

    gpt2_cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, d_vocab=16, act_fn="gelu",
                                       normalization_type="LN", original_architecture="GPT2LMHeadModel")
    raw, pro = ModelIdentity("hub", "gpt2"), ModelIdentity("hub", "gpt2", weights="processed")
    kw = dict(sae_name="x", model_as="the model given", override="--allow-model-mismatch", fix=lambda w: f"use {w}",
              model_cfg=gpt2_cfg)
    res_jb = loaded("blocks.8.hook_resid_pre", {"center_writing_weights": True})
    assert processing_wanted(res_jb) is True
    check_processing(res_jb, pro, **kw)
    with pytest.raises(ModelMismatchError, match=r"center_writing_weights=True .* raw weights .*Use True, or pass --allow"):
        check_processing(res_jb, raw, **kw)
    assert processing_wanted(loaded("blocks.8.ln2.hook_normalized", {"center_writing_weights": True})) is None
    assert processing_wanted(loaded("blocks.8.hook_resid_pre", {})) is None  # nothing recorded: not checked
    # a transcoder: fold_ln False at its input, and (by default) no centring at its target
    tc = loaded("blocks.8.mlp.hook_in", {"fold_ln": False}, out="blocks.8.hook_mlp_out")
    assert processing_wanted(tc) is False
    with pytest.raises(ModelMismatchError, match="hook_mlp_out"):
        check_processing(tc, pro, **kw)
    # centred writing weights without folded value biases at hook_result: neither load gives it
    result = loaded("blocks.8.attn.hook_result", {"center_writing_weights": True})
    assert processing_wanted(result) is None
    for model in (raw, pro):
        with pytest.raises(ModelMismatchError, match="neither gives those activations"):
            check_processing(result, model, **kw)


def test_centring_writing_weights_counts_only_where_transformerlens_does_it():
    """TransformerLens centres writing weights only before a LayerNorm: an RMSNorm (Llama, Gemma),
    post-norm or shortformer model keeps them, so SAELens's trainer's center_writing_weights=False
    says nothing there; a model whose config is unknown is not refused on its False alone."""
    import saes
    from saes.formats.base import LoadedSAE
    from saes.processing import centres_writing_weights, check_processing, flags_changing
    from transformer_lens import HookedTransformerConfig

    def cfg(**kw):
        return HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, d_vocab=16, act_fn="gelu", **kw)

    gpt2 = cfg(normalization_type="LN", original_architecture="GPT2LMHeadModel")
    assert centres_writing_weights(gpt2) is True
    for other in (cfg(normalization_type="RMS", original_architecture="LlamaForCausalLM"),
                  cfg(normalization_type="LN", positional_embedding_type="shortformer"),
                  cfg(normalization_type="LN", original_architecture="Olmo2ForCausalLM")):
        assert centres_writing_weights(other) is False
        assert flags_changing("blocks.0.hook_resid_post", other) == set()
    assert centres_writing_weights(None) is None
    md = {"hook_name": "blocks.0.hook_resid_post", "model_from_pretrained_kwargs": {"center_writing_weights": False}}
    sae = saes.create_sae("topk", 8, 16, k=2, generator=torch.Generator().manual_seed(0), metadata=md)
    trained = LoadedSAE(sae, {}, "sae_lens:r/x", "sae_lens_registry")
    kw = dict(sae_name="x", model_as="the model given", override="--allow-model-mismatch", fix=lambda w: f"use {w}")
    pro = ModelIdentity("local", "m", weights="processed")
    check_processing(trained, pro, model_cfg=cfg(normalization_type="RMS"), **kw)
    check_processing(trained, pro, **kw)  # unknown config: False may be moot there
    asks_centring = LoadedSAE(saes.create_sae("topk", 8, 16, k=2, metadata={**md, "model_from_pretrained_kwargs": {
        "center_writing_weights": True}}), {}, "sae_lens:r/y", "sae_lens_registry")
    with pytest.raises(ModelMismatchError, match="center_writing_weights=True"):  # True: asked where it centres
        check_processing(asks_centring, ModelIdentity("local", "m"), **kw)
    with pytest.raises(ModelMismatchError, match="center_writing_weights=False"):
        check_processing(trained, pro, model_cfg=gpt2, **kw)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_saelens_trained_sae_on_a_processed_model_is_refused_only_where_activations_differ(real_models, family):
    """SAELens's trainer records center_writing_weights=False: on a processed Llama-like model the
    residual stream is the raw model's (RMSNorm: nothing centred) and the SAE is accepted; on
    GPT-2 it differs and the SAE is refused."""
    import saes
    from saes.formats.base import LoadedSAE
    from saes.identity import check_sae_model

    path = str(real_models.path(family))
    raw, pro = load_model(path, device="cpu"), load_model(path, device="cpu", process_weights=True)
    hook = "blocks.1.hook_resid_post"
    toks = raw.to_tokens(["The caf\u00e9 is open.", "def f(x):\n    return x + 1"])
    with torch.no_grad():
        a = raw.run_with_cache(toks, names_filter=[hook])[1][hook]
        b = pro.run_with_cache(toks, names_filter=[hook])[1][hook]
    same = torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert same == (family == "llama")
    md = {"hook_name": hook, "model_from_pretrained_kwargs": {"center_writing_weights": False}}
    sae = saes.create_sae("topk", a.shape[-1], 16, k=2, generator=torch.Generator().manual_seed(0), metadata=md)
    trained = LoadedSAE(sae, {}, "sae_lens:r/x", "sae_lens_registry")
    if same:
        check_sae_model(pro, trained)
    else:
        with pytest.raises(ModelMismatchError, match="center_writing_weights=False"):
            check_sae_model(pro, trained)


# ---------------------------------------------------------------------------------------------
# the cache records its model's config: features build and train --init-from check as with the model


def _saelens_folder(folder: Path, model_dir: Path, hook: str, kwargs: dict) -> Path:
    """A SAELens TopK SAE folder (cfg.json + weights) trained, its metadata says, on `hook` of the
    local model at `model_dir` loaded with `kwargs` (model_from_pretrained_kwargs)."""
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    sae = TopKSAE(TopKSAEConfig(d_in=64, d_sae=128, k=4))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.2)
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = hook, str(model_dir)
    sae.cfg.metadata.model_from_pretrained_kwargs = kwargs
    sae.save_model(folder)
    return folder


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_features_build_and_init_from_read_the_caches_model_config(real_models, real_corpus, family, tmp_path):
    """Without the model, the check used to fall back to its unknown-config rule: an SAE SAELens
    trained on raw GPT-2 (center_writing_weights=False) passed over a --process-weights cache (whose
    residual stream is centred: other activations at every position), and an SAE asking for centring
    on a Llama-like model (RMSNorm: centring changes nothing) was refused over a raw cache. The
    manifest's `model_processing` now gives both commands the model's config; a cache without it (an
    older saesteer) keeps the unknown-config rule."""
    from helpers.real_cli import saesteer
    from training.manifest import MANIFEST_NAME, read_manifest

    model_dir = real_models.path(family)
    hook = "blocks.1.hook_resid_post"
    gpt2 = family == "gpt2"
    cache = tmp_path / "cache"
    saesteer("cache", "--model", model_dir, "--dataset", real_corpus.jsonl_dir, "--split", "validation",
             "--context-length", 32, "--max-tokens", 512, "--hooks", hook, "--out", cache, "--no-progress",
             *(["--process-weights"] if gpt2 else [])).ok()
    record = read_manifest(cache).model_processing
    norm = "LN" if gpt2 else "RMS"
    assert record["config"]["normalization_type"] == norm
    assert record["applied"] == ({"fold_ln": True, "center_writing_weights": True, "center_unembed": True,
                                  "fold_value_biases": True} if gpt2 else dict.fromkeys(record["applied"], False))
    sae = _saelens_folder(tmp_path / "sl", model_dir, hook, {"center_writing_weights": not gpt2})
    build = ("features", "build", "--sae", sae, "--cache", cache, "--model", "none", "--no-progress")
    tune = ("train", "--cache", cache, "--init-from", sae, "--total-tokens", 128, "--batch-size", 64,
            "--holdout-tokens", 64, "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--model-eval", "false",
            "--no-progress", "--sae-name", "ft")
    r_build = saesteer(*build, "--out", tmp_path / "f.db")
    r_tune = saesteer(*tune, "--out", tmp_path / "ft")
    if gpt2:
        for r, override in ((r_build, "--allow-model-mismatch"), (r_tune, "--init-from-allow-mismatch")):
            assert r.rc != 0 and "Traceback" not in r.err, r.err
            assert "center_writing_weights=False" in r.err and "--process-weights" in r.err and override in r.err, r.err
    else:
        r_build.ok()
        r_tune.ok()
    # an older cache (no model_processing): the unknown-config rule, which lets False pass and refuses True
    man = json.loads((cache / MANIFEST_NAME).read_text())
    del man["model_processing"]
    (cache / MANIFEST_NAME).write_text(json.dumps(man))
    assert read_manifest(cache).model_config() is None
    r = saesteer(*build, "--out", tmp_path / "old.db")
    if gpt2:
        r.ok()
        # with the model loaded, its config counts again: refused, naming the CLI's flags (it named
        # the library's allow_model_mismatch=True and process_weights)
        r = saesteer(*build[:-3], "--no-progress", "--out", tmp_path / "old2.db")
        assert r.rc != 0 and "center_writing_weights=False" in r.err and "Traceback" not in r.err, r.err
        assert "--allow-model-mismatch" in r.err and "--process-weights" in r.err, r.err
        assert "allow_model_mismatch=True" not in r.err and "process_weights=" not in r.err, r.err
    else:
        assert r.rc != 0 and "center_writing_weights=True" in r.err, r.err


# ---------------------------------------------------------------------------------------------
# a post-norm model: its norms are never folded, as TransformerLens's from_pretrained leaves them


def test_a_post_norm_model_is_processed_as_transformerlens_does_and_keeps_hf_logits(real_corpus, tmp_path):
    """fold_ln assumes a norm's gain sits on a sublayer's input; OLMo-2/3 normalize the sublayer's
    output, and `from_pretrained` leaves fold_ln (and centring) out for them. Our processing of a
    HookedTransformer called load_and_process_state_dict with all four flags, folding those gains
    into the wrong matrices: other logits. Now both our loaders (HookedTransformer and the Bridge)
    give TransformerLens's from_pretrained result and HF's predictions, and record fold_ln as not
    applied (the cache manifest's `model_processing`)."""
    from helpers.real_models import build_family_tokenizer, hooked_sae_transformer, olmo3_checkpoint
    from saes.processing import processing_record, skipped_flags
    from saesteer.models import _process_weights
    from transformers import AutoModelForCausalLM

    path = olmo3_checkpoint(tmp_path / "olmo3", build_family_tokenizer("llama", real_corpus.train_docs[:20]))
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    toks = torch.tensor([hf.config.bos_token_id, 40, 41, 300, 301, 7, 99, 512, 13, 8]).unsqueeze(0)
    with torch.no_grad():
        want = hf(toks).logits.log_softmax(-1)  # center_unembed moves each position's logits by a constant
        # from_pretrained's defaults, which it applies to OLMo-3 less fold_ln and centring (the test
        # helper SAELens-side tests load models with follows that rule: it folded these norms before)
        reference = hooked_sae_transformer(path, **PROCESSING)
        torch.testing.assert_close(reference(toks).log_softmax(-1), want, atol=1e-4, rtol=0)
        assert skipped_flags(reference.cfg) == {"fold_ln", "center_writing_weights"}

        ours = hooked_sae_transformer(path)
        _process_weights(ours, str(path))
        torch.testing.assert_close(ours(toks).log_softmax(-1), want, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.W_U, reference.W_U, atol=1e-5, rtol=0)  # centred as TransformerLens centres
        applied = {"fold_ln": False, "center_writing_weights": False, "center_unembed": True, "fold_value_biases": True}
        assert processing_record(ours)["applied"] == applied != PROCESSING

        bridge = load_model(str(path), device="cpu", process_weights=True)
        torch.testing.assert_close(bridge(toks).log_softmax(-1), want, atol=1e-4, rtol=0)
        rec = processing_record(bridge)
        assert rec["applied"] == applied
        assert rec["config"]["original_architecture"] == "Olmo3ForCausalLM" and rec["config"]["normalization_type"] == "RMS"


def test_steering_loads_the_model_an_saelens_transcoder_asks_for_by_the_models_config(real_models):
    """A SAELens transcoder on a Llama-like model reads mlp.hook_in with folded norms
    (fold_ln=True) and writes hook_mlp_out with center_writing_weights=False, which changes nothing
    there on an RMSNorm model. `steer` & co. decided how to load the model without its config (as on
    GPT-2: the two flags disagree, so 'either' and raw) and then refused their own model with the
    config; now they decide as check_processing does, and load it processed."""
    import argparse

    import saes
    from saes.formats.base import LoadedSAE
    from saes.processing import APPLIED_ATTR
    from saesteer.commands._steering import load_model as steering_load_model

    path = str(real_models.path("llama"))
    md = {"hook_name": "blocks.1.mlp.hook_in", "hook_name_out": "blocks.1.hook_mlp_out",
          "model_from_pretrained_kwargs": {"fold_ln": True, "center_writing_weights": False}}
    sae = saes.create_sae("topk", 64, 16, k=2, generator=torch.Generator().manual_seed(0), metadata=md)
    loaded = {"tc": LoadedSAE(sae, {}, "sae_lens:r/tc", "sae_lens_registry")}
    args = argparse.Namespace(model=path, allow_model_mismatch=False, device="cpu", sae=["tc=sae_lens:r/tc"], store=None)
    model = steering_load_model(args, loaded, sae_specs={"tc": "sae_lens:r/tc"})
    assert model_identity(model).processed
    assert getattr(model, APPLIED_ATTR)["fold_ln"] is True


def _tiny_bridge_checkpoint(directory: Path, config_class, **fields) -> Path:
    """A random one-layer checkpoint of `config_class` with norm gains far from 1 (folding shows)."""
    import transformers
    from helpers.tiny_hf import build_bpe_tokenizer

    tok = build_bpe_tokenizer()
    torch.manual_seed(0)
    cfg = config_class(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       max_position_embeddings=64, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.eos_token_id, **fields)
    hf = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name and p.ndim == 1 and name.endswith("weight"):
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    hf.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory


def test_phi3s_norms_are_folded_as_transformerlens_folds_them(tmp_path):
    """Phi-3's Bridge adapter declares fold_ln unsupported by ProcessWeights and folds its joint
    projections itself when asked (preprocess_weights). Our processing turned fold_ln off for every
    such adapter, so Phi-3 was never folded; now TransformerLens gets from_pretrained's flags, and
    the record says what was applied."""
    import transformers
    from saes.processing import processing_record

    model = load_model(str(_tiny_bridge_checkpoint(tmp_path / "phi3", transformers.Phi3Config, intermediate_size=64,
                                                   num_key_value_heads=2)), device="cpu", process_weights=True)
    gain = model.state_dict()["blocks.0.ln1.weight"]
    torch.testing.assert_close(gain, torch.ones_like(gain))  # folded into the QKV projection
    assert processing_record(model)["applied"]["fold_ln"] is True


def test_a_post_ln_opt_is_refused_at_load_saying_why_and_what_to_use(tmp_path):
    """TransformerLens 3.9 boots a post-LN OPT (do_layer_norm_before False, as OPT-350m) but its OPT
    adapter maps the blocks as pre-LN with a final layer norm, and the forward fails ("Original
    component not set for model.decoder.final_layer_norm"): every command failed later, unclearly.
    It is refused at load, naming the setting and the pre-LN OPTs to use; a pre-LN OPT loads and
    matches HF."""
    import transformers

    post = _tiny_bridge_checkpoint(tmp_path / "post", transformers.OPTConfig, ffn_dim=64, do_layer_norm_before=False)
    with pytest.raises(ValueError, match=r"post-LN OPT \(do_layer_norm_before=false.*use a pre-LN OPT \(facebook/opt-125m"):
        load_model(str(post), device="cpu")
    pre = _tiny_bridge_checkpoint(tmp_path / "pre", transformers.OPTConfig, ffn_dim=64, do_layer_norm_before=True)
    ids = torch.tensor([[2, 5, 7, 9, 11]])
    ours = load_model(str(pre), device="cpu")(ids).float().log_softmax(-1)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(pre)).eval()(ids).logits.float().log_softmax(-1)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_a_flag_the_bridge_adapter_could_not_apply_is_refused_where_the_sae_needs_it(tmp_path, monkeypatch):
    """TransformerBridge's adapter for a post-LN OPT (do_layer_norm_before False, as OPT-350m)
    cannot fold its norms: saesteer's processed model keeps them and records fold_ln as not applied,
    where the SAE says it read a model with folded norms. The check compared only raw-vs-processed
    and passed it. Now the flags applied count (the model's, or a cache's `model_processing`), and
    only at hooks where that flag matters."""
    import saes
    import transformers
    from saes.formats.base import LoadedSAE
    from saes.identity import check_sae_model
    from saes.processing import applied_of_record, check_processing, processing_record

    path = _tiny_bridge_checkpoint(tmp_path / "opt", transformers.OPTConfig, ffn_dim=64, word_embed_proj_dim=32,
                                   do_layer_norm_before=False)
    # loading refuses a post-LN OPT (its forward fails); its processing record is what is tested here
    monkeypatch.setattr("saesteer.models.refuse_unsupported", lambda model, spec: None)
    model = load_model(str(path), device="cpu", process_weights=True)
    record = processing_record(model)
    assert record["applied"]["fold_ln"] is False and record["applied"]["center_unembed"] is True

    def trained_on(hook):
        md = {"hook_name": hook, "model_from_pretrained_kwargs": dict(PROCESSING)}
        sae = saes.create_sae("topk", 32, 16, k=2, generator=torch.Generator().manual_seed(0), metadata=md)
        return LoadedSAE(sae, {}, "sae_lens:r/x", "sae_lens_registry")

    with pytest.raises(ModelMismatchError, match=r"fold_ln=False there .*adapter"):
        check_sae_model(model, trained_on("blocks.0.mlp.hook_in"))
    kw = dict(sae_name="x", model_as="the cache's model", override="--allow-model-mismatch", fix=lambda w: f"use {w}",
              model_cfg=model.cfg, applied=applied_of_record(record))
    with pytest.raises(ModelMismatchError, match="fold_ln=False there"):  # from a cache's record alone
        check_processing(trained_on("blocks.0.mlp.hook_in"), model_identity(model), **kw)
    check_processing(trained_on("blocks.0.attn.hook_z"), model_identity(model), **kw)  # fold_ln changes nothing there

    # `features build` reads the record through the cache source (CacheSource.processing_applied)
    from types import SimpleNamespace

    from features.checks import check_models
    from saes.processing import config_of_record

    cache = SimpleNamespace(path="cache", recorded_model=lambda: model_identity(model),
                            model_config=lambda: config_of_record(record), processing_applied=lambda: applied_of_record(record))
    with pytest.raises(ModelMismatchError, match="fold_ln=False there"):
        check_models(trained_on("blocks.0.mlp.hook_in"), cache)
    check_models(trained_on("blocks.0.attn.hook_z"), cache)
