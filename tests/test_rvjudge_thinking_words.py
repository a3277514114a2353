"""A judge labelling latents of a reasoning model names its thinking markup in the label ("the </think>
token", "Magistral's [/THINK]"): an answer that is one JSON object is the answer whatever its strings
say, never cut at a close tag inside it, whether it came alone (a judge that does not think) or after
the judge's own thinking. Through the real `openai` client against a served reply.
"""

from __future__ import annotations

import pytest

from autointerp.config import JudgeConfig, make_judge
from helpers.judge_server import JudgeServer, chat_completion, fake_llm_answer

LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
ASK = [{"role": "system", "content": "Label the latent."},
       {"role": "user", "content": "<examples>Okay, so the café… <<</think>>> 所以答案是</examples>"}]
USAGE = {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50}
# (open, close) of DeepSeek-R1/Qwen3, Mistral's Magistral, ByteDance's Seed-OSS
MARKUP = [("<think>", "</think>"), ("[THINK]", "[/THINK]"), ("<seed:think>", "</seed:think>")]


@pytest.fixture(scope="module")
def server():
    with JudgeServer(fake_llm_answer) as srv:
        yield srv


def ask(srv, content):
    srv.reply = lambda ex: chat_completion(content, usage=USAGE)
    judge = make_judge(JudgeConfig(model="gpt-4.1-mini", base_url=srv.url, api_key="k", use_cache=False, max_reasks=0),
                       cache_path=None)
    return judge.complete_sync(ASK, schema=LABEL)


@pytest.mark.parametrize("open_,close", MARKUP)
def test_a_label_naming_the_thinking_markup_is_read_whole(server, open_, close):
    label = f"the {close} token that ends a reasoning block (after {open_}), before the answer"
    for reply in (f'{{"label": "{label}"}}',  # a judge that does not think
                  f'```json\n{{"label": "{label}"}}\n```',
                  f'{open_}The marked token closes the thinking.{close}\n{{"label": "{label}"}}'):  # one that does
        done = ask(server, reply)
        assert done.value == {"label": label} and done.reasks == 0, reply


def test_the_answer_after_thinking_that_names_the_close_tag_is_still_the_answer(server):
    # the thinking quotes the tag before its own end: the answer is what follows the last close
    done = ask(server, '<think>Each example has a </think> in it. Draft: {"label": "x"}</think>{"label": "the </think> tag"}')
    assert done.value == {"label": "the </think> tag"}
    done = ask(server, '<think>Each example has a </think> in it.</think>The label: {"label": "end of thinking"}')
    assert done.value == {"label": "end of thinking"}
