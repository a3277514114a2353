"""What a server says about waiting is read within bounds: junk in Retry-After, retry-after-ms or OpenAI's
x-ratelimit-reset-* is no wait (the backoff then), never an error or a negative or NaN sleep; a 429 whose
words ask for minutes ("try again in 25m") pauses the judge at most `JudgeConfig.max_retry_after_s`.
"""

from __future__ import annotations

import math

import httpx
import pytest

from autointerp.config import JudgeConfig, make_judge
from autointerp.wire import parse_rate_limit_reset, parse_retry_after, wait_in_message
from helpers.judge_server import JudgeServer, chat_completion, fake_llm_answer, openai_error

LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
ASK = [{"role": "system", "content": "Label the latent."}, {"role": "user", "content": "<examples>sea</examples>"}]
USAGE = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
JUNK = ["", " ", "nan", "-5", "-0.5s", "soon", "1.5.5s", "5 s", "1e3", "Thu, 32 Foo 2026", "\u0661\u0662", "9" * 400 + "x"]


@pytest.mark.parametrize("value", JUNK)
def test_junk_wait_headers_are_no_wait(value):
    headers = httpx.Headers([(name.encode(), v.encode()) for name, v in {  # as bytes off the wire
        "retry-after": value, "retry-after-ms": value, "x-ratelimit-reset-requests": value,
        "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-tokens": value}.items()])
    for wait in (parse_retry_after(headers), parse_rate_limit_reset(headers)):
        assert wait is None or (wait >= 0 and not math.isnan(wait)), (value, wait)


@pytest.mark.parametrize("message", ["Please try again in soon.", "retry after a while", "try again in -3s",
                                     "try again in " + "9" * 5000, "x" * 100_000])
def test_junk_in_a_rate_limit_message_is_no_wait(message):
    assert wait_in_message(message) is None


def test_a_429_asking_for_minutes_pauses_the_judge_at_most_max_retry_after_s():
    """(One asking for hours is a quota spent for the day: the run stops, tests/test_judgereal_quota.py.)"""
    replies = iter([openai_error(429, "Rate limit reached for model `llama-3.3-70b-versatile` on tokens per day (TPD): "
                                 "Limit 100000, Used 99990, Requested 900. Please try again in 25m0.5s.", "tokens",
                                 "rate_limit_exceeded")])
    slept = []

    async def sleep(s):
        slept.append(s)

    with JudgeServer(fake_llm_answer, reply=lambda ex: next(replies, None)
                     or chat_completion('{"label": "sea"}', usage=USAGE)) as srv:
        j = make_judge(JudgeConfig(model="llama-3.3-70b-versatile", base_url=srv.url, api_key="k", use_cache=False,
                                   max_retry_after_s=120.0), cache_path=None, sleep=sleep)
        assert j.complete_sync(ASK, schema=LABEL).value == {"label": "sea"}
    (_, delay), = j.retry_log
    assert 120.0 <= delay <= 132.0  # the cap (plus its 10% jitter), not 25 minutes
    assert slept and max(slept) <= 132.0


def test_a_tokens_per_minute_429_waits_as_its_message_says_not_for_the_request_limits_reset():
    """OpenAI sends every x-ratelimit header with a 429; a request too big for the tokens left this minute
    finds neither limit at 0 (the request was not counted), and the requests limit resets in milliseconds:
    the wait is the one the message names for the limit met, not a retry 12 ms later that meets it again."""
    headers = {"x-ratelimit-limit-requests": "5000", "x-ratelimit-remaining-requests": "4999",
               "x-ratelimit-reset-requests": "12ms", "x-ratelimit-limit-tokens": "30000",
               "x-ratelimit-remaining-tokens": "28850", "x-ratelimit-reset-tokens": "2.3s"}
    replies = iter([openai_error(429, "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): "
                                 "Limit 30000, Used 28850, Requested 2400. Please try again in 2.5s. Visit "
                                 "https://platform.openai.com/account/rate-limits to learn more.", "tokens",
                                 "rate_limit_exceeded", headers)])

    async def sleep(s):
        pass

    with JudgeServer(fake_llm_answer, reply=lambda ex: next(replies, None)
                     or chat_completion('{"label": "sea"}', usage=USAGE)) as srv:
        j = make_judge(JudgeConfig(model="gpt-4o", base_url=srv.url, api_key="k", use_cache=False), cache_path=None,
                       sleep=sleep)
        assert j.complete_sync(ASK, schema=LABEL).value == {"label": "sea"}
    (_, delay), = j.retry_log
    assert 2.5 <= delay <= 2.75
