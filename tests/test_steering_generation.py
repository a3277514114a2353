"""Steering during generation: exact under the KV cache, left padding and batching; seeded."""

import pytest
import torch

from helpers.steering_fixtures import PROMPTS, torch_threads, random_sae, tiny_model
from steering import FeatureEdit, GenerationConfig, VectorEdit, compare, generate, hooks_attached, steer

GREEDY = GenerationConfig(max_new_tokens=8, do_sample=False, stop_at_eos=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def planted(model):
    """An SAE on the last layer whose latent 11 writes the unembedding direction of 'whale'."""
    last = model.cfg.n_layers - 1
    sae = random_sae(model, "jumprelu", hook=f"blocks.{last}.hook_resid_post")
    whale = model.tokenizer.convert_tokens_to_ids("whale")
    with torch.no_grad():
        u = model.W_U[:, whale]
        sae.W_dec[11] = u / u.norm()
    return sae, whale


def test_generated_tokens_are_steered_under_the_kv_cache(model, planted):
    sae, whale = planted
    base = generate(model, PROMPTS, GREEDY)
    with steer(model, sae, [FeatureEdit(11, "add", 40.0, positions="generated")]) as s:
        cached = s.generate(PROMPTS, GREEDY)
        uncached = s.generate(PROMPTS, GREEDY, use_past_kv_cache=False)
    assert torch.equal(cached.tokens, uncached.tokens)
    new = cached.new_tokens
    # the first new token is predicted from the (unsteered) prompt; every later one is steered
    assert torch.equal(new[:, 0], base.new_tokens[:, 0])
    assert (new[:, 1:] == whale).all()
    assert not (base.new_tokens[:, 1:] == whale).all()
    assert hooks_attached(model) == []


@pytest.mark.parametrize(
    "positions, arch",
    [("generated", "jumprelu"), ("prompt", "topk"), ("all", "matryoshka_batchtopk"), ("last", "topk"),
     ((1, -2), "jumprelu"), ((0, 9), "topk")],
)
def test_cache_and_no_cache_agree(model, positions, arch):
    sae = random_sae(model, arch, hook="blocks.0.hook_resid_post", seed=4)
    edits = [FeatureEdit(3, "clamp", 6.0, positions=positions), FeatureEdit(5, "add", 4.0, positions=positions)]
    base = generate(model, PROMPTS, GREEDY)
    with steer(model, sae, edits) as s:
        a = s.generate(PROMPTS, GREEDY)
        b = s.generate(PROMPTS, GREEDY, use_past_kv_cache=False)
        # plain TransformerLens generate inside the block: positions are inferred from the cache / lengths
        c = model.generate(PROMPTS, max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False,
                           return_type="tokens")
        d = model.generate(PROMPTS, max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False,
                           return_type="tokens", use_past_kv_cache=False)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.tokens, c)
    assert torch.equal(a.tokens, d)
    assert not torch.equal(a.tokens, base.tokens)  # the edit had an effect


def test_batched_equals_one_prompt_at_a_time(model):
    sae = random_sae(model, "jumprelu", hook="blocks.0.hook_resid_post", seed=5)
    edits = [FeatureEdit(3, "clamp", 6.0, positions=(1, -1)), FeatureEdit(9, "add", 3.0, positions="generated")]
    with steer(model, sae, edits) as s:
        batch = s.generate(PROMPTS, GREEDY)
        singles = [s.generate([p], GREEDY) for p in PROMPTS]
    for i, one in enumerate(singles):
        assert batch.texts[i] == one.texts[0]
        assert torch.equal(batch.new_tokens[i], one.new_tokens[0])


def test_sampling_is_reproducible_with_a_seed(model):
    sae = random_sae(model)
    cfg = GenerationConfig(max_new_tokens=12, do_sample=True, seed=7, stop_at_eos=False)
    with steer(model, sae, ["3:add=2"]) as s:
        a = s.generate(PROMPTS, cfg)
        b = s.generate(PROMPTS, cfg)
        c = s.generate(PROMPTS, cfg, seed=8)
    assert a.texts == b.texts
    assert a.texts != c.texts
    state = torch.random.get_rng_state()
    generate(model, PROMPTS, cfg)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone


