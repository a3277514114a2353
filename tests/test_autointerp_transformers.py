"""The local transformers judge, with a tiny randomly initialised GPT-2 built here (no downloads)."""

from __future__ import annotations

import pytest

from autointerp.backends import TransformersBackend
from autointerp.config import LabelConfig
from autointerp.judge import AnswerInvalid, Judge
from autointerp.prompts import LABEL_SCHEMA, parse_label
from autointerp.runner import label_latents
from autointerp.store import MemoryLabelStore
from helpers.label_data import make_latents

ANSWER = '{"label": "ocean"}'  # one token of the tiny vocabulary


TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant : {% endif %}")


@pytest.fixture(scope="module")
def tiny():
    return _tiny_model(TEMPLATE)


def _tiny_model(template: str):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", ANSWER, "system", "user", "assistant", ":", "{", "}", '"label"', "ocean",
             "the", "Example", "<<", ">>", "<think>", "</think>", "<reasoning>", "</reasoning>"]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.chat_template = template
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(words), n_positions=4096, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    return model, tok


def forced_to(model, tok, token: str):
    """A copy of the tiny model that predicts `token` at every position, whatever the prompt."""
    import torch

    forced = type(model)(model.config).eval()
    forced.load_state_dict(model.state_dict())
    with torch.no_grad():
        forced.transformer.ln_f.weight.zero_()
        forced.transformer.ln_f.bias.copy_(forced.transformer.wte.weight[tok.convert_tokens_to_ids(token)] * 50)
    return forced


def test_garbage_answers_fail_cleanly_and_nothing_is_stored(tiny):
    model, tok = tiny
    # garbage by construction ("ocean ocean ..."), not by chance: a random model's greedy answer
    # depends on the prompt's wording and may be the one valid token
    garbage = forced_to(model, tok, "ocean")
    judge = Judge(TransformersBackend(garbage, tok, name="tiny-garbage"), max_reasks=1, max_tokens=12)
    store = MemoryLabelStore(make_latents(2, n_top=4, n_quantile=4, n_random=4, length=12))
    report = label_latents(store, judge, LabelConfig(n_explain_top=2, n_explain_quantile=2, n_detect=2, n_fuzz=2),
                           progress=False)
    assert report.labelled == 0 and not store.results
    assert sorted((f.latent, f.stage) for f in report.failed) == [(0, "explain"), (1, "explain")]  # async: any order
    assert all("asks" in f.reason for f in report.failed)
    assert report.usage["paid_calls"] == 4  # 2 latents x (1 ask + 1 re-ask)
    assert report.usage["prompt_tokens"] > 0 and report.usage["cost_usd"] == 0.0


def test_valid_local_answer_goes_through(tiny):
    model, tok = tiny
    forced = forced_to(model, tok, ANSWER)
    judge = Judge(TransformersBackend(forced, tok, name="tiny-forced"))
    done = judge.complete_sync([{"role": "user", "content": "label the ocean"}], LABEL_SCHEMA, validate=parse_label,
                               max_tokens=1)
    assert done.value == "ocean" and done.reasks == 0 and done.completion_tokens == 1
    with pytest.raises(AnswerInvalid):  # two tokens: the answer twice, not valid JSON
        Judge(TransformersBackend(forced, tok), max_reasks=0).complete_sync(
            [{"role": "user", "content": "again"}], LABEL_SCHEMA, max_tokens=2)


