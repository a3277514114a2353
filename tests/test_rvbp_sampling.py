"""Review of sampled generation with several prompts (`saesteer steer`): TransformerLens's generate
draws every row from one seeded stream, so a prompt's sampled text depends on the prompts beside it
(the API's engine seeds each row). Steered and unsteered passes draw alike (one batch, one seed), so
their side-by-side comparison is fair; what a user can trip over is running a prompt again with
other companions and getting another text. The table says so where it shows the seed."""

from __future__ import annotations

import pytest
import torch

from saesteer.cli import build_parser

pytestmark = [pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny random test model and a random SAE saved as a folder: (model, SAE folder)."""
    import saes
    from helpers.steering_fixtures import random_sae, tiny_model

    model = tiny_model()
    path = tmp_path_factory.mktemp("rvbp-tiny") / "sae"
    saes.save_sae(random_sae(model, hook="blocks.1.hook_resid_post", d_sae=32, seed=0), path)
    return model, path


def _steer(tiny, capsys, *flags) -> str:
    from saesteer.commands import steer

    model, sae = tiny
    argv = ["steer", "--sae", str(sae), "-l", "3:clamp=9", "--max-new-tokens", "6", "--no-progress", *flags]
    assert steer._run(build_parser().parse_args(argv), model=model) == 0
    return " ".join(capsys.readouterr().out.split())  # the table's caption wraps at the terminal's width


def test_steer_table_says_a_sampled_prompt_shares_its_seed_with_the_prompts_beside_it(tiny, capsys):
    """Two prompts sampled: the caption says the seed is one stream for both, and indeed the first
    prompt's text differs from its text alone (same seed); one prompt, or greedy: the plain seed."""
    from steering import GenerationConfig, generate

    together = _steer(tiny, capsys, "-p", "the sea", "-p", "a tree", "--seed", "3")
    assert "seed 3, one stream for the 2 prompts together: a prompt's text depends on the others" in together
    cfg = GenerationConfig(max_new_tokens=6, seed=3)  # what the table stands for: the text moves with its companions
    model = tiny[0]
    assert generate(model, ["the sea", "a tree"], cfg).texts[0] != generate(model, ["the sea"], cfg).texts[0]
    for flags in (("-p", "the sea", "--seed", "3"), ("-p", "the sea", "-p", "a tree", "--do-sample", "false")):
        out = _steer(tiny, capsys, *flags)
        assert "one stream" not in out and ("seed 3, 6 new tokens" in out or "seed 0, 6 new tokens, greedy" in out), out


@pytest.fixture(scope="module")
def eos_leaning_gpt2(tmp_path_factory, real_corpus):
    """A tiny GPT-2 (pad = EOS = BOS) whose final norm leans toward end-of-text (+8 on its logit at
    every position), so a sampled text often ends within a few tokens: (TransformerBridge, SAE)."""
    from transformers import AutoModelForCausalLM

    from helpers.real_models import build_family_tokenizer, save_arch_model
    from helpers.steering_fixtures import random_sae
    from saesteer.models import load_model

    path = save_arch_model(tmp_path_factory.mktemp("rvbp-gpt2") / "gpt2", "gpt2",
                           build_family_tokenizer("gpt2", real_corpus.train_docs, 512))
    hf = AutoModelForCausalLM.from_pretrained(str(path))
    with torch.no_grad():
        w = hf.transformer.wte.weight[hf.config.eos_token_id]
        hf.transformer.ln_f.bias += 8.0 * w / w.norm() ** 2
    hf.save_pretrained(str(path))
    model = load_model(str(path), device="cpu")
    return model, random_sae(model, "jumprelu", hook="blocks.0.hook_resid_post", d_sae=64, seed=1)


def test_frequency_penalty_does_not_count_a_padded_prompts_pads(eos_leaning_gpt2, real_corpus):
    """`compare` (`saesteer steer --freq-penalty 1`) sampling a short prompt beside a long one, on a
    model whose pad is its end-of-text: TransformerLens's penalty counted the short row's 30-odd
    pads as tokens of its text, so its end-of-text logit fell by 30 and it ran on to the last token
    where alone it ends at once. Now each prompt, steered and unsteered, reads as it does alone."""
    from steering import GenerationConfig, compare, generate

    model, sae = eos_leaning_gpt2
    short, long = "x = 1", real_corpus.test_docs[0][:150]
    cfg = GenerationConfig(max_new_tokens=12, seed=1, freq_penalty=1.0)  # sampled, stopping at end-of-text
    alone = generate(model, [short], cfg)
    assert alone.new_tokens.shape[1] < cfg.max_new_tokens  # the case at hand: it ends early alone
    assert generate(model, [short, long], cfg).prompt_len - alone.prompt_len > 20  # ... and is padded beside `long`
    edits = ["3:add=20@generated"]
    together = compare(model, sae, edits, [short, long, short], cfg)
    one = compare(model, sae, edits, [short], cfg)
    assert (together.unsteered[0], together.steered[0]) == (one.unsteered[0], one.steered[0])
    assert together.unsteered[0] == alone.texts[0]


def test_compare_bar_counts_the_rows_of_each_forward_pass_when_prompts_are_sampled_by_length(eos_leaning_gpt2,
                                                                                              monkeypatch):
    """With a frequency penalty the prompts are sampled a length at a time: the bar steps by the rows
    each forward pass makes (2 prompts of one length, then 1), not by every prompt each time."""
    from tqdm.auto import tqdm

    from steering import GenerationConfig, compare

    model, sae = eos_leaning_gpt2
    steps: list[int] = []
    real_update = tqdm.update

    def update(bar, n=1):
        if n and getattr(bar, "desc", "").startswith("generating") and bar.n + n < bar.total:
            steps.append(n)  # the forward passes' steps (the pass's last one is `_end_pass`'s)
        return real_update(bar, n)

    monkeypatch.setattr(tqdm, "update", update)
    cfg = GenerationConfig(max_new_tokens=4, seed=0, freq_penalty=1.0, stop_at_eos=False)
    compare(model, sae, ["3:add=20@generated"], ["a b", "The parser reads the file", "c d"], cfg, progress=True)
    assert set(steps) == {1, 2} and steps.count(2) >= 4, steps
