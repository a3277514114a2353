"""What a refused hook's message tells the user to use instead holds what they asked for, on the
architectures where the obvious name holds something else (tiny checkpoints with trained-looking norm
gains, tests/helpers/real_models.py `save_arch_model(..., trained_norms=True)`):

- a mixture-of-experts block's `mlp.hook_pre` / `mlp.hook_post` (TransformerBridge's names for the whole
  block's input and output there) are refused naming the hook that holds the HF block's own input and
  output: not `ln2.hook_normalized` (taken before the norm's gain), and not `hook_mlp_out` where the
  layer norms (FlexOlmo: OLMo-2's post-norm) or scales (Granite-MoE) the block's output first;
- `hook_resid_mid` where attention and MLP run in parallel (GPT-J) is refused saying why.
"""

from __future__ import annotations

import re

import pytest
import torch

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

TEXT = "def f(x):\n    return x  # caf\u00e9 \u6771\u4eac, na\u00efve r\u00e9sum\u00e9"


@pytest.fixture(scope="module")
def tok(real_corpus):
    from helpers.real_models import build_family_tokenizer

    return build_family_tokenizer("llama", real_corpus.train_docs, vocab_size=512)


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory, tok):
    from helpers.real_models import arch_models

    return arch_models(tmp_path_factory.mktemp("rvnew-hooks"), tok, trained_norms=True)


def _hf_block_io(model_dir, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and output of HF's own mixture-of-experts module of layer 0."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    layer = hf.model.layers[0]
    moe = layer.mlp if hasattr(layer, "mlp") else layer.block_sparse_moe  # Granite-MoE's name
    seen = {}

    def grab(module, args, output):
        seen["in"], seen["out"] = args[0], output[0] if isinstance(output, tuple) else output

    handle = moe.register_forward_hook(grab)
    try:
        with torch.no_grad():
            hf(ids)
    finally:
        handle.remove()
    return seen["in"], seen["out"]


@pytest.mark.parametrize("arch", ["mixtral", "flex_olmo", "granitemoe"])
def test_an_moe_blocks_refused_neuron_hooks_name_the_hook_holding_the_blocks_input_and_output(arch, arch_dirs, tok):
    from saes.hookpoints import UnknownHookError, check_hook
    from saesteer.models import load_model

    model = load_model(str(arch_dirs(arch)), device="cpu")
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    named = {}
    for which in ("pre", "post"):
        with pytest.raises(UnknownHookError, match="mixture of experts") as refused:
            check_hook(model, f"blocks.0.mlp.hook_{which}")
        message = str(refused.value)
        assert "\n" not in message
        named[which] = re.search(r"; use (\S+) for the block", message).group(1)
        check_hook(model, named[which])
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=list(named.values()))
    want_in, want_out = _hf_block_io(arch_dirs(arch), ids)
    for which, want in (("pre", want_in), ("post", want_out)):
        got = cache[named[which]]
        assert torch.allclose(got, want, atol=1e-5), \
            f"{arch}: {named[which]} (named for mlp.hook_{which}) differs from HF's by {(got - want).abs().max():.2e}"


def test_an_interleaved_moe_stacks_dense_layer_keeps_its_neuron_hooks(arch_dirs, tok):
    """Qwen2-MoE with a dense MLP in layer 0 (`mlp_only_layers`, as DeepSeek's first layers): there
    mlp.hook_pre / hook_post are its neurons (d_mlp wide), accepted; layer 1's experts are refused."""
    from saes.hookpoints import UnknownHookError, check_hook
    from saesteer.models import load_model

    model = load_model(str(arch_dirs("qwen2_moe")), device="cpu")
    dense = ["blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post"]
    for name in dense:
        check_hook(model, name)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([tok(TEXT)["input_ids"]]), names_filter=dense)
    assert [cache[n].shape[-1] for n in dense] == [128, 128]
    with pytest.raises(UnknownHookError, match="mixture of experts"):
        check_hook(model, "blocks.1.mlp.hook_post")


def test_resid_mid_on_parallel_attention_is_refused_saying_why(arch_dirs, real_corpus, tmp_path):
    """GPT-J's attention and MLP both read the block's input: `saesteer cache --hooks blocks.1.hook_resid_mid`
    is refused in one line saying so and naming the hooks around the block."""
    r = saesteer("cache", "--model", arch_dirs("gptj"), "--dataset", real_corpus.jsonl_dir, "--context-length", 32,
                 "--max-tokens", 64, "--hooks", "blocks.1.hook_resid_mid", "--out", tmp_path / "c", "--no-progress")
    assert r.rc != 0 and "in parallel" in r.text, r.text
    assert "blocks.1.hook_resid_pre" in r.text and "blocks.1.hook_resid_post" in r.text, r.text
    r.no_traceback()


def test_resid_mid_on_a_sequential_block_is_kept(arch_dirs):
    from saes.hookpoints import check_hook
    from saesteer.models import load_model

    assert check_hook(load_model(str(arch_dirs("llama3_1")), device="cpu"), "blocks.1.hook_resid_mid")
