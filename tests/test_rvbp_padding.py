"""Review of batched generation's padding warning (`steering.generation._hooked_padding`): it speaks
only of prompts whose start TransformerLens hides, never of the toy model's prompts (its pad is a
token of its own) nor of prompts that start with the one BOS it keeps."""

from __future__ import annotations

import warnings

import pytest

pytestmark = [pytest.mark.usefixtures("one_thread")]


def test_toy_model_prompts_batched_alone_and_steered_raise_no_padding_warning():
    """The toy HookedTransformer (<pad> 0, <bos> 1): every prompt of the steering tests, the empty
    one too, with and without BOS, batched, alone and steered, greedy and sampled: no warning, and
    a batched row equals the prompt alone (greedy)."""
    from helpers.steering_fixtures import PROMPTS, random_sae, tiny_model
    from steering import GenerationConfig, generate, steer
    from steering.spec import SteeringWarning

    model = tiny_model()
    prompts = [*PROMPTS, ""]
    sae = random_sae(model, hook="blocks.1.hook_resid_post", d_sae=32, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SteeringWarning)
        for bos in (None, False):
            cfg = GenerationConfig(max_new_tokens=4, do_sample=False, stop_at_eos=False, prepend_bos=bos)
            together = generate(model, prompts, cfg)
            for i, p in enumerate(prompts):
                assert together.texts[i] == generate(model, [p], cfg).texts[0], (bos, p)
            generate(model, prompts, cfg, do_sample=True, freq_penalty=0.5)
            with steer(model, sae, ["3:add=5@0"]) as s:
                s.generate(prompts, cfg)
