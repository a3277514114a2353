"""Reasoning models whose thinking comes inside the content in markup other than <think>: Mistral's Magistral
(`[THINK]...[/THINK]`, served by vLLM or llama.cpp without a reasoning parser) and ByteDance's Seed-OSS
(`<seed:think>...</seed:think>`), GRPO fine-tunes (`<reasoning>...</reasoning>`), and Mistral's own API, whose content is a list of parts with the
thinking in `{"type": "thinking", "thinking": [...]}` parts. The answer after the thinking is read, never a draft inside it: thinking that
holds a draft JSON answer neither becomes the label nor makes a good answer unreadable; thinking cut off at
the output limit is a truncation error naming the setting that gives room.

And local judges whose chat template takes no system turn (Gemma 2: "System role not supported";
Mistral-7B-Instruct, Llama-2: "Conversation roles must alternate"): served by vLLM (a 400 in the template's
words) or run by the transformers backend (jinja's TemplateError), the instructions go at the head of the
first user turn, said once, rather than every latent failing (or a raw TemplateError escaping).
"""

from __future__ import annotations

import json

import pytest

from autointerp.config import JudgeConfig, make_judge
from autointerp.judge import AnswerInvalid
from helpers.judge_server import chat_completion, fake_llm_answer
from helpers.real_cli import saesteer

LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
ASK = [{"role": "system", "content": "Label the latent."}, {"role": "user", "content": "<examples>sea</examples>"}]
USAGE = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
MARKUP = {"magistral": ("[THINK]", "[/THINK]"), "seed-oss": ("<seed:think>", "</seed:think>"),
          # a GRPO fine-tune's <reasoning>...</reasoning> format (Unsloth's and TRL's recipes), served as it writes it
          "grpo-reasoning": ("<reasoning>", "</reasoning>")}


def ask(srv, content, finish="stop", message_extra=None):
    srv.reply = lambda ex: chat_completion(content, finish=finish, usage=USAGE, message_extra=message_extra)
    j = make_judge(JudgeConfig(model="m", base_url=srv.url, api_key="k", use_cache=False, max_reasks=1),
                   cache_path=None)
    return j.complete_sync(ASK, schema=LABEL)


@pytest.mark.parametrize("model", MARKUP)
def test_the_answer_after_the_thinking_is_read_never_a_draft_inside_it(srv, model):
    open_, close = MARKUP[model]
    done = ask(srv, f'{open_}The marked tokens are waves. Draft: {{"label": "water"}}? No: sea.{close}\n{{"label": "sea"}}')
    assert done.value == {"label": "sea"} and done.reasks == 0
    # a prose answer after a JSON draft is asked again, never read as the draft
    with pytest.raises(AnswerInvalid, match="not valid JSON"):
        ask(srv, f'{open_}{{"label": "water"}}{close}The label is sea.')


@pytest.mark.parametrize("model", MARKUP)
def test_thinking_cut_off_at_the_limit_is_truncated_output_never_a_label(srv, model):
    open_, _ = MARKUP[model]
    with pytest.raises(AnswerInvalid, match="while the model was still thinking.*--judge-reasoning-tokens"):
        ask(srv, f'{open_}The marked tokens... {{"label": "water"}} maybe', finish="length")


def test_saesteer_label_with_magistral_labels_from_the_answers(srv, tmp_path):
    from features import FeatureStore
    from helpers.label_store import build_trigger_store

    path, triggers = build_trigger_store(tmp_path / "toy.db", n_latents=3)
    draft = json.dumps({"label": "DRAFT", "answers": [1]})
    srv.reply = lambda ex: chat_completion(f"[THINK]Let me see. {draft}[/THINK]" + fake_llm_answer(ex.body),
                                           usage=USAGE)
    r = saesteer("label", "--store", path, "--judge-model", "magistral-small-2509", "--judge-base-url", srv.url,
                 "--scorers", "detection", "--embed-backend", "none", "--no-progress")
    assert r.rc == 0 and "3 labelled, 0 failed" in r.out, r.text
    with FeatureStore.open(path) as st:
        assert [st.feature(i).label.text for i in range(3)] == triggers[:3]


