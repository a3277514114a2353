"""An error inside a 200 body (OpenRouter's way for errors met while generating, with `code` the status it
would have had; a proxy passing an upstream OpenAI error on) is classified by the same rule as the HTTP
status would be (`sdk_attempt.failure_for`): an account without credit or a refused key stops the run at its
first request, never per-latent failures nor retries; a rate limit is waited out as its words say.
Through the real `openai` client against served replies.
"""

from __future__ import annotations

import pytest

from autointerp.config import JudgeConfig, make_judge
from autointerp.judge import CredentialsRejected, JudgeCall, RequestFailed
from helpers.judge_server import OPENAI_NO_QUOTA, error_in_a_200

LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
ASK = [{"role": "system", "content": "Label the latent."}, {"role": "user", "content": "<examples>sea, mer, 海</examples>"}]


def judge(srv):
    return make_judge(JudgeConfig(model="openai/gpt-4o-mini", base_url=srv.url, api_key="k", max_retries=3,
                                  backoff_base_s=0.001, backoff_max_s=0.002, use_cache=False), cache_path=None)


@pytest.mark.parametrize("error, said", [
    ({"code": 402, "message": "Insufficient credits. Add more using https://openrouter.ai/settings/credits"}, "no credit left"),
    ({"message": OPENAI_NO_QUOTA, "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}, "no credit left"),
    ({"code": 401, "message": "User not found."}, "--judge-api-key"),
], ids=["openrouter-402", "proxied-insufficient_quota", "openrouter-401"])
def test_no_credit_or_a_refused_key_in_a_200_body_stops_at_the_first_request(srv, error, said):
    srv.reply = lambda ex: error_in_a_200(error)
    j = judge(srv)
    with pytest.raises(CredentialsRejected, match=said):
        j.complete_many_sync([JudgeCall(ASK, LABEL), JudgeCall(ASK + [{"role": "user", "content": "2"}], LABEL)])
    assert 1 <= len(srv.exchanges) <= 2  # no retries: each call sent at most once


# a rate limit in a 200 body waits as its words say: tests/test_judgereal_wire.py, with the 429s whose words name the wait


def test_a_bad_request_in_a_200_body_is_not_retried(srv):
    srv.reply = lambda ex: error_in_a_200({"code": 400, "message": "Provider returned error",
                                     "metadata": {"provider_name": "Fireworks", "raw": "invalid schema"}})
    with pytest.raises(RequestFailed, match="provider Fireworks: invalid schema"):
        judge(srv).complete_sync(ASK, schema=LABEL)
    assert len(srv.exchanges) == 1
