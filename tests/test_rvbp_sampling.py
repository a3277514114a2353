"""Review of sampled generation with several prompts (`saesteer steer`): TransformerLens's generate
draws every row from one seeded stream, so a prompt's sampled text depends on the prompts beside it
(the API's engine seeds each row). Steered and unsteered passes draw alike (one batch, one seed), so
their side-by-side comparison is fair; what a user can trip over is running a prompt again with
other companions and getting another text. The table says so where it shows the seed."""

from __future__ import annotations

import pytest

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
