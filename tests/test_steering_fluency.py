"""steering.fluency: the one fluency measure of every sweep (CLI, web app, demo), for any model.

Degenerate text (punctuation and underscore runs, one token repeated, "the the the the", nothing)
must score low under any model; text the unsteered model writes itself must score high. Checked
under the toy model and under a randomly initialised model over another vocabulary.
"""

from __future__ import annotations

import pytest
import torch

from helpers.steering_fixtures import tiny_model, torch_threads
from steering import GenerationConfig
from steering.fluency import (
    characters_factor, fluency_of_generation, fluency_of_texts, pooled_perplexity, repeated_bigram_share,
    repetition_factor, units, word_char_share,
)
from steering.generation import generate

DEGENERATE = [
    "(______",  # the web sweep's old distinct-word share scored this 1.0 and recommended the strength behind it
    "the the the the",
    "the the the the the the the the",  # a single token repeated
    "!!!!!!!!!!!!",
    ". . . . . . . . . .",
    "? ! ? ! ? ! ? ! ? !",
    "",
    "   \n\n ",
    "oceanoceanoceanoceanoceanoceanocean",  # one token generated over and over with no space: one "word"
    "hahahahahahahahahaha",
    "的的的的的的的的的的的的",  # CJK has no spaces: one character repeated
    "海洋很大海洋很大海洋很大海洋很大",
]
PROSE = ("The harbour was quiet that morning. A few boats rocked against the pier while the gulls argued over "
         "the nets, and an old man in a blue coat counted crates by the warehouse door.")
CODE = ("def read_rows(path):\n    with open(path, encoding='utf-8') as fh:\n        for line in fh:\n"
        "            if line.strip():\n                yield json.loads(line)\n")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def toy():
    from saesteer.models import load_model

    m = load_model("toy", device="cpu")
    m.eval()
    return m


@pytest.fixture(scope="module", params=["toy", "random"])
def any_model(request, toy):
    return toy if request.param == "toy" else tiny_model()


def test_degenerate_texts_score_low_under_any_model(any_model):
    scores = fluency_of_texts(any_model, [""] * len(DEGENERATE), DEGENERATE)
    for text, s in zip(DEGENERATE, scores):
        assert s.fluency < 0.05, (text, s)
    # and each fails for a reason a newcomer can read off the factors
    by_text = dict(zip(DEGENERATE, scores))
    assert by_text["(______"].characters == 0.0 and by_text["!!!!!!!!!!!!"].characters == 0.0
    assert by_text["the the the the"].repetition == 0.0 and by_text["the the the the the the the the"].repetition == 0.0
    assert by_text[""].excess_nats is None and by_text[""].n_tokens == 0
    for text in DEGENERATE[-4:]:
        assert by_text[text].repetition == 0.0 and by_text[text].characters == 1.0, text


def test_the_unsteered_models_own_text_scores_high(any_model):
    gen = generate(any_model, [""] * 16, GenerationConfig(max_new_tokens=32, seed=5, stop_at_eos=False))
    scores = fluency_of_generation(any_model, gen)
    values = [s.fluency for s in scores]
    assert sum(values) / len(values) >= 0.9, values
    assert min(values) >= 0.6, values
    # its excess surprise is sampling noise: mean about 0 nats per token
    excess = [s.excess_nats for s in scores]
    assert abs(sum(excess) / len(excess)) < 0.25, excess


def test_shuffled_words_of_the_same_text_score_low(toy):
    """Word salad made of the model's own vocabulary: no repetition, all letters; only the surprise
    under the unsteered model can tell, and it does."""
    import random

    gen = generate(toy, [""] * 8, GenerationConfig(max_new_tokens=32, seed=2, stop_at_eos=False))
    rng = random.Random(0)
    salad = []
    for t in gen.texts:
        words = t.split()
        rng.shuffle(words)
        salad.append(" ".join(words))
    good = fluency_of_texts(toy, [""] * 8, gen.texts)
    bad = fluency_of_texts(toy, [""] * 8, salad)
    assert sum(s.fluency for s in good) / 8 >= 0.9
    assert sum(s.fluency for s in bad) / 8 < 0.2
    assert all(b.excess_nats > g.excess_nats + 1 for g, b in zip(good, bad))