@pytest.mark.parametrize("tag", ["<think>", "<reasoning>"])  # a GRPO fine-tune's template opens <reasoning>
def test_a_reply_inside_thinking_the_template_opened_is_never_the_answer(tmp_path, tag):
    """DeepSeek-R1's and QwQ's templates end the prompt with "<think>": the reply starts inside the
    block, with no opening tag. A reply with no closing tag is all thinking, however valid it reads
    (here the bare answer itself): cut off at the limit it is truncated output, not a label, and so
    it stays when read back from the response cache."""
    from autointerp.cache import ResponseCache

    model, tok = _tiny_model(TEMPLATE.replace("assistant : {% endif %}", f"assistant : {tag} {{% endif %}}"))
    backend = TransformersBackend(forced_to(model, tok, ANSWER), tok, name="tiny-thinking")
    for run in range(2):
        judge = Judge(backend, max_reasks=0, cache=ResponseCache(tmp_path / "cache.sqlite"))
        with pytest.raises(AnswerInvalid, match="truncated judge output.*still thinking"):
            judge.complete_sync([{"role": "user", "content": "label the ocean"}], LABEL_SCHEMA, max_tokens=1)
        assert judge.ledger.totals.cached_calls == run  # the second run read the reply from the cache


def test_needs_a_chat_template(tiny):
    model, tok = tiny
    plain = type(tok)(tokenizer_object=tok.backend_tokenizer)
    plain.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        TransformersBackend(model, plain)


def test_a_prompt_longer_than_the_judge_model_reads_is_refused(tiny):
    """transformers only warns when the prompt runs past the model's positions (a small local model:
    n_positions 32 here), then answers from positions it never saw: the latent fails instead, naming
    both lengths and the fix, and nothing is generated."""
    import asyncio

    from autointerp.wire import ChatRequest, PermanentError

    model, tok = tiny
    short = type(model)(type(model.config)(**{**model.config.to_dict(), "n_positions": 32})).eval()
    backend = TransformersBackend(short, tok, name="tiny-32")
    request = ChatRequest(messages=({"role": "user", "content": " ".join(["the ocean"] * 20)},), max_tokens=8)
    with pytest.raises(PermanentError, match=r"the prompt is \d+ tokens and the answer may take 8, but the judge "
                                             r"model tiny-32 reads at most 32; use a judge with a longer context"):
        asyncio.run(backend.chat(request))


def test_a_byte_fallback_judges_stray_byte_keeps_the_characters_after_it():
    """A judge with a SentencePiece byte-fallback tokenizer (Mistral-Instruct, Llama-2-chat) that
    samples a stray byte before a label spelled in byte tokens: HF's decode made every byte of the
    run U+FFFD, so the label "海洋" was lost; the reply reads as UTF-8 reads its bytes
    (`saes.bytefallback.text_of`, the one decoding)."""
    import asyncio

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from autointerp.wire import ChatRequest
    from helpers.text_tokenizers import sentencepiece_bpe

    tok = sentencepiece_bpe(max_alphabet=80, chat_template=TEMPLATE)
    label = tok("海洋", add_special_tokens=False)["input_ids"]
    assert all(t.startswith("<0x") for t in tok.convert_ids_to_tokens(label)[1:])  # spelled in bytes
    label = [i for i in label if tok.convert_ids_to_tokens(i).startswith("<0x")]
    reply = (tok('{"label": "', add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<0xE4>")]
             + label + tok('"}', add_special_tokens=False)["input_ids"][1:])  # less the dummy-prefix "▁"

    class Replying(GPT2LMHeadModel):  # a judge model that answers `reply` (greedy sampling is not the point)
        def generate(self, input_ids, **kw):
            return torch.cat([input_ids, torch.tensor([reply])], dim=1)

    model = Replying(GPT2Config(vocab_size=len(tok), n_positions=4096, n_embd=16, n_layer=1, n_head=2)).eval()
    hf_reading = tok.decode(reply, skip_special_tokens=True)
    assert "海洋" not in hf_reading  # HF: the whole run as U+FFFD
    request = ChatRequest(messages=[{"role": "user", "content": "label the ocean"}], max_tokens=len(reply) + 1)
    got = asyncio.run(TransformersBackend(model, tok, name="tiny-sp").chat(request))
    assert got.text.endswith('"\ufffd海洋"}') and got.text.startswith("{") and got.completion_tokens == len(reply)
