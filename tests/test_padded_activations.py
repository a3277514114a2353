"""Activations over a set of prompts (`steering.activations`: the difference-of-means baseline of
`saesteer steer-eval`, the mean latent activations of the latent search) and the fluency of a
batch's generations (`steering.fluency.fluency_of_generation`: steer-eval's perplexity) do not
depend on which prompts share a batch, on tiny checkpoints of real architectures loaded as users load them
(`saesteer.models.load_model`: a TransformerBridge) and on the toy HookedTransformer.

A TransformerBridge given tokens reads no `padding_side`: a left-padded batch ran with its pads
attended and a padded row's positions counted from its first pad, so a short prompt's activations
beside a longer one moved by up to ~4 (GPT-2) and a diff-of-means vector changed with the batch.
The real tokens were read back off the padded ids, so a prompt that starts with GPT-2's
<|endoftext|> (its pad) lost that token where no BOS is prepended. Fluency scored a generation's
left-padded rows by the same forward (GPT-2: a short prompt's reply 24.11 nats beside a long one,
25.68 alone).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.usefixtures("one_thread")]

HOOK = "blocks.1.hook_resid_post"
TOL = 1e-4  # fp32; a padded row reduces over masked columns in another order (~1e-6)
PROMPTS = ["def parse(text):\n    return [w.strip() for w in text.split(',')]",
           "Le café était très chaud ; la crème brûlée aussi.",
           "机器学习很有趣",
           "x"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, real_corpus):
    """Untrained tiny GPT-2 (absolute positions), Llama (rotary, GQA) and Qwen2 checkpoints."""
    from helpers.real_models import save_real_model

    root = tmp_path_factory.mktemp("padacts")
    return {fam: save_real_model(root / fam, fam, real_corpus, train_steps=0, vocab_size=512)
            for fam in ("gpt2", "llama", "qwen2")}


@pytest.fixture(scope="module")
def bridges(checkpoints):
    """The checkpoints as users load them (`saesteer.models.load_model`: a TransformerBridge)."""
    from saesteer.models import load_model

    return {fam: load_model(str(path), device="cpu") for fam, path in checkpoints.items()}


def _alone(model, prompt: str, prepend_bos: bool | None) -> torch.Tensor:
    """The prompt's activations run alone, unpadded: no mask, positions 0.., the one BOS dropped."""
    from saes.bos import prompt_tokens

    wanted = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    tokens = prompt_tokens(model, [prompt], prepend_bos)
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    acts = cache[HOOK][0]
    drop = int((wanted or prompt == "") and tokens[0, 0].item() == model.tokenizer.bos_token_id)
    return acts[drop:]


