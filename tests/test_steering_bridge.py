"""Steering an HF model loaded through TransformerBridge (a tiny local GPT-2): positions are
read from the HF block's 4-d attention mask / cache, so they stay exact under the KV cache and
left padding there too."""

import pytest
import torch

import saes
from helpers.steering_fixtures import torch_threads
from steering import FeatureEdit, GenerationConfig, generate, hooks_attached, steer

PROMPTS = ["hello world there", "a", "the cat sat on the mat"]
GREEDY = GenerationConfig(max_new_tokens=5, do_sample=False, stop_at_eos=False)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    from helpers.tiny_hf import save_tiny_gpt2
    from saesteer.models import load_model

    path = tmp_path_factory.mktemp("gpt2") / "tiny-gpt2"
    save_tiny_gpt2(path)
    with torch_threads(1):
        yield load_model(str(path))


@pytest.fixture(scope="module")
def sae():
    g = torch.Generator().manual_seed(0)
    s = saes.create_sae("jumprelu", 32, 64, generator=g, metadata={"hook_name": "blocks.0.hook_resid_post"})
    with torch.no_grad():
        s.threshold.fill_(0.05)
    return s


def test_bridge_positions_cache_padding(bridge, sae):
    with torch_threads(1):
        base = generate(bridge, PROMPTS, GREEDY)
        for pos in ["generated", "last", (1, -1)]:
            with steer(bridge, sae, [FeatureEdit(3, "clamp", 30.0, positions=pos)]) as s:
                a = s.generate(PROMPTS, GREEDY)
                b = s.generate(PROMPTS, GREEDY, use_past_kv_cache=False)
                single = s.generate(PROMPTS[1:2], GREEDY)
            assert torch.equal(a.tokens, b.tokens), pos
            assert torch.equal(a.new_tokens[1], single.new_tokens[0]), pos  # the padded row
            assert not torch.equal(a.tokens, base.tokens), pos
        toks = bridge.to_tokens(PROMPTS, padding_side="left")
        with torch.no_grad():
            l0 = bridge(toks, padding_side="left")
            with steer(bridge, sae, ["3:add=0", "4:scale=1"]):
                assert torch.equal(bridge(toks, padding_side="left"), l0)
    assert hooks_attached(bridge) == []