def test_compare_gives_both_sides_with_the_same_seed(model, planted):
    sae, _ = planted
    cfg = GenerationConfig(max_new_tokens=6, seed=1, stop_at_eos=False)
    cmp = compare(model, sae, ["11:add=40@generated"], PROMPTS[:2], cfg)
    assert len(cmp.steered) == len(cmp.unsteered) == 2
    assert all("whale" in t for t in cmp.steered)
    assert cmp.unsteered == generate(model, PROMPTS[:2], cfg).texts
    assert cmp.edits == "11:add=40@generated"


def test_vector_edit_during_generation(model, planted):
    _, whale = planted
    last = model.cfg.n_layers - 1
    u = model.W_U[:, whale].detach()
    with steer(model, None, [VectorEdit(f"blocks.{last}.hook_resid_post", u / u.norm(), 40.0, positions="generated")]) as s:
        out = s.generate(PROMPTS, GREEDY)
    assert (out.new_tokens[:, 1:] == whale).all()


@pytest.mark.parametrize("field, value", [
    ("freq_penalty", float("inf")), ("freq_penalty", float("nan")), ("freq_penalty", "0.5"),
    ("temperature", float("nan")), ("temperature", 0.0), ("temperature", float("inf")),
    ("top_p", float("nan")), ("top_p", 1.5), ("top_k", 0), ("top_k", True), ("max_new_tokens", 0),
])
def test_bad_generation_settings_are_refused_naming_the_field(field, value):
    from steering import SteeringError

    with pytest.raises(SteeringError, match=field) as e:
        GenerationConfig(**{field: value})
    assert e.value.field == field  # the CLI turns it into the flag


def test_an_overlong_prompt_is_refused_with_its_real_length(model):
    from steering import SteeringError

    n_ctx = model.cfg.n_ctx
    long_prompt = " ".join(["the whale"] * n_ctx)  # ~2 * n_ctx tokens before any truncation
    real = int(model.to_tokens(long_prompt, truncate=False).shape[1])
    assert real > n_ctx
    with pytest.raises(SteeringError, match=rf"the prompt \({real} tokens\) \+ max_new_tokens \(8\)") as e:
        generate(model, long_prompt, GREEDY)
    assert f"shorten the prompt to at most {n_ctx - 8} tokens" in str(e.value)
    short = int(model.to_tokens(PROMPTS[0]).shape[1])
    with pytest.raises(SteeringError, match=rf"ask for at most {n_ctx - short} new tokens"):
        generate(model, PROMPTS[0], GREEDY, max_new_tokens=n_ctx)


def test_positions_beyond_every_sequence_are_refused_and_partly_beyond_warned(model, planted):
    from steering import SteeringError, SteeringWarning

    sae, _ = planted
    longest = max(int(model.to_tokens(p).shape[1]) for p in PROMPTS)
    with steer(model, sae, FeatureEdit(11, "clamp", 8.0, positions=(999,))) as s:
        with pytest.raises(SteeringError, match=r"11:clamp=8@999: token position\(s\) 999 lie beyond every sequence"):
            s.generate(PROMPTS, GREEDY)
    with steer(model, sae, FeatureEdit(11, "clamp", 8.0, positions=(-999,))) as s:
        with pytest.raises(SteeringError, match="beyond every sequence"):
            s.generate(PROMPTS, GREEDY)
    last = longest + GREEDY.max_new_tokens - 1  # the last generated token of the longest row
    with steer(model, sae, FeatureEdit(11, "clamp", 8.0, positions=(last,))) as s:
        s.generate(PROMPTS, GREEDY)  # reachable: no error
    with steer(model, sae, FeatureEdit(11, "clamp", 8.0, positions=(0, last + 1))) as s:
        with pytest.warns(SteeringWarning, match=rf"position\(s\) {last + 1} lie beyond every sequence"):
            s.generate(PROMPTS, GREEDY)
    assert hooks_attached(model) == []


def _tokenizer(name):
    from helpers import text_tokenizers

    if name == "toy_words":
        from toyworld.tokenizer import load_tokenizer

        return load_tokenizer()
    return getattr(text_tokenizers, name)()


CONTINUED = {  # texts cut at every token: the prompt is the head, the continuation the rest
    "byte_level_bpe": ["def main(self):\n    return self.value  # done\n\n", "The sea is deep, and the ship sails on."],
    "sentencepiece_bpe": ["def main(self):\n    return self.value  # done\n", "The sea is deep, and the ship sails on."],
    "toy_words": ["the sailor sees a whale .", "did the old owl fly over the sea ?"],
}


