"""The cache's fused forward (training.fast_forward) against TransformerLens's own forward, and the
runner's choice between them (check batch, fallback, hooks attached, resume)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from helpers.tiny_model import make_model, make_tokenizer, write_corpus

pytestmark = [pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning"), pytest.mark.usefixtures("one_thread")]


def build(seed=0, **kw):
    """A random HookedTransformer with random biases and norm weights (so every term shows)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    base = dict(n_layers=3, d_model=32, n_ctx=24, d_head=8, n_heads=4, d_vocab=40, act_fn="gelu", seed=seed)
    base.update(kw)
    model = HookedTransformer(HookedTransformerConfig(**base))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            last = name.split(".")[-1]
            if last == "w":
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif last == "b" or last.startswith("b_") or last.startswith("_b_"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


CONFIGS = {
    "gpt2-like": dict(),
    "llama-like": dict(normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
                       act_fn="silu", d_mlp=48, n_key_value_heads=2),
    "pythia-like": dict(normalization_type="LNPre", positional_embedding_type="rotary", rotary_dim=4,
                        parallel_attn_mlp=True, act_fn="gelu_new"),
    "gptj-pairs": dict(positional_embedding_type="rotary", rotary_dim=8, rotary_adjacent_pairs=True,
                       parallel_attn_mlp=True, act_fn="gelu_fast"),
    "rmspre-gqa1": dict(normalization_type="RMSPre", positional_embedding_type="rotary", rotary_dim=8,
                        n_key_value_heads=1, act_fn="gelu_pytorch_tanh", n_ctx=12),
    "no-norm-layer-scaled": dict(normalization_type=None, scale_attn_by_inverse_layer_idx=True, act_fn="relu"),
    "attn-only-unscaled": dict(attn_only=True, use_attn_scale=False),
    "custom-scale": dict(attn_scale=2.5, act_fn="relu2", d_mlp=40),
}


def fast_hooks(model) -> list[str]:
    from training.fast_support import BLOCK_HOOKS, GLOBAL_HOOKS

    _, cache = model.run_with_cache(torch.zeros(1, 2, dtype=torch.long))
    return [h for h in cache.keys() if h in GLOBAL_HOOKS or (h.startswith("blocks.") and h.split(".", 2)[2] in BLOCK_HOOKS)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_forward_equals_transformer_lens_at_every_supported_hook(name):
    from training.fast_forward import FastForward

    model = build(**CONFIGS[name])
    hooks = fast_hooks(model)
    assert "blocks.2.hook_resid_post" in hooks and "blocks.1.attn.hook_z" in hooks
    L = min(model.cfg.n_ctx, 20)
    tokens = torch.randint(0, model.cfg.d_vocab, (3, L), generator=torch.Generator().manual_seed(5))
    _, cache = model.run_with_cache(tokens)
    got = FastForward(model, hooks)(tokens)
    assert list(got) == hooks
    for h in hooks:
        want = cache[h]
        assert got[h].shape == want.shape, h
        err = (got[h] - want).abs().max().item()
        assert err <= 2e-5 * want.abs().max().item(), f"{name} {h}: max abs diff {err:.3g}"


def test_fast_forward_stops_after_the_last_needed_block():
    from training.fast_forward import FastForward

    model = build(n_layers=4)
    ff = FastForward(model, ["blocks.1.hook_resid_mid", "hook_embed"])
    assert len(ff.layers) == 2
    tokens = torch.randint(0, 40, (2, 10))
    _, cache = model.run_with_cache(tokens)
    got = ff(tokens)
    torch.testing.assert_close(got["blocks.1.hook_resid_mid"], cache["blocks.1.hook_resid_mid"], rtol=1e-5, atol=1e-5)
    assert torch.equal(got["hook_embed"], cache["hook_embed"])


@pytest.mark.parametrize("kw,hooks,why", [
    (dict(attn_scores_soft_cap=30.0), ["blocks.0.hook_resid_post"], "soft_cap"),
    (dict(positional_embedding_type="alibi"), ["blocks.0.hook_resid_post"], "alibi"),
    (dict(use_local_attn=True, attn_types=["local", "global"], window_size=4, n_layers=2), ["blocks.0.hook_resid_post"], "local"),
    (dict(act_fn="solu_ln"), ["blocks.0.hook_resid_post"], "solu_ln"),
    (dict(), ["blocks.0.ln1.hook_normalized"], "hook point"),
])
def test_unsupported_configs_fall_back_to_transformer_lens(kw, hooks, why):
    from training.runner import ActivationRunner
    from training.fast_forward import FastForward, NotSupported

    model = build(**kw)
    with pytest.raises(NotSupported, match=why):
        FastForward(model, hooks)
    runner = ActivationRunner(model, hooks)
    assert runner.fast is None and why in runner.fast_problem
    tokens = torch.randint(0, 40, (2, 8))
    _, cache = model.run_with_cache(tokens)
    assert runner.forward_used(8) == "transformer_lens"
    assert torch.equal(runner.run(tokens)[hooks[0]], cache[hooks[0]].reshape(2, 8, -1))
    with pytest.raises(ValueError, match="forward fast"):
        ActivationRunner(model, hooks, forward="fast")


def test_runner_uses_the_fast_forward_when_it_matches():
    from training import fast_forward
    from training.runner import ActivationRunner

    model = build(**CONFIGS["llama-like"])
    hooks = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]
    runner = ActivationRunner(model, hooks)
    calls = []
    real = fast_forward.FastForward.__call__
    runner.fast.__class__ = type("Counting", (fast_forward.FastForward,), {"__call__": lambda s, t: calls.append(1) or real(s, t)})
    tokens = torch.randint(0, 40, (2, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = runner.run(tokens)
    assert runner.forward_used(16) == "fast" and len(calls) == 2  # check batch + this batch
    _, cache = model.run_with_cache(tokens)
    for h in hooks:
        torch.testing.assert_close(out[h], cache[h], rtol=1e-5, atol=1e-5)


def test_runner_falls_back_with_a_warning_when_the_check_fails(monkeypatch):
    from training import fast_forward
    from training.runner import ActivationRunner, FastForwardMismatch

    real = fast_forward.FastForward.__call__

    def wrong(self, tokens):  # a subtly wrong fast path: one position of one hook off by 1%
        out = real(self, tokens)
        for h, a in out.items():
            a = a.clone()
            a[:, -1] *= 1.01
            out[h] = a
        return out

    monkeypatch.setattr(fast_forward.FastForward, "__call__", wrong)
    model = build()
    hook = "blocks.2.hook_resid_post"
    runner = ActivationRunner(model, [hook])
    tokens = torch.randint(0, 40, (2, 12))
    with pytest.warns(RuntimeWarning, match="differs from TransformerLens's at blocks.2.hook_resid_post"):
        out = runner.run(tokens)
    assert runner.forward_used(12) == "transformer_lens" and "differs" in runner.fast_problem
    _, cache = model.run_with_cache(tokens)
    assert torch.equal(out[hook], cache[hook])
    with pytest.raises(FastForwardMismatch, match="forward fast"):
        ActivationRunner(model, [hook], forward="fast").run(tokens)


def test_runner_uses_transformer_lens_while_hooks_are_attached():
    from training.runner import ActivationRunner

    model = build()
    hook = "blocks.1.hook_resid_post"
    runner = ActivationRunner(model, [hook])
    tokens = torch.randint(0, 40, (2, 10))
    assert runner.forward_used(10) == "fast"

    def zero_attn(act, hook):
        return torch.zeros_like(act)

    with model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", zero_attn)]):
        steered = runner.run(tokens)[hook]
        _, want = model.run_with_cache(tokens)
    assert torch.equal(steered, want[hook])
    plain = runner.run(tokens)[hook]
    assert (plain - steered).abs().max() > 1e-3  # the hook mattered, and is gone afterwards


def _interrupt_after(monkeypatch, n_batches):
    import training.cache as cache

    real = cache.fill_batch
    count = [0]

    def fill(*a, **k):
        count[0] += 1
        if count[0] > n_batches:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(cache, "fill_batch", fill)
    return lambda: monkeypatch.setattr(cache, "fill_batch", real)


def _small_build(tmp_path, *, n_docs: int, seed: int, contexts: int):
    """(model, text config, cfg(out, forward) -> CacheConfig) for a small cache of `contexts` contexts of 16 tokens."""
    from training.cache_config import CacheConfig
    from training.text import TextConfig

    corpus = tmp_path / "corpus"
    write_corpus(corpus, n_docs=n_docs, seed=seed, n_files=1)
    model = make_model(make_tokenizer(), d_model=32, n_layers=2, n_ctx=32, seed=0)
    text = TextConfig(dataset=str(corpus), context_length=16)

    def cfg(out, forward):
        return CacheConfig(out=str(tmp_path / out), hooks=["blocks.1.hook_resid_post"], shard_contexts=4,
                           batch_size=2, dtype="fp32", max_tokens=16 * contexts, forward=forward)

    return model, text, cfg


def test_manifest_records_the_forward_and_a_resume_keeps_it(tmp_path, monkeypatch):
    from training.cache import build_cache
    from training.manifest import read_manifest

    model, text, cfg = _small_build(tmp_path, n_docs=40, seed=3, contexts=16)

    build_cache(model, text, cfg("tl", "transformer_lens"), progress=False, log=None)
    build_cache(model, text, cfg("auto", "auto"), progress=False, log=None)
    assert read_manifest(tmp_path / "tl").forward == "transformer_lens"
    assert read_manifest(tmp_path / "auto").forward == "fast"
    from safetensors.torch import load_file

    def rows(d):
        return torch.cat([load_file(d / s.file)["acts/blocks.1.hook_resid_post"] for s in read_manifest(d).shards])

    a, b = rows(tmp_path / "tl"), rows(tmp_path / "auto")
    assert a.shape == b.shape and not torch.equal(a, b)  # rounding differs ...
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # ... nothing else

    # started with TransformerLens's forward, crashed, resumed under auto: keeps TL's, same bytes
    restore = _interrupt_after(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        build_cache(model, text, cfg("resumed", "transformer_lens"), progress=False, log=None)
    restore()
    man = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert man["forward"] == "transformer_lens" and not man["complete"]
    said = []
    build_cache(model, text, cfg("resumed", "auto"), progress=False, log=said.append)
    assert any("resuming with the transformer_lens forward" in s for s in said)
    for f in sorted(p.name for p in (tmp_path / "tl").iterdir()):
        assert (tmp_path / "tl" / f).read_bytes() == (tmp_path / "resumed" / f).read_bytes(), f


def test_a_manifest_from_before_the_forward_field_resumes_with_transformer_lens(tmp_path, monkeypatch):
    """Caches written before the fused forward existed have no `forward` in their manifest; all of
    their shards came from TransformerLens's forward, so a resume under auto must keep it."""
    from training.cache import build_cache

    model, text, cfg = _small_build(tmp_path, n_docs=30, seed=4, contexts=12)

    build_cache(model, text, cfg("whole", "transformer_lens"), progress=False, log=None)
    restore = _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build_cache(model, text, cfg("old", "transformer_lens"), progress=False, log=None)
    restore()
    man_path = tmp_path / "old" / "manifest.json"
    man = json.loads(man_path.read_text())
    del man["forward"]  # as an older saesteer wrote it
    man_path.write_text(json.dumps(man))
    said = []
    build_cache(model, text, cfg("old", "auto"), progress=False, log=said.append)
    assert any("resuming with the transformer_lens forward" in s for s in said)
    for f in sorted(p.name for p in (tmp_path / "whole").iterdir()):
        assert (tmp_path / "whole" / f).read_bytes() == (tmp_path / "old" / f).read_bytes(), f


def test_ungrouped_key_value_heads_fall_back_instead_of_failing():
    from training.runner import ActivationRunner

    model = build(n_key_value_heads=2, ungroup_grouped_query_attention=True)
    for hook in ("blocks.1.attn.hook_k", "blocks.1.attn.hook_v"):
        runner = ActivationRunner(model, [hook])
        assert runner.fast is None and "ungroup_grouped_query_attention" in runner.fast_problem
        tokens = torch.randint(0, 40, (2, 8))
        _, cache = model.run_with_cache(tokens)
        assert torch.equal(runner.run(tokens)[hook], cache[hook].reshape(2, 8, -1))
    assert ActivationRunner(model, ["blocks.1.attn.hook_q"]).forward_used(8) == "fast"  # q is not repeated


def test_a_failing_fast_forward_falls_back_in_auto_mode(monkeypatch):
    from training.runner import ActivationRunner, FastForwardMismatch

    model = build()
    hook = "blocks.1.hook_resid_post"
    runner = ActivationRunner(model, [hook])

    def broken(tokens):
        raise RuntimeError("shape mismatch inside the fast forward")

    monkeypatch.setattr(runner, "fast", broken)
    with pytest.warns(RuntimeWarning, match="failed on the check batch"):
        assert runner.forward_used(8) == "transformer_lens"
    strict = ActivationRunner(model, [hook], forward="fast")
    monkeypatch.setattr(strict, "fast", broken)
    with pytest.raises(FastForwardMismatch, match="RuntimeError"):
        strict.forward_used(8)


def test_plain_torch_module_hooks_also_route_batches_through_transformer_lens():
    from training.runner import ActivationRunner

    model = build()
    hook = "blocks.1.hook_resid_post"
    runner = ActivationRunner(model, [hook])
    tokens = torch.randint(0, 40, (2, 10))
    plain = runner.run(tokens)[hook]
    handle = model.blocks[0].mlp.register_forward_hook(lambda mod, inp, out: torch.zeros_like(out))
    try:
        hooked = runner.run(tokens)[hook]
        _, want = model.run_with_cache(tokens)
    finally:
        handle.remove()
    assert torch.equal(hooked, want[hook]) and (plain - hooked).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# HF checkpoints (loaded as a TransformerBridge, as `saesteer.models.load_model` does)


def save_tiny_hf(directory, kind: str, **extra):
    """A random tiny `<kind>ForCausalLM` (GPT-2: GPT2LMHeadModel) + tokenizer written locally; norms and
    biases randomised."""
    import transformers

    from helpers.tiny_hf import build_bpe_tokenizer

    tok = build_bpe_tokenizer()
    sizes = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    if kind != "GPT2":  # GPT-2 has no grouped heads (TransformerLens would read the key as GQA) and sizes its MLP as 4 D
        sizes.update(intermediate_size=48, num_key_value_heads=2)
    cfg = getattr(transformers, kind + "Config")(**sizes, **extra)
    torch.manual_seed(0)
    model = getattr(transformers, "GPT2LMHeadModel" if kind == "GPT2" else kind + "ForCausalLM")(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:  # GPT-2 calls its norms ln_1 / ln_2 / ln_f
                p.normal_(1, 0.2)
            elif name.endswith("bias"):
                p.normal_(0, 0.2)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


HF_HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid",
            "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
HF_MODELS = {
    "gpt2": None,
    "gpt2-random-norms": ("GPT2", {}),  # GPT-2's own init has unit norms and zero biases: folding them changes nothing
    "llama-gqa": ("Llama", {}),
    "llama3-rope-scaling": ("Llama", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2-qkv-bias": ("Qwen2", {}),
}


def save_hf(tmp_path, name):
    spec = HF_MODELS[name]
    if spec is None:
        from helpers.tiny_hf import save_tiny_gpt2

        return save_tiny_gpt2(tmp_path / name)
    return save_tiny_hf(tmp_path / name, spec[0], **spec[1])


def load_hf(tmp_path, name, process_weights=False):
    from saesteer.models import load_model

    model = load_model(str(save_hf(tmp_path, name)), process_weights=process_weights)
    assert type(model).__name__ == "TransformerBridge"
    return model


@pytest.mark.parametrize("process_weights", [False, True], ids=["raw", "processed"])
@pytest.mark.parametrize("name", list(HF_MODELS))
def test_fast_forward_equals_the_bridge_on_hf_checkpoints(tmp_path, name, process_weights):
    """Raw and processed (--process-weights: fold_ln, centred writing weights, folded value biases)
    weights. On GPT-2 the Bridge runs its own split q / k / v copies of c_attn, and processing
    replaces those (ln_1 folded in) while c_attn stays raw: the fast forward must read the copies."""
    from training.runner import ActivationRunner

    model = load_hf(tmp_path, name, process_weights)
    runner = ActivationRunner(model, HF_HOOKS)
    assert runner.fast is not None and runner.forward_used(24) == "fast", runner.fast_problem
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 24), generator=torch.Generator().manual_seed(2))
    want = runner._run_tl(tokens)
    got = runner.fast(tokens)
    for h in HF_HOOKS:
        err = (got[h] - want[h]).abs().max().item()
        assert err <= 2e-5 * want[h].abs().max().item(), f"{name} {h}: max abs diff {err:.3g}"


def test_the_cache_command_keeps_the_fast_forward_on_a_processed_gpt2(tmp_path, capsys):
    from helpers.tiny_hf import _TEXT
    from saesteer.cli import main
    from training.manifest import read_manifest

    path = save_hf(tmp_path, "gpt2-random-norms")
    text = tmp_path / "text.txt"
    text.write_text("\n".join(_TEXT * 4), encoding="utf-8")
    capsys.readouterr()
    assert main(["cache", "--model", str(path), "--process-weights", "--dataset", str(text), "--context-length", "16",
                 "--max-tokens", "128", "--hooks", "blocks.1.hook_resid_post", "--out", str(tmp_path / "cache"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    manifest = read_manifest(tmp_path / "cache")
    assert manifest.model_identity["weights"] == "processed"
    assert manifest.forward == "fast" and "TransformerLens's forward instead" not in err, err


def test_an_hf_model_keeps_the_fast_forward_after_its_first_bridge_forward(tmp_path):
    """The Bridge and transformers leave capture hooks on the HF modules after a forward (the
    check's); they must not send every later batch through the Bridge, while real hooks still do."""
    from training import fast_forward
    from training.runner import ActivationRunner

    model = load_hf(tmp_path, "gpt2")
    hook = "blocks.1.hook_resid_post"
    runner = ActivationRunner(model, [hook])
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 16), generator=torch.Generator().manual_seed(1))
    assert runner.forward_used(16) == "fast"  # the check ran the Bridge's forward once
    assert any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # what it left behind
    calls = []
    real = fast_forward.FastForward.__call__
    runner.fast.__class__ = type("Counting", (fast_forward.FastForward,), {"__call__": lambda s, t: calls.append(1) or real(s, t)})
    plain = runner.run(tokens)[hook]
    assert len(calls) == 1
    with model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", lambda act, hook: torch.zeros_like(act))]):
        steered = runner.run(tokens)[hook]
    assert len(calls) == 1 and (plain - steered).abs().max() > 1e-3  # a real hook: the Bridge's forward


def test_hf_fallbacks(tmp_path):
    from saesteer.models import load_model
    from training.runner import ActivationRunner

    mistral = load_model(str(save_tiny_hf(tmp_path / "mistral", "Mistral", sliding_window=8)))
    runner = ActivationRunner(mistral, ["blocks.1.hook_resid_post"])
    assert runner.forward_used(8) == "fast"  # within the window, plain causal attention
    with pytest.warns(RuntimeWarning, match="sliding window"):
        assert runner.forward_used(16) == "transformer_lens"
    neox = load_model(str(save_tiny_hf(tmp_path / "neox", "GPTNeoX")))
    runner = ActivationRunner(neox, ["blocks.1.hook_resid_post"])
    assert runner.fast is None and "GPTNeoXForCausalLM" in runner.fast_problem
    assert runner.forward_used(8) == "transformer_lens"


def test_the_check_sees_an_error_hidden_behind_a_huge_bos_activation(monkeypatch):
    """max |diff| <= 1e-4 x max |act| passes when BOS is 1e5x the other tokens; the per-token check must not."""
    from training.runner import ActivationRunner

    model = build()
    hook = "blocks.1.hook_resid_post"
    runner = ActivationRunner(model, [hook])
    L = 8
    ref = runner._run_tl(runner._probe(L))
    ref[hook] = ref[hook].clone()
    ref[hook][:, 0] *= 1e5  # an outsized BOS activation, as LLaMA-style models have
    wrong = ref[hook].clone()
    wrong[:, 5] *= 1.01  # 1% off at one ordinary token
    monkeypatch.setattr(runner, "_run_tl", lambda tokens: {hook: ref[hook]})
    monkeypatch.setattr(runner, "fast", lambda tokens: {hook: wrong})
    with pytest.warns(RuntimeWarning, match="worst token"):
        assert runner.forward_used(L) == "transformer_lens"


def test_the_check_allows_the_rounding_of_tf32_products_when_they_may_round_so(monkeypatch):
    """On a GPU with TF32 allowed, TransformerLens's float32 forward and the fast one each round their
    products' inputs to 10 bits: activations differ by about 1e-3, and the float32 tolerance (1e-4)
    sent every such cache to the slower forward. The tolerance is now the one of the rounding in force
    (float16's under TF32; faked on the CPU, which has no TF32, by giving the check CUDA's rounding
    under set_float32_matmul_precision('high'))."""
    import training.runner
    from saes.precision import matmul_rounding
    from training.runner import FAST_CHECK_TOLERANCE, ActivationRunner

    monkeypatch.setattr(training.runner, "matmul_rounding", lambda dtype, device: matmul_rounding(dtype, "cuda"))
    model = build()
    hook = "blocks.1.hook_resid_post"
    runner = ActivationRunner(model, [hook])
    ref = runner._run_tl(runner._probe(8))
    off = {hook: ref[hook] * (1 + 3e-3)}  # as far apart as TF32 products leave two forwards
    assert FAST_CHECK_TOLERANCE[torch.float32] < 3e-3 < FAST_CHECK_TOLERANCE[torch.float16]
    assert "differs" in runner._difference(off, ref)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        assert runner._difference(off, ref) is None
        assert "differs" in runner._difference({hook: ref[hook] * 1.03}, ref)  # still a check
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_cache_packed_before_the_one_separator_rule_resumes_as_it_was_packed(tmp_path, monkeypatch):
    """Caches made with bos_policy "doc" and separator "eos" by a tokenizer whose BOS is its EOS
    (GPT-2, Pythia, OPT) before `eos_is_next_bos` existed wrote an EOS after every document and
    record no rule. No flag chooses the rule, so a resume takes it from the manifest (absent: the
    old one) and the finished cache is the one an uninterrupted old build gives, byte for byte."""
    import training.packing as packing
    import training.plan as plan
    from training.cache import build_cache
    from training.manifest import read_manifest
    from training.text import TextConfig

    model, _, cfg = _small_build(tmp_path, n_docs=30, seed=5, contexts=12)
    model.tokenizer.bos_token = model.tokenizer.eos_token  # BOS is EOS, as GPT-2's <|endoftext|>
    text = TextConfig(dataset=str(tmp_path / "corpus"), context_length=16, bos_policy="doc", separator="eos")
    assert packing.eos_is_next_bos(text, packing.special_tokens(model.tokenizer))

    def as_before(out):  # what the old code wrote: an EOS after every document, no record
        man_path = tmp_path / out / "manifest.json"
        man = json.loads(man_path.read_text())
        del man["eos_is_next_bos"]
        man_path.write_text(json.dumps(man))

    for module in (packing, plan):
        monkeypatch.setattr(module, "eos_is_next_bos", lambda cfg, specials: False)  # the old rule
    build_cache(model, text, cfg("whole", "transformer_lens"), progress=False, log=None)
    as_before("whole")
    restore = _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build_cache(model, text, cfg("old", "transformer_lens"), progress=False, log=None)
    restore()
    as_before("old")
    monkeypatch.undo()  # the rule now: one <|endoftext|> between documents
    build_cache(model, text, cfg("old", "transformer_lens"), progress=False, log=None)
    assert read_manifest(tmp_path / "old").complete
    assert read_manifest(tmp_path / "old").settings["eos_is_next_bos"] is False
    for f in sorted(p.name for p in (tmp_path / "whole").iterdir() if p.name != "manifest.json"):
        assert (tmp_path / "whole" / f).read_bytes() == (tmp_path / "old" / f).read_bytes(), f
    new = build_cache(model, text, cfg("new", "transformer_lens"), progress=False, log=None)
    assert new.manifest.settings["eos_is_next_bos"] is True  # a new cache packs by the rule
