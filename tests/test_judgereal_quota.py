"""A quota spent for the day is not a rate limit to sit out: the run stops at once, in one line naming the
provider's words, when the quota comes back if the server said, and that a rerun resumes (labels written are
kept). Each reply is built as the provider writes it (tests/helpers/judge_server.py), read through the real
`openai` client:

- Gemini's OpenAI endpoint sends the same 429 RESOURCE_EXHAUSTED words ("You exceeded your current quota")
  and a retryDelay of seconds for its per-minute and its per-day quotas; only the QuotaFailure's quotaId
  says which: per day stops, per minute waits the seconds its message names;
- OpenRouter's free-models-per-day 429 carries its reset time in the body's metadata;
- a wait of hours (Groq's "tokens per day ... try again in 7h12m", a Retry-After of hours) stops, where
  before every retry waited out --judge-max-retry-after-s (six retries: half an hour for nothing).
"""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest

from autointerp.config import JudgeConfig, make_judge
from autointerp.judge import CredentialsRejected
from autointerp.wire import wait_in_message
from helpers.judge_server import (chat_completion, fake_llm_answer, first_then, gemini_quota_error, openai_error,
                                  openrouter_free_models_429)
from helpers.real_cli import flags_named, known_flags, saesteer

LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
ASK = [{"role": "system", "content": "Label the latent."},
       {"role": "user", "content": "<examples>def niveau_de_la_mer(h): return h * 0.3048  # 海拔</examples>"}]
USAGE = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
PER_DAY = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
PER_MINUTE = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"


def judge(srv, slept, **cfg):
    async def sleep(s):
        slept.append(s)

    kw = dict(model="gemini-2.5-flash", base_url=srv.url, api_key="k", max_retries=3, use_cache=False, timeout_s=10.0)
    kw.update(cfg)
    return make_judge(JudgeConfig(**kw), cache_path=None, sleep=sleep)


def then_answer(*first):
    return first_then(*first, then=chat_completion('{"label": "sea level"}', usage=USAGE))


def test_geminis_per_day_quota_stops_at_its_first_429_never_waited_out(srv):
    srv.reply = then_answer(*[gemini_quota_error(PER_DAY)] * 4)
    slept = []
    j = judge(srv, slept)
    # Gemini's daily quotas reset at midnight Pacific time and are counted per Google Cloud project
    with pytest.raises(CredentialsRejected, match="You exceeded your current quota.*quota for this key is spent until "
                                                  "midnight Pacific time.*another project.*rerunning the same command "
                                                  "resumes"):
        j.complete_sync(ASK, schema=LABEL)
    with pytest.raises(CredentialsRejected):  # and the judge sends nothing more
        j.complete_sync(ASK, schema=LABEL)
    assert len(srv.chat_exchanges()) == 1 and slept == []


def test_geminis_per_minute_quota_waits_the_seconds_its_message_names(srv):
    srv.reply = then_answer(gemini_quota_error(PER_MINUTE, retry_s=36.4))
    slept = []
    assert judge(srv, slept).complete_sync(ASK, schema=LABEL).value == {"label": "sea level"}
    assert len(srv.chat_exchanges()) == 2
    # RetryInfo's "36s" (the message's "Please retry in 36.4s." is past what an error message keeps), plus
    # jitter: not a second of backoff that meets the same 429
    assert 36.0 <= slept[0] <= 36.4 * 1.1


def test_openrouters_free_models_per_day_stops_saying_when_they_come_back(srv):
    reset = dt.datetime(2026, 12, 8, 0, 0, tzinfo=dt.timezone.utc)
    srv.reply = then_answer(*[openrouter_free_models_429(int(reset.timestamp() * 1000))] * 4)
    with pytest.raises(CredentialsRejected, match="free-models-per-day.*spent until 2026-12-08 00:00 UTC"):
        judge(srv, [], model="meta-llama/llama-3.3-70b-instruct:free").complete_sync(ASK, schema=LABEL)
    assert len(srv.chat_exchanges()) == 1


@pytest.mark.parametrize("reply", [
    gemini_quota_error("GenerateContentInputTokensPerModelPerMinute-FreeTier", retry_s=20.04),
    openrouter_free_models_429(1765152060000, per="min"),
    openai_error(429, "Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): Limit 200000, "
                 "Used 199500, Requested 1200. Please try again in 4.5s.", "tokens", "rate_limit_exceeded",
                 {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "8.64s"}),
    # OpenAI's per-day request limit asks for seconds: it refills as the day goes
    openai_error(429, "Rate limit reached for gpt-4o-mini in organization org-x on requests per day (RPD): Limit "
                 "10000, Used 10000, Requested 1. Please try again in 8.64s.", "requests", "rate_limit_exceeded"),
], ids=["gemini-input-tokens-per-minute", "openrouter-free-models-per-min", "openai-tpm", "openai-rpd"])
def test_a_per_minute_429_is_waited_out_never_a_stop(srv, reply):
    """A false stop ends a run that one short wait would have finished: every rate limit of seconds is retried."""
    srv.reply = then_answer(reply)
    slept = []
    assert judge(srv, slept).complete_sync(ASK, schema=LABEL).value == {"label": "sea level"}
    assert len(srv.chat_exchanges()) == 2 and 0 < max(slept) < 60  # seconds, as the server asked


