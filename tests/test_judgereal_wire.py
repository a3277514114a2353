"""The judge against what real providers send when things go wrong, as users meet it (`saesteer label`,
`make_judge(JudgeConfig(...))`), each reply built as the provider writes it (tests/helpers/judge_server.py):

- OpenAI's 429 `insufficient_quota` (an account with no credit) and a 402 (OpenRouter, DeepSeek,
  Anthropic's `billing_error`): no wait helps, so they are never retried as rate limits: the run stops
  at once, in one line saying what to change;
- OpenAI's rate-limit 429 carries no Retry-After, only `x-ratelimit-reset-requests: 1m30s`: the retry
  waits that long (for every request of the judge), not a second of backoff that meets the same 429;
- LM Studio answers a route it lacks (a base URL without /v1) with a 200 holding
  `{"error": "Unexpected endpoint or method..."}`: not retried, and the error gives the URL with /v1.
"""

from __future__ import annotations

import json

import pytest

from autointerp.config import JudgeConfig, make_judge
from autointerp.judge import CredentialsRejected, RequestFailed
from autointerp.wire import parse_rate_limit_reset
from helpers.judge_server import (OPENAI_NO_QUOTA, OPENAI_RATE_LIMIT_HEADERS, chat_completion, error_in_a_200,
                                  first_then, lmstudio_wrong_route, openai_error)
from helpers.real_cli import flags_named, known_flags, saesteer

LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
ASK = [{"role": "system", "content": "Label the latent."}, {"role": "user", "content": "<examples>sea</examples>"}]
USAGE = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
SEA = chat_completion('{"label": "sea"}', usage=USAGE)


def judge(srv, *, base_url=None, sleep=None, **cfg):
    kw = dict(model="judge-model", base_url=base_url or srv.url, api_key="k", max_retries=2, backoff_base_s=0.001,
              backoff_max_s=0.002, use_cache=False, timeout_s=10.0)
    kw.update(cfg)
    return make_judge(JudgeConfig(**kw), cache_path=None, sleep=sleep)


# ---------------------------------------------------------------------------------------------
# an account with no credit


@pytest.mark.parametrize("reply", [
    openai_error(429, OPENAI_NO_QUOTA, "insufficient_quota", "insufficient_quota"),
    # OpenRouter's and DeepSeek's words for the same thing, with 402
    openai_error(402, "Insufficient credits. Add more using https://openrouter.ai/settings/credits", "payment_required"),
    openai_error(402, "Insufficient Balance", "unknown_error", "invalid_request_error"),
], ids=["openai-429-insufficient_quota", "openrouter-402", "deepseek-402"])
def test_an_account_without_credit_stops_at_its_first_request_never_retried(srv, reply):
    srv.reply = lambda ex: reply
    with pytest.raises(CredentialsRejected, match="no credit left") as e:
        judge(srv, max_retries=4).complete_sync(ASK, schema=LABEL)
    assert len(srv.chat_exchanges()) == 1  # one request: no backoff, no retry
    assert "--judge-api-key" in e.value.reason


@pytest.mark.parametrize("message, said", [
    ("Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or "
     "purchase credits.", "credit balance is too low.*no credit left"),
    # the spend limit a workspace set for itself: no request passes before the day it names
    ("You have reached your specified API usage limits. You will regain access on 2026-04-01 at 00:00 UTC.",
     "regain access on 2026-04-01.*quota for this key is spent.*rerunning the same command resumes"),
], ids=["credit-too-low", "spend-limit"])
def test_claude_with_no_credit_or_its_spend_limit_reached_stops_at_its_first_request(srv, message, said):
    """Anthropic says both with a 400 invalid_request_error (a 402 billing_error where billing fails)."""
    low = (400, {}, json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": message},
                                "request_id": "req_1"}).encode())
    srv.reply = lambda ex: low
    j = make_judge(JudgeConfig(backend="anthropic", model="claude-haiku-4-5", base_url=srv.root, api_key="k",
                               max_retries=3, use_cache=False), cache_path=None)
    with pytest.raises(CredentialsRejected, match=said):
        j.complete_sync(ASK, schema=LABEL)
    with pytest.raises(CredentialsRejected):  # and nothing more is sent
        j.complete_sync(ASK, schema=LABEL)
    assert len(srv.exchanges) == 1


def test_saesteer_label_stops_at_an_exhausted_quota_in_one_line(srv, tmp_path, monkeypatch):
    from helpers.label_store import build_trigger_store

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path, _ = build_trigger_store(tmp_path / "toy.db", n_latents=6)
    srv.reply = lambda ex: openai_error(429, OPENAI_NO_QUOTA, "insufficient_quota", "insufficient_quota")
    r = saesteer("label", "--store", path, "--judge-model", "gpt-4o-mini", "--judge-base-url", srv.url,
                 "--judge-api-key", "sk-test", "--judge-concurrency", 1, "--judge-backoff-base-s", 0.001,
                 "--judge-backoff-max-s", 0.002, "--no-progress").no_traceback()
    assert r.rc == 2, r.text
    err = r.err.strip()
    assert len(err.splitlines()) <= 2 and "You exceeded your current quota" in err and "no credit left" in err, err
    assert flags_named(err) <= known_flags("label")
    assert len(srv.chat_exchanges()) == 1  # the first request said it for every latent


