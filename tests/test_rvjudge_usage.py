"""A reply whose usage says 0 prompt tokens (Ollama's /v1 for a prompt its KV cache held: ollama#5370) is
counted as a reply without usage is: the prompt at its bound, said once, so a token budget binds; the output
tokens as the server reported them. Through the real `openai` client against a served reply.
"""

from __future__ import annotations

import warnings

from autointerp.config import JudgeConfig, make_judge
from helpers.judge_server import JudgeServer, chat_completion, fake_llm_answer
from saes.errors import SaesteerWarning

LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
ASK = [{"role": "system", "content": "Label the latent. Reply with JSON only."},
       {"role": "user", "content": "<examples>def sea_level(h): return h * 0.3048  # pieds → mètres, 海拔</examples>"}]


def test_zero_prompt_tokens_are_counted_at_the_bound_and_said_once():
    ollama = chat_completion('{"label": "sea level"}', model="qwen3:8b", usage={
        "prompt_tokens": 0, "completion_tokens": 7, "total_tokens": 7})
    with JudgeServer(fake_llm_answer, reply=lambda ex: ollama) as srv:
        j = make_judge(JudgeConfig(model="qwen3:8b", base_url=srv.url, use_cache=False), cache_path=None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = j.complete_sync(ASK, schema=LABEL)
            j.complete_sync(ASK, schema=LABEL)
    prompt_bytes = sum(len(m["content"].encode()) for m in ASK)
    assert first.value == {"label": "sea level"}
    assert first.prompt_tokens >= prompt_bytes and first.completion_tokens == 7
    assert j.ledger.summary()["prompt_tokens"] >= 2 * prompt_bytes
    notes = [str(w.message) for w in caught if issubclass(w.category, SaesteerWarning)]
    assert len(notes) == 1 and "reports 0 prompt tokens" in notes[0], notes