@pytest.mark.parametrize("reply", [
    openai_error(429, "Rate limit reached for model `llama-3.3-70b-versatile` in organization org_1 service tier "
                 "on_demand on tokens per day (TPD): Limit 100000, Used 99990, Requested 900. Please try again in "
                 "7h12m0.5s. Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing",
                 "tokens", "rate_limit_exceeded"),
    openai_error(429, "Too many requests", "rate_limit_error", None, {"Retry-After": "14400"}),
], ids=["groq-tokens-per-day", "retry-after-4h"])
def test_a_429_asking_to_wait_hours_stops_at_once(srv, reply):
    srv.reply = then_answer(*[reply] * 4)
    slept = []
    with pytest.raises(CredentialsRejected, match=r"asks to wait (7\.2|4\.0) h"):
        judge(srv, slept, model="llama-3.3-70b-versatile").complete_sync(ASK, schema=LABEL)
    assert len(srv.chat_exchanges()) == 1 and slept == []
    with pytest.raises(CredentialsRejected):  # a run stop, not one latent's failure, with no retries allowed too
        judge(srv, slept, model="llama-3.3-70b-versatile", max_retries=0).complete_sync(ASK, schema=LABEL)


def test_a_server_down_for_hours_stops_without_blaming_a_quota(srv):
    """A 503 with a Retry-After of hours (maintenance) stops as a wait of hours does, but its words are no
    quota's: the fix is to rerun later, not another key."""
    srv.reply = then_answer(*[openai_error(503, "Service Unavailable: scheduled maintenance", "server_error", None,
                                           {"Retry-After": "7200"})] * 4)
    slept = []
    with pytest.raises(CredentialsRejected, match="maintenance.*asks to wait 2.0 h before the next request") as e:
        judge(srv, slept).complete_sync(ASK, schema=LABEL)
    assert "quota" not in str(e.value) and "--judge-api-key" not in str(e.value)
    assert len(srv.chat_exchanges()) == 1 and slept == []


def test_saesteer_label_stops_at_a_spent_daily_quota_and_a_rerun_resumes(srv, tmp_path, monkeypatch):
    """Labels written before the quota ran out are kept; the rerun (quota back) labels only the rest."""
    from features import FeatureStore
    from helpers.label_store import build_trigger_store

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path, _ = build_trigger_store(tmp_path / "toy.db", n_latents=5)
    lock, answered = threading.Lock(), []

    def quota_after_four(ex):
        with lock:
            if len(answered) >= 4:
                return gemini_quota_error(PER_DAY)
            answered.append(ex)
        return chat_completion(fake_llm_answer(ex.body), usage=USAGE)

    srv.reply = quota_after_four
    args = ("label", "--store", path, "--judge-model", "gemini-2.5-flash", "--judge-base-url", srv.url,
            "--judge-api-key", "k", "--judge-concurrency", 1, "--scorers", "detection", "--embed-backend", "none",
            "--no-progress")
    r = saesteer(*args).no_traceback()
    assert r.rc == 2, r.text
    err = r.err.strip()
    assert len(err.splitlines()) <= 2, err
    assert "You exceeded your current quota" in err and "resumes" in err and "--judge-api-key" in err, err
    assert flags_named(err) <= known_flags("label")
    with FeatureStore.open(path) as st:
        kept = {i for i in range(5) if st.feature(i).label is not None}
    assert 1 <= len(kept) < 5  # the latents whose requests were answered (2 requests each)

    srv.reply = lambda ex: chat_completion(fake_llm_answer(ex.body), usage=USAGE)  # the quota is back
    again = saesteer(*args)
    assert again.rc == 0, again.text
    assert f"{len(kept)} already labelled" in again.out and f"{5 - len(kept)} labelled" in again.out, again.out


def test_gemini_error_list_body_is_what_the_client_hands_over():
    """The helper's list body, as the openai client parses it, is the one the quota rule reads."""
    from autointerp.sdk_attempt import daily_quota, error_object

    status, _, raw = gemini_quota_error(PER_DAY)
    err = error_object(json.loads(raw))
    assert status == 429 and err["status"] == "RESOURCE_EXHAUSTED" and daily_quota(err, err["message"])
    assert not daily_quota(error_object(json.loads(gemini_quota_error(PER_MINUTE)[2])), err["message"])
    assert wait_in_message("Quota exceeded for metric: x\nPlease retry in 36.429760048s.") == pytest.approx(36.43, abs=0.01)
