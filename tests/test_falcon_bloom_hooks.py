"""SAEs named by Falcon's and Bloom's HF module paths (`h.N.self_attention`, `h.N.mlp`,
`h.N.input_layernorm`, as sparsify names its hookpoints): the table of HF module -> hook point
(`saes.formats.base._MODULE_HOOKS`) had no row for `self_attention` nor `input_layernorm`, so such an SAE
got no hook. Each now loads at the hook that holds exactly what the module outputs on the model,
as TransformerBridge runs it: on Bloom, whose attention and MLP modules add the residual stream
themselves, that is the module's own output hook, not hook_attn_out / hook_mlp_out."""

from __future__ import annotations

import pytest
import torch

from helpers import foreign_saes as fs
from helpers.forwards import read_at_hook

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

TEXT = "Le caf\u00e9 ouvre \u00e0 sept heures.\ndef parse(args):\n    return args  # \u6771\u4eac\u306e\u5929\u6c17"
CASES = [  # (architecture, sparsify hookpoint, the hook it loads at)
    ("falcon", "h.1.self_attention", "blocks.1.hook_attn_out"),
    ("falcon", "h.1.mlp", "blocks.1.hook_mlp_out"),  # parallel: the MLP's own output, before attention's is added
    ("falcon", "h.1.input_layernorm", "blocks.1.ln1.hook_out"),
    ("falcon_seq", "h.1.self_attention", "blocks.1.hook_attn_out"),
    ("falcon_seq", "h.1.mlp", "blocks.1.hook_mlp_out"),
    ("bloom", "h.1.self_attention", "blocks.1.attn.hook_out"),  # attention + residual: resid_mid
    ("bloom", "h.1.mlp", "blocks.1.mlp.hook_out"),  # MLP + residual: resid_post
    ("bloom", "h.1.input_layernorm", "blocks.1.ln1.hook_out"),
]


@pytest.fixture(scope="module")
def models(real_corpus, tmp_path_factory):
    """`path(arch)`: a tiny checkpoint of `arch` (norm gains far from 1), built when first asked for."""
    from helpers.real_models import arch_models, build_family_tokenizer

    tok = build_family_tokenizer("gpt2", real_corpus.train_docs, 600)
    return arch_models(tmp_path_factory.mktemp("falconbloom"), tok, trained_norms=True)


def _hf_module_output(model_dir, hookpoint: str, tokens: torch.Tensor) -> torch.Tensor:
    """What sparsify's forward hook reads: the module's output (its first element), as it is at that
    moment (Falcon adds attention's output into the MLP's in place afterwards)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    got = {}

    def keep(module, args, out):  # noqa: ARG001 - a forward hook's signature; returns None (changes nothing)
        got["x"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    handle = hf.base_model.get_submodule(hookpoint).register_forward_hook(keep)
    with torch.no_grad():
        hf(tokens)
    handle.remove()
    return got["x"]


@pytest.mark.parametrize("arch,hookpoint,want", CASES, ids=[f"{a}-{h}" for a, h, _ in CASES])
def test_a_sparsify_sae_on_a_falcon_or_bloom_module_reads_its_output(models, arch, hookpoint, want, tmp_path):
    model_dir = models(arch)
    bridge, tokens, hook = fs.random_sparsify_on_bridge(model_dir, hookpoint, tmp_path / "run", TEXT)
    assert hook == want
    torch.testing.assert_close(read_at_hook(bridge, hook, tokens), _hf_module_output(model_dir, hookpoint, tokens),
                               rtol=1e-4, atol=1e-5)


def test_check_hook_names_the_hook_of_a_typed_bloom_module(models):
    from saes.hookpoints import UnknownHookError, check_hook
    from saesteer.models import load_model

    with pytest.raises(UnknownHookError, match=r"the output of the HF module transformer\.h\.1\.self_attention is "
                                               r"blocks\.1\.attn\.hook_out\."):
        check_hook(load_model(str(models("bloom")), device="cpu"), "transformer.h.1.self_attention")


def test_a_falcon_of_the_new_decoder_architecture_is_refused_in_one_line(real_corpus, tmp_path):
    """Falcon-40B's / Falcon2-11B's layout: TransformerLens's adapter failed splitting its fused
    query_key_value, which the CLI said as a saesteer bug (an unexpected RuntimeError)."""
    import transformers

    from helpers.real_cli import saesteer
    from helpers.real_models import build_family_tokenizer

    tok = build_family_tokenizer("gpt2", real_corpus.train_docs, 600)
    cfg = transformers.FalconConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    new_decoder_architecture=True, num_kv_heads=2)
    transformers.FalconForCausalLM(cfg).save_pretrained(tmp_path / "falcon40b")
    tok.save_pretrained(tmp_path / "falcon40b")
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    r = saesteer("cache", "--model", tmp_path / "falcon40b", "--dataset", tmp_path / "text.txt", "--hooks",
                 "blocks.0.hook_resid_post", "--out", tmp_path / "cache", "--no-progress").no_traceback()
    assert r.rc == 2 and len(r.err.strip().splitlines()) == 1, r.text
    assert "new decoder architecture" in r.err and "TransformerLens's Falcon adapter cannot load" in r.err