@pytest.mark.parametrize("parts", [
    # Mistral's API (magistral-medium-2509): a thinking part (its text nested), then the answer
    [{"type": "thinking", "thinking": [{"type": "text", "text": 'Draft {"label": "water"}'}]},
     {"type": "text", "text": '{"label": "sea"}'}],
    # a proxy that flattens reasoning into a part with its own text
    [{"type": "reasoning", "text": 'Draft {"label": "water"}'}, {"type": "text", "text": '{"label": "sea"}'}],
])
def test_thinking_parts_of_a_content_list_are_never_the_answer(srv, parts):
    assert ask(srv, parts).value == {"label": "sea"}


def test_a_content_list_holding_only_thinking_at_the_limit_is_truncated_output(srv):
    parts = [{"type": "thinking", "thinking": [{"type": "text", "text": 'Hmm {"label": "water"}'}]}]
    with pytest.raises(AnswerInvalid, match="while the model was still thinking"):
        ask(srv, parts, finish="length")


def test_openrouters_reasoning_details_alone_mark_the_reply_as_thinking(srv):
    """OpenRouter sends an OpenAI reasoning model's thinking encrypted, in `reasoning_details` with no
    `reasoning` text: a reply cut off before any answer then ran out while thinking, and says to give room."""
    details = [{"type": "reasoning.encrypted", "data": "gAAAAABo...", "id": "rs_1", "format": "openai-responses-v1",
                "index": 0}]
    with pytest.raises(AnswerInvalid, match="while the model was still thinking.*--judge-reasoning-tokens"):
        ask(srv, None, finish="length", message_extra={"reasoning": None, "reasoning_details": details})


# ---------------------------------------------------------------------------------------------
# chat templates that take no system turn (Gemma 2, Mistral-7B-Instruct, Llama-2 variants)


def _vllm_400(message):
    # vLLM's error body: the object at the top level, the template's own words as the message
    return 400, {}, json.dumps({"object": "error", "message": message, "type": "BadRequestError", "param": None,
                                "code": 400}).encode()


@pytest.mark.parametrize("words", ["System role not supported",
                                   "Conversation roles must alternate user/assistant/user/assistant/..."])
def test_a_served_template_refusing_the_system_turn_gets_it_in_the_first_user_turn(srv, words):
    seen = []

    def reply(ex):
        seen.append([m["role"] for m in ex.body["messages"]])
        if ex.body["messages"][0]["role"] == "system":
            return _vllm_400(words)
        return chat_completion('{"label": "sea"}', usage=USAGE)

    srv.reply = reply
    j = make_judge(JudgeConfig(model="google/gemma-2-9b-it", base_url=srv.url, use_cache=False), cache_path=None)
    with pytest.warns(Warning, match="takes no system turn"):
        assert j.complete_sync(ASK, schema=LABEL).value == {"label": "sea"}
    assert j.complete_sync(ASK, schema=LABEL).value == {"label": "sea"}
    assert seen == [["system", "user"], ["user"], ["user"]]  # refused once; later requests folded from the start


def test_a_local_template_refusing_the_system_turn_gets_it_in_the_first_user_turn():
    from autointerp.backends import TransformersBackend
    from helpers.real_models import GEMMA2_CHAT_TEMPLATE, build_family_tokenizer

    tok = build_family_tokenizer("gemma", ["the sea is calm and the ship sails on"] * 20)
    tok.chat_template = GEMMA2_CHAT_TEMPLATE
    backend = TransformersBackend(object(), tok, name="gemma-2-2b-it")
    msgs = ASK + [{"role": "assistant", "content": "sea?"}, {"role": "user", "content": "JSON only."}]
    with pytest.warns(Warning, match="System role not supported"):
        enc = backend._render(msgs)
    text = tok.decode(enc["input_ids"][0])
    assert "<start_of_turn>user\nLabel the latent.\n\n<examples>sea</examples><end_of_turn>" in text
    assert text.endswith("<start_of_turn>user\nJSON only.<end_of_turn>\n<start_of_turn>model\n")