def test_texts_and_generations_are_scored_alike(toy):
    gen = generate(toy, ["", "the old sailor"] * 4, GenerationConfig(max_new_tokens=20, seed=1, stop_at_eos=False))
    eos = toy.tokenizer.eos_token_id
    rows = [i for i in range(8) if not bool((gen.new_tokens[i] == eos).any())]  # the text drops <eos>
    assert len(rows) >= 4
    a = fluency_of_generation(toy, gen)
    b = fluency_of_texts(toy, gen.prompts, gen.texts)
    for i in rows:
        assert b[i].excess_nats == pytest.approx(a[i].excess_nats, abs=1e-4)
        assert b[i].fluency == pytest.approx(a[i].fluency, abs=1e-4)
    ppl = pooled_perplexity(a)
    assert ppl is not None and 1 < ppl < toy.cfg.d_vocab
    with pytest.raises(Exception, match="one prompt per text"):
        fluency_of_texts(toy, [""], ["a", "b"])


ZH = "今天早上港口很安静。几艘小船靠着码头轻轻摇晃，海鸥在渔网上争吵，一个穿蓝色外套的老人在仓库门口数着箱子。"
JA = "今朝の港はとても静かでした。何隻かの小舟が桟橋にもたれて揺れ、カモメは網の上で言い争い、青いコートを着た老人が倉庫の戸口で木箱を数えていました。"


def test_text_factors_leave_prose_and_code_alone():
    for text in (PROSE, CODE, ZH, JA):
        assert characters_factor(text) == 1.0, text
        assert repetition_factor(text) == 1.0, text
    assert word_char_share(CODE) > 0.6 and word_char_share(PROSE) > 0.9
    assert units("(______ a-b --- self.x!! 你好") == ["(", "______", "a", "-", "b", "---", "self", ".", "x", "!!", "你", "好"]
    assert units("oceanoceanocean hahaha www 1000") == ["ocean"] * 3 + ["ha"] * 3 + ["w"] * 3 + ["1000"]
    assert repeated_bigram_share("the the the the") == pytest.approx(2 / 3)
    assert repeated_bigram_share("one two") == 0.0  # a single bigram cannot repeat
    assert word_char_share("(______") == 0.0 and word_char_share("   ") == 0.0


def test_a_reply_merging_into_the_first_prompt_token_of_a_bosless_model_is_still_scored(tmp_path):
    """A model that prepends no BOS (GPT-NeoX, Qwen2), byte-level BPE, a prompt whose one token merges
    with the reply's start ("h" + "e sails..." is "he", " s"...): the reply is scored from the second
    token on, as `fluency_of_generation` scores those tokens. It scored nothing (a reply of a dozen
    tokens with n_tokens 0 and no surprise), as the reply's start was the position with no context."""
    from transformers import AutoTokenizer

    from helpers.text_tokenizers import byte_level_bpe
    from helpers.tiny_model import make_model
    from steering.fluency import fluency_of_texts
    from steering.generation import Generation

    byte_level_bpe().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    model = make_model(tok, n_ctx=128)
    model.cfg.default_prepend_bos = False
    prompt, reply = "h", "e sails on the sea"
    head, whole = tok(prompt)["input_ids"], tok(prompt + reply)["input_ids"]
    assert len(head) == 1 and whole[0] != head[0]  # the merge: the reply starts inside the prompt's token
    scored, = fluency_of_texts(model, [prompt], [reply])
    as_generated, = fluency_of_generation(model, Generation([prompt], [reply], torch.tensor([whole]), 1))
    assert scored.n_tokens == len(whole) - 1 == as_generated.n_tokens
    assert round(scored.nll_sum, 4) == round(as_generated.nll_sum, 4)
