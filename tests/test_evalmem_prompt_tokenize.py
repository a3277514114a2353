"""`steering.generate` tokenizes each prompt once: it tokenized the batch (left-padded) and then every
prompt again alone for its own length (GPT-2's pad is its BOS, so a length is not read off the padded
batch). Now each distinct prompt is tokenized alone and the batch is padded from those rows: the tokens
it generates from are the batch tokenization's, and the greedy texts are each prompt's alone. On tiny
GPT-2 (BOS = EOS = pad) and Llama-3 (the tokenizer's post-processor adds BOS) checkpoints with
byte-level BPEs trained on code and prose."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.usefixtures("one_thread")]

PROMPTS = ["def parse(self, line):\n    return line.split(',')",
           "Le café de la gare ferme à minuit.",
           "東京の天気は",
           "def parse(self, line):\n    return line.split(',')",  # a repeat (steer-eval's --samples)
           "The committee met on Tuesday and"]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, real_corpus, tmp_path_factory):
    from helpers.real_models import build_family_tokenizer, save_arch_model
    from saesteer.models import load_model

    tok = build_family_tokenizer(request.param, real_corpus.train_docs, vocab_size=512)
    arch = "gpt2" if request.param == "gpt2" else "llama3_1"
    return load_model(str(save_arch_model(tmp_path_factory.mktemp(arch) / arch, arch, tok)))


def _texts_encoded(monkeypatch, tok) -> list:
    """Every text the tokenizer is asked to encode from now on."""
    seen = []
    real = type(tok).__call__

    def counting(self, text=None, *a, **kw):
        seen.extend([text] if isinstance(text, str) else list(text or []))
        return real(self, text, *a, **kw)

    monkeypatch.setattr(type(tok), "__call__", counting)
    return seen


def test_generate_tokenizes_each_prompt_once_and_generates_from_the_batch_tokens(model, monkeypatch):
    import steering
    from saes.bos import prompt_tokens

    config = steering.GenerationConfig(max_new_tokens=6, do_sample=False, stop_at_eos=False)
    batch_tokens = prompt_tokens(model, PROMPTS, None, padding_side="left", truncate=False)
    alone = [steering.generate(model, [p], config).texts[0] for p in PROMPTS[:3] + PROMPTS[4:]]

    seen = _texts_encoded(monkeypatch, model.tokenizer)
    got = steering.generate(model, PROMPTS, config)
    assert len(seen) == len(set(PROMPTS)) == 4, seen  # was 5 + 4: the batch, then each distinct prompt alone

    assert torch.equal(got.tokens[:, :got.prompt_len].cpu(), batch_tokens.cpu())
    assert got.texts == alone[:3] + [alone[0]] + alone[3:]
    assert len(set(got.texts)) == 4 and all(got.texts)


def test_compare_tokenizes_each_prompt_once_for_both_passes(model, monkeypatch):
    """`steering.compare` (what `saesteer steer` runs) checked the prompts, then generated steered and
    unsteered, each tokenizing them again: 3 x 4 encodes here. It tokenizes them once, and each side's
    texts are those of its own `generate`."""
    import steering
    from saes import create_sae

    sae = create_sae("topk", d_in=model.cfg.d_model, d_sae=64, k=4, generator=torch.Generator().manual_seed(0))
    sae.cfg.metadata["hook_name"] = "blocks.0.hook_resid_post"
    config = steering.GenerationConfig(max_new_tokens=5, do_sample=False, stop_at_eos=False)
    with steering.steer(model, sae, ["3:add=40"]) as s:
        steered = s.generate(PROMPTS, config).texts
    unsteered = steering.generate(model, PROMPTS, config).texts
    assert steered != unsteered  # the edit changes the text

    seen = _texts_encoded(monkeypatch, model.tokenizer)
    got = steering.compare(model, sae, ["3:add=40"], PROMPTS, config)
    assert len(seen) == len(set(PROMPTS)), seen
    assert (got.steered, got.unsteered) == (steered, unsteered)
