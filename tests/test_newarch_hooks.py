"""The hook points users pick, on the late-2026 architectures of tests/helpers/real_models.py
(`save_arch_model`): resid_pre / resid_post, attn hook_z, hook_mlp_out and an MLP's hidden
activations exist where the architecture has them, with the widths their names promise, and are
refused with a message saying what to use where it does not (GPT-J's parallel attention has no
resid_mid; a mixture-of-experts block has no single hidden layer of neurons).

The MoE case was a silent wrong result: TransformerBridge maps `blocks.L.mlp.hook_post` of Mixtral, gpt-oss,
Qwen3-MoE and OLMoE to the whole expert block's output (and `mlp.hook_pre` to its input), so
`saesteer cache --hooks blocks.0.mlp.hook_post` cached d_model-wide MLP outputs (the same values
as hook_mlp_out) for an SAE meant to read the MLP's neurons, and said nothing.
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

ARCHS = ("mixtral", "qwen3_moe", "olmoe", "gpt_oss", "llama3_1", "phi3", "gptj", "gemma3", "gemma4", "granite",
         "starcoder2")
MOE = ("mixtral", "qwen3_moe", "olmoe", "gpt_oss")
COMMON = ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.0.hook_mlp_out")


@pytest.fixture(scope="module")
def tok(real_corpus):
    from helpers.real_models import build_family_tokenizer

    return build_family_tokenizer("llama", real_corpus.train_docs, vocab_size=512)


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory, tok):
    from helpers.real_models import arch_models

    return arch_models(tmp_path_factory.mktemp("newarch-hooks"), tok)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_hooks_users_pick_have_the_widths_their_names_promise(arch, arch_dirs, tok):
    from saes.hookpoints import UnknownHookError, check_hook
    from saesteer.models import load_model

    model = load_model(str(arch_dirs(arch)), device="cpu")
    ids = torch.tensor([tok("def f(x):\n    return x  # caf\u00e9 \u6771\u4eac")["input_ids"]])
    names = [*COMMON] + ([] if arch in MOE else ["blocks.0.mlp.hook_post"])
    for name in names:
        check_hook(model, name)
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=names)
    assert {n: cache[n].shape[-1] for n in COMMON} == {**{n: 64 for n in COMMON}, "blocks.0.attn.hook_z": 16}
    assert cache["blocks.0.attn.hook_z"].shape[-2] == 4  # 4 query heads (2 key/value heads where GQA)
    if arch in MOE:
        for name in ("blocks.0.mlp.hook_post", "blocks.0.mlp.hook_pre"):
            with pytest.raises(UnknownHookError, match="mixture of experts"):
                check_hook(model, name)
    else:
        assert cache["blocks.0.mlp.hook_post"].shape[-1] == 128  # d_mlp
    if arch == "gptj":  # attention and MLP read the same input: no residual stream between them
        with pytest.raises(UnknownHookError, match="in parallel.*blocks.1.hook_resid_pre"):
            check_hook(model, "blocks.1.hook_resid_mid")


@pytest.mark.parametrize("which, use", [("post", "blocks.0.hook_mlp_out"), ("pre", "blocks.0.mlp.hook_in")])
def test_cache_refuses_an_moe_blocks_neuron_hooks_naming_what_to_use(which, use, arch_dirs, real_corpus, tmp_path):
    """`saesteer cache --hooks blocks.0.mlp.hook_post` on Mixtral: refused in one line naming the hook
    that holds what the Bridge would have cached; the hook it names caches (tests/test_rvnew_moe_hooks.py
    checks the values)."""
    model_dir = arch_dirs("mixtral")
    r = saesteer("cache", "--model", model_dir, "--dataset", real_corpus.jsonl_dir, "--context-length", 32,
                 "--max-tokens", 128, "--hooks", f"blocks.0.mlp.hook_{which}", "--out", tmp_path / "c", "--no-progress")
    assert r.rc != 0 and "mixture of experts" in r.text and use in r.text, r.text
    r.no_traceback()
    assert not (tmp_path / "c" / "manifest.json").exists()
    saesteer("cache", "--model", model_dir, "--dataset", real_corpus.jsonl_dir, "--context-length", 32,
             "--max-tokens", 128, "--hooks", use, "--out", tmp_path / "ok", "--no-progress").ok()
    assert json.loads((tmp_path / "ok" / "manifest.json").read_text())["d_in"] == {use: 64}