# ---------------------------------------------------------------------------------------------
# OpenAI's rate limit: when it resets is only in x-ratelimit-reset-*


def test_a_rate_limit_429_without_retry_after_waits_for_the_reset_openai_names(srv):
    srv.reply = first_then(openai_error(429, "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 500, "
                                        "Used 500, Requested 1.", "requests", "rate_limit_exceeded",
                                        OPENAI_RATE_LIMIT_HEADERS), then=SEA)
    waited = []

    async def sleep(s):
        waited.append(s)

    j = judge(srv, sleep=sleep)
    assert j.complete_sync(ASK, schema=LABEL).value == {"label": "sea"}
    (_, delay), = j.retry_log
    assert 90.0 <= delay <= 99.0  # 1m30s, plus at most 10% jitter; not a backoff of milliseconds
    assert waited and 89.0 <= max(waited) <= 99.0  # the shared pause was slept through


@pytest.mark.parametrize("headers, wait", [
    (OPENAI_RATE_LIMIT_HEADERS, 90.0),  # the requests limit is the one spent
    ({**OPENAI_RATE_LIMIT_HEADERS, "x-ratelimit-remaining-requests": "3", "x-ratelimit-remaining-tokens": "0",
      "x-ratelimit-reset-tokens": "6m0s"}, 360.0),
    ({"x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "1.5s"}, 0.02),  # neither says 0: the sooner
    ({"x-ratelimit-reset-requests": "2h3m4s"}, 7384.0),
    ({"x-ratelimit-reset-requests": "soon"}, None),
    ({}, None),
])
def test_openais_reset_durations_are_read(headers, wait):
    got = parse_rate_limit_reset(headers)
    assert got == pytest.approx(wait) if wait is not None else got is None


def _limited(message):
    return openai_error(429, message, "tokens", "rate_limit_exceeded")


@pytest.mark.parametrize("reply, wait", [
    (_limited("Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): Limit 200000, Used "
              "199500, Requested 1200. Please try again in 4.5s. Visit https://platform.openai.com/account/rate-limits"),
     4.5),
    (_limited("Rate limit reached for model `llama-3.3-70b-versatile` on tokens per day (TPD): Limit 100000, Used "
              "99800, Requested 900. Please try again in 2m36.48s."), 156.48),  # Groq
    (_limited("Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
              "exceeded token rate limit of your current AIServices S0 pricing tier. Please retry after 6 seconds."),
     6.0),
    # OpenRouter's rate limit met while generating: an error in a 200 body, classified as its code's status
    (error_in_a_200({"code": 429, "message": "Rate limit exceeded: try again in 7s"}), 7.0),
], ids=["openai-tpm", "groq-tpd", "azure", "openrouter-in-a-200"])
def test_a_429_whose_headers_a_proxy_dropped_waits_as_long_as_its_message_says(srv, reply, wait):
    srv.reply = first_then(reply, then=SEA)

    async def sleep(s):
        pass

    j = judge(srv, sleep=sleep)
    assert j.complete_sync(ASK, schema=LABEL).value == {"label": "sea"}
    (_, delay), = j.retry_log
    assert wait <= delay <= wait * 1.1


def test_a_server_error_is_not_paused_by_rate_limit_headers_that_come_with_every_reply(srv):
    srv.reply = first_then(openai_error(500, "The server had an error processing your request.", "server_error", None,
                                        OPENAI_RATE_LIMIT_HEADERS), then=SEA)
    j = judge(srv)
    assert j.complete_sync(ASK, schema=LABEL).value == {"label": "sea"}
    (_, delay), = j.retry_log
    assert delay <= 0.002  # the backoff, not the rate limit's reset


# ---------------------------------------------------------------------------------------------
# LM Studio without /v1


def test_lm_studio_without_v1_is_said_at_once_with_the_url_to_use(srv):
    srv.reply = lambda ex: (chat_completion('{"label": "sea"}', usage=USAGE) if ex.path.startswith("/v1/")
                            else lmstudio_wrong_route(ex.path))
    with pytest.raises(RequestFailed) as e:
        judge(srv, base_url=srv.root).complete_sync(ASK, schema=LABEL)
    assert "Unexpected endpoint or method. (POST /chat/completions)" in e.value.reason
    assert f"{srv.root}/v1" in e.value.reason
    assert len(srv.chat_exchanges()) == 1  # not retried
    assert judge(srv, base_url=srv.url).complete_sync(ASK, schema=LABEL).value == {"label": "sea"}


# ---------------------------------------------------------------------------------------------
# the server's own word on retrying, and a prompt over the model's context


@pytest.mark.parametrize("status, header, sent", [
    (500, "false", 1),  # an error the server says a retry will not mend
    (409, "true", 2),  # a lock timeout it says a retry will
    (500, None, 2),
])
def test_x_should_retry_overrules_the_status_as_in_both_sdks(srv, status, header, sent):
    headers = {"x-should-retry": header} if header else {}
    srv.reply = first_then(openai_error(status, "The server had an error while processing your request.",
                                        "server_error", None, headers), then=SEA)
    j = judge(srv)
    if sent == 1:
        with pytest.raises(RequestFailed, match="HTTP 500"):
            j.complete_sync(ASK, schema=LABEL)
    else:
        assert j.complete_sync(ASK, schema=LABEL).value == {"label": "sea"}
    assert len(srv.chat_exchanges()) == sent


@pytest.mark.parametrize("reply", [
    openai_error(400, "This model's maximum context length is 4096 tokens. However, you requested 4352 tokens (4096 "
                 "in the messages, 256 in the completion). Please reduce the length of the messages or completion.",
                 "BadRequestError"),  # vLLM
    openai_error(400, "the request exceeds the available context size, try increasing it", "exceed_context_size_error"),
], ids=["vllm", "llama.cpp"])
def test_a_prompt_over_the_models_context_says_what_to_shorten(srv, reply):
    srv.reply = lambda ex: reply
    with pytest.raises(RequestFailed) as e:
        judge(srv).complete_sync(ASK, schema=LABEL)
    assert "--max-example-tokens" in e.value.reason and "--judge-reasoning-tokens" in e.value.reason
    assert flags_named(e.value.reason) <= known_flags("label")
    assert len(srv.chat_exchanges()) == 1


# ---------------------------------------------------------------------------------------------
# nothing listening at the base URL (the server not started, a wrong port)


def test_saesteer_label_against_a_server_not_running_names_its_url(tmp_path):
    import socket

    from helpers.label_store import build_trigger_store

    path, _ = build_trigger_store(tmp_path / "toy.db", n_latents=3)
    # a port bound and never listened on refuses connections, and stays ours while the command runs (a port
    # closed first may be taken by another server meanwhile, or be the client's own port: a self-connect)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        r = saesteer("label", "--store", path, "--judge-model", "qwen3:8b", "--judge-base-url", url, "--scorers",
                     "detection", "--embed-backend", "none", "--judge-max-retries", 1, "--judge-backoff-base-s", 0.001,
                     "--judge-backoff-max-s", 0.002, "--max-consecutive-failures", 2, "--no-progress").no_traceback()
    assert r.rc != 0, r.text
    last = r.text.strip().splitlines()[-1]
    assert f"could not reach {url}" in last and "is the server running there?" in last, r.text
    assert flags_named(last) <= known_flags("label")


# ---------------------------------------------------------------------------------------------
# Azure OpenAI's own key variable


def test_an_azure_deployment_url_takes_its_key_from_azure_openai_api_key(srv, monkeypatch):
    """Azure users keep the key in $AZURE_OPENAI_API_KEY (Azure's client and docs): it is sent in Azure's
    api-key header, never a placeholder that Azure refuses with a 401."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-secret")
    srv.reply = lambda ex: (chat_completion('{"label": "sea"}', usage=USAGE) if ex.headers.get("api-key") == "azure-secret"
                            else openai_error(401, "Access denied due to invalid subscription key or wrong API "
                                              "endpoint.", "invalid_request_error", "401"))
    base = f"{srv.root}/openai/deployments/judge-4o?api-version=2024-10-21"
    j = make_judge(JudgeConfig(model="judge-4o", base_url=base, use_cache=False), cache_path=None)
    assert j.complete_sync(ASK, schema=LABEL).value == {"label": "sea"}


# ---------------------------------------------------------------------------------------------
# OpenRouter: the upstream provider's own error is in the error's metadata


OPENROUTER_PROVIDER_ERROR = {"message": "Provider returned error", "code": 502, "metadata": {
    "provider_name": "Together", "raw": '{"error":{"message":"Input validation error: `inputs` tokens + '
                                        '`max_new_tokens` must be <= 8193"}}'}}


@pytest.mark.parametrize("reply", [
    (200, {}, json.dumps({"error": OPENROUTER_PROVIDER_ERROR, "user_id": "user_1"}).encode()),  # inside a 200
    (502, {}, json.dumps({"error": OPENROUTER_PROVIDER_ERROR}).encode()),
], ids=["200-body", "502"])
def test_openrouters_provider_errors_say_the_provider_and_its_words(srv, reply):
    srv.reply = lambda ex: reply
    with pytest.raises(RequestFailed) as e:
        judge(srv, max_retries=1).complete_sync(ASK, schema=LABEL)
    assert "provider Together" in e.value.reason and "must be <= 8193" in e.value.reason, e.value.reason


def test_openrouters_moderation_refusal_says_why(srv):
    flagged = {"message": "meta-llama/llama-guard flagged your input", "code": 403, "metadata": {
        "reasons": ["violence"], "flagged_input": "the battle...", "provider_name": "OpenAI", "model_slug": "gpt-4o"}}
    srv.reply = lambda ex: (403, {}, json.dumps({"error": flagged}).encode())
    with pytest.raises(RequestFailed) as e:
        judge(srv).complete_sync(ASK, schema=LABEL)
    assert "flagged: violence" in e.value.reason and len(srv.chat_exchanges()) == 1