@pytest.mark.parametrize("name", list(CONTINUED))
def test_a_continuation_reads_on_from_the_prompt_exactly(name):
    """prompt text + continuation == the tokenizer's decoding of prompt and new tokens together:
    a code continuation keeps its line break and indentation, "def main(" + ")" is "def main()",
    and a word-level or SentencePiece continuation brings the space before its first word."""
    from steering.generation import continuation_text

    tok = _tokenizer(name)
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    seen_indent = seen_glued = False
    for text in CONTINUED[name]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for k in range(1, len(ids)):
            prompt, new = [tok.bos_token_id] + ids[:k], ids[k:]
            cont = continuation_text(tok, prompt, new + [tok.eos_token_id] + ids[:2])  # cut at EOS
            assert decode(prompt) + cont == decode(prompt + new), (decode(prompt), cont)
            seen_indent |= cont.startswith(("\n", "  "))  # a line break, or indentation
            seen_glued |= cont[:1] in tuple("()):.")  # no space between prompt and continuation
    if name != "toy_words":
        assert seen_indent and seen_glued
    else:  # words are space-separated: every continuation brings its space
        cont = continuation_text(tok, [tok.bos_token_id] + tok("the sailor", add_special_tokens=False)["input_ids"],
                                 tok(" sees a whale", add_special_tokens=False)["input_ids"])
        assert "the sailor" + cont == "the sailor sees a whale"
    assert continuation_text(tok, [tok.bos_token_id], [tok.eos_token_id]) == ""


def test_generated_texts_join_their_prompts_as_the_tokenizer_decodes_them(model):
    gen = generate(model, ["the sailor", ""], GREEDY)
    tok = model.tokenizer
    for b, full in enumerate(gen.full_texts):
        want = tok.decode(gen.tokens[b].tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert full == want
    assert gen.texts[0].startswith(" ") and not gen.texts[1].startswith(" ")  # words are space-separated


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_a_prompt_that_writes_its_bos_gets_no_second_one(model, padding_side):
    """HookedTransformer over a word-level tokenizer that adds BOS itself: a prompt starting with the
    BOS token's text is tokenized as written, the others get theirs, and a mixed batch is padded as
    `to_tokens` pads (saes.bos.prompt_tokens). (The Mistral user path: a Bridge, the [INST] template.)"""
    from saes.bos import prompt_tokens

    bos, pad = model.tokenizer.bos_token, model.tokenizer.pad_token_id
    plain = model.to_tokens(PROMPTS[0], prepend_bos=True)[0].tolist()
    assert prompt_tokens(model, bos + PROMPTS[0])[0].tolist() == plain
    assert model.to_tokens(bos + PROMPTS[0])[0].tolist() == plain[:1] + plain  # what it did
    rows = prompt_tokens(model, [bos + PROMPTS[0], PROMPTS[1], PROMPTS[0]], padding_side=padding_side)
    want = model.to_tokens([PROMPTS[0], PROMPTS[1], PROMPTS[0]], padding_side=padding_side)
    assert rows.tolist() == want.tolist() and pad is not None
    assert prompt_tokens(model, bos + PROMPTS[0], prepend_bos=False)[0].tolist() == plain  # as written


def test_a_loaded_doc_policy_sae_gets_its_prompts_after_bos_through_the_python_api(model, tmp_path):
    """`steer(model, loaded, ...)` with the `LoadedSAE` of an SAE trained on BOS policy
    "doc" (cfg.json prepend_bos=false) feed prompts after BOS, as `saesteer steer` does
    (`saes.bos.prepend_bos_for`); they took the unwrapped SAE's cfg.json: no BOS."""
    import saes
    from saes.formats import resolve_sae

    sae = random_sae(model, "topk")
    sae.cfg.metadata["prepend_bos"] = False
    bos = model.tokenizer.bos_token_id
    for policy, wanted in (("doc", True), ("none", False)):
        saes.save_sae(sae, tmp_path / policy, provenance={"tool": "saesteer", "data": {"bos_policy": policy}})
        loaded = resolve_sae(str(tmp_path / policy))
        with steer(model, loaded, [FeatureEdit(3, "add", 1.0)]) as s:
            made = s.generate("the sea", GREEDY)
        assert (int(made.tokens[0, 0]) == bos) is wanted, policy