def _check_rows(model, prompts, prepend_bos=None, batch_size=16):
    from steering.activations import iter_hook_activations

    got = torch.cat(list(iter_hook_activations(model, HOOK, prompts, prepend_bos=prepend_bos, batch_size=batch_size)))
    want = [_alone(model, p, prepend_bos) for p in prompts]
    assert got.shape[0] == sum(w.shape[0] for w in want)
    for row, w in zip(torch.split(got, [w.shape[0] for w in want]), want):
        torch.testing.assert_close(row, w, atol=TOL, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("prepend_bos", [None, True, False])
def test_each_row_of_a_padded_batch_equals_its_prompt_alone(bridges, family, prepend_bos):
    _check_rows(bridges[family], PROMPTS, prepend_bos)


@pytest.mark.parametrize("prepend_bos", [None, False])
def test_a_prompt_that_starts_with_gpt2s_pad_token_keeps_it(bridges, prepend_bos):
    """GPT-2's <|endoftext|> is its BOS and its pad: written at a prompt's start it is the one BOS
    where a BOS is asked for, and one of the prompt's tokens where none is."""
    from steering.activations import iter_hook_activations

    model = bridges["gpt2"]
    prompt = model.tokenizer.eos_token + "Le café était très chaud."
    _check_rows(model, [prompt, PROMPTS[0]], prepend_bos)
    acts, = iter_hook_activations(model, HOOK, [prompt, PROMPTS[0]], prepend_bos=prepend_bos)
    n_text, n_code = (len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (prompt, PROMPTS[0]))
    assert acts.shape[0] == (n_text - 1 if prepend_bos is None else n_text) + n_code


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_mean_activation_is_the_token_weighted_mean_of_its_prompts_alone(bridges, family):
    """The diff-of-means baseline's mean: batching the prompts changes nothing."""
    from steering.activations import mean_hook_activation

    model = bridges[family]
    mean, n = mean_hook_activation(model, HOOK, PROMPTS, batch_size=3)
    alone = [_alone(model, p, None) for p in PROMPTS]
    want = torch.cat(alone).double().mean(0).float()
    assert n == sum(a.shape[0] for a in alone)
    torch.testing.assert_close(mean, want, atol=TOL, rtol=0)


def test_the_toy_hooked_transformer_gives_each_prompt_as_alone(tiny_model):
    """The toy HookedTransformer (its pad is not its BOS) read the pads off the tokens rightly
    before: given the mask now, it gives the same."""
    prompts = ["the cat sat on the mat", "a dog", "the ship sailed into the harbour at dawn"]
    for bos in (None, False):
        _check_rows(tiny_model, prompts, bos, batch_size=2)


def test_a_gpt2_hooked_transformer_whose_pad_is_its_bos_gives_each_prompt_as_alone(checkpoints):
    """A HookedTransformer (a user's `HookedTransformer.from_pretrained("gpt2")`: learned positions,
    pad = BOS = <|endoftext|>) numbers a padded row's positions from the mask it is given."""
    from helpers.real_models import hooked_sae_transformer

    from steering.activations import positions_follow_mask

    model = hooked_sae_transformer(checkpoints["gpt2"])
    assert model.tokenizer.pad_token_id == model.tokenizer.bos_token_id and positions_follow_mask(model)
    for bos in (None, False):
        _check_rows(model, PROMPTS + [model.tokenizer.eos_token + "Le café."], bos)
    _check_fluency(model)


def test_a_bridge_that_cannot_take_position_ids_runs_each_prompt_alone(bridges, monkeypatch):
    """A Bridge whose wrapped model takes no `position_ids` (a remote-code forward) attends a
    mask but numbers a padded row's positions from its first pad (GPT-2's absolute positions:
    off by far more than TOL): such a model runs each prompt alone, in the same batches, and
    generates each length of prompt unpadded."""
    from steering.activations import iter_hook_activations, positions_follow_mask

    model = bridges["gpt2"]
    assert positions_follow_mask(model)
    monkeypatch.setattr(model, "_accepts_derived_position_ids", lambda: False)
    assert not positions_follow_mask(model)
    _check_rows(model, PROMPTS, batch_size=3)
    _check_fluency(model)
    from steering.generation import generate

    batched = generate(model, PROMPTS, max_new_tokens=8, do_sample=False)
    alone = [generate(model, [p], max_new_tokens=8, do_sample=False) for p in PROMPTS]
    assert batched.texts == [a.texts[0] for a in alone]
    assert batched.prompt_lengths == [a.prompt_len for a in alone]
    # one yield per batch still: mean_latent_activation moves its progress bar on by batch
    assert len(list(iter_hook_activations(model, HOOK, PROMPTS, batch_size=3))) == 2


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_the_fluency_of_a_padded_row_equals_its_row_alone(bridges, family):
    _check_fluency(bridges[family])


def _check_fluency(model):
    from steering.fluency import fluency_of_generation
    from steering.generation import Generation, generate

    res = generate(model, PROMPTS, max_new_tokens=6, do_sample=False)
    assert len(set(res.prompt_lengths)) > 1
    batched = fluency_of_generation(model, res)
    for b, (prompt, n) in enumerate(zip(PROMPTS, res.prompt_lengths)):
        row = res.tokens[b:b + 1, res.prompt_len - n:]  # the row without its pads
        alone, = fluency_of_generation(model, Generation([prompt], [res.texts[b]], row, n))
        assert batched[b].n_tokens == alone.n_tokens > 0
        assert batched[b].nll_sum == pytest.approx(alone.nll_sum, abs=TOL)


def test_prompts_cut_to_the_context_are_named_in_one_note(tiny_model, capsys):
    """`generate` refuses a prompt longer than the context; a diff-of-means vector or a mean latent
    activation reads only its first n_ctx tokens, so the user is told once how many were cut, and
    the CLI (`saesteer.boundary.warnings_as_notes`) shows that in one line."""
    import warnings

    from saesteer.boundary import warnings_as_notes
    from steering.activations import mean_hook_activation
    from steering.spec import SteeringWarning

    long = " ".join(["the cat sat on the mat"] * 10)  # 60 words, context 32
    prompts = [long, "a dog", long + " and the dog", "the ship sailed"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, n = mean_hook_activation(tiny_model, HOOK, prompts, batch_size=2)
    notes = [w for w in caught if issubclass(w.category, SteeringWarning)]
    assert len(notes) == 1, [str(w.message) for w in caught]
    text = str(notes[0].message)
    assert "2 prompts of 4 exceed the model's context of 32 tokens" in text and "first 32 tokens" in text, text
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mean_hook_activation(tiny_model, HOOK, prompts[1:2] + prompts[3:])
    assert not [w for w in caught if issubclass(w.category, SteeringWarning)]
    with warnings_as_notes():
        warnings.simplefilter("always")
        mean_hook_activation(tiny_model, HOOK, [long])
    err = capsys.readouterr().err
    assert err.startswith("note: 1 prompt of 1 exceeds") and err.count("\n") == 1, err
