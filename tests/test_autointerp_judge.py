"""The Judge against a loopback OpenAI-compatible server that injects faults."""

from __future__ import annotations

import asyncio
import json

import pytest

from autointerp.accounting import Budget, BudgetExceeded, Ledger, Prices
from autointerp.backends import OpenAIBackend
from autointerp.cache import ResponseCache
from autointerp.judge import AnswerInvalid, Judge, JudgeCall, RequestFailed, RetryPolicy
from autointerp.prompts import LABEL_SCHEMA, parse_label
from helpers.judge_server import FaultPlan, JudgeServer

MSGS = [{"role": "system", "content": "Reply with JSON."}, {"role": "user", "content": "label this"}]
FAST = RetryPolicy(max_retries=4, base_s=0.01, max_s=0.02, max_retry_after_s=0.05)


def answer(body):
    return json.dumps({"label": "ocean"})


class SleepLog:
    """A fake asyncio.sleep that records the delays asked for (and does not wait)."""

    def __init__(self):
        self.delays = []

    async def __call__(self, d):
        self.delays.append(d)
        await asyncio.sleep(0)


def make_judge(srv, *, retry=FAST, timeout_s=5.0, **kw):
    return Judge(OpenAIBackend("fake-judge", base_url=srv.url, timeout_s=timeout_s), retry=retry, **kw)


def scripted(*faults):
    """Fault i for request i, none afterwards."""
    return lambda i, body: faults[i] if i < len(faults) else None


@pytest.mark.parametrize("fault", ["429", "500", "503", "reset", "bad_body"])
def test_transient_faults_are_retried(fault):
    with JudgeServer(answer, script=scripted(fault, fault)) as srv:
        judge = make_judge(srv)
        done = judge.complete_sync(MSGS, LABEL_SCHEMA, validate=parse_label)
        assert done.value == "ocean"
        assert done.requests == 3 and len(srv.records) == 3
        assert judge.ledger.totals.retries == 2


def test_timeout_is_retried():
    with JudgeServer(answer, script=scripted("timeout"), timeout_hold_s=1.0) as srv:
        judge = make_judge(srv, timeout_s=0.3)
        done = judge.complete_sync(MSGS, LABEL_SCHEMA)
        assert done.value == {"label": "ocean"} and done.requests == 2
        assert "timed out" in judge.retry_log[0][0]


@pytest.mark.parametrize("fault", ["400"])
def test_other_4xx_is_not_retried(fault):
    with JudgeServer(answer, script=lambda i, b: fault) as srv:
        judge = make_judge(srv)
        with pytest.raises(RequestFailed, match="400"):
            judge.complete_sync(MSGS, LABEL_SCHEMA)
        assert len(srv.records) == 1


def test_unknown_model_404_is_not_retried():
    with JudgeServer(answer, model_check="other-model") as srv:
        with pytest.raises(RequestFailed, match="404"):
            make_judge(srv).complete_sync(MSGS, LABEL_SCHEMA)
        assert len(srv.records) == 1


def test_retries_are_bounded():
    with JudgeServer(answer, script=lambda i, b: "500") as srv:
        judge = make_judge(srv, retry=RetryPolicy(max_retries=2, base_s=0.0, max_s=0.0))
        with pytest.raises(RequestFailed, match="3 attempts"):
            judge.complete_sync(MSGS, LABEL_SCHEMA)
        assert len(srv.records) == 3


def test_retry_after_is_honoured_and_pauses_everyone():
    sleep = SleepLog()
    with JudgeServer(answer, script=scripted("429"), retry_after_s=7, retry_after_ms=None) as srv:
        judge = make_judge(srv, retry=RetryPolicy(max_retries=3, base_s=0.01, max_s=0.02, max_retry_after_s=60),
                           sleep=sleep)
        assert judge.complete_sync(MSGS, LABEL_SCHEMA).value == {"label": "ocean"}
    assert 7.0 <= sleep.delays[0] <= 7.7  # Retry-After: 7 (plus at most 10% jitter), not the 0.01 s backoff
    # the shared pause: the retry itself waited for the same deadline before going out
    assert len(sleep.delays) >= 2 and sleep.delays[1] > 6.0


@pytest.mark.parametrize("fault", ["fenced", "prose"])
def test_fenced_and_prose_answers_are_accepted_without_reask(fault):
    with JudgeServer(answer, script=scripted(fault)) as srv:
        done = make_judge(srv).complete_sync(MSGS, LABEL_SCHEMA, validate=parse_label)
        assert done.value == "ocean" and done.reasks == 0 and len(srv.records) == 1


@pytest.mark.parametrize("fault", ["malformed", "refusal", "wrong_length", "bad_schema"])
def test_invalid_answers_are_reasked_with_the_reason(fault):
    with JudgeServer(answer, script=scripted(fault)) as srv:
        done = make_judge(srv).complete_sync(MSGS, LABEL_SCHEMA, validate=parse_label)
        assert done.value == "ocean" and done.reasks == 1
        second = srv.records[1].messages
        assert len(second) == len(MSGS) + 2 and second[-2]["role"] == "assistant"
        assert "could not be used" in second[-1]["content"]


def test_invalid_answers_forever_raise_and_are_bounded():
    with JudgeServer(answer, script=lambda i, b: "malformed") as srv:
        judge = make_judge(srv, max_reasks=2)
        with pytest.raises(AnswerInvalid, match="3 asks"):
            judge.complete_sync(MSGS, LABEL_SCHEMA)
        assert len(srv.records) == 3


def test_cache_answers_repeats_for_free(tmp_path):
    with JudgeServer(answer, script=scripted("malformed")) as srv:
        judge = make_judge(srv, cache=ResponseCache(tmp_path / "cache.sqlite"),
                           ledger=Ledger(Prices("fake-judge", 1.0, 1.0)))
        first = judge.complete_sync(MSGS, LABEL_SCHEMA)
        assert first.requests == 2 and first.prompt_tokens > 0
        again = Judge(OpenAIBackend("fake-judge", base_url=srv.url), cache=ResponseCache(tmp_path / "cache.sqlite"))
        second = again.complete_sync(MSGS, LABEL_SCHEMA)
        assert second.value == first.value and second.requests == 0 and second.cached == 2
        assert second.prompt_tokens == 0 and second.cost_usd == 0.0
        assert len(srv.records) == 2
        # a different model is a different key
        other = Judge(OpenAIBackend("other", base_url=srv.url), cache=ResponseCache(tmp_path / "cache.sqlite"))
        other.complete_sync(MSGS, LABEL_SCHEMA)
        assert len(srv.records) == 3


def test_budget_refuses_before_sending():
    with JudgeServer(answer) as srv:
        judge = make_judge(srv, ledger=Ledger(Prices("fake-judge", 1.0, 1.0), Budget(160, "tokens")), max_tokens=80)
        judge.complete_sync(MSGS, LABEL_SCHEMA)  # bound 26 bytes + 32 framing + 80 = 138 fits; 12 spent
        with pytest.raises(BudgetExceeded):  # 12 + (35 + 40 + 80) > 160
            judge.complete_sync(MSGS + [{"role": "user", "content": "and again"}], LABEL_SCHEMA)
        assert len(srv.records) == 1
        assert judge.ledger.spent_tokens <= 160


def test_concurrency_bound_and_complete_many():
    with JudgeServer(answer, latency_s=0.3) as srv:
        judge = make_judge(srv, concurrency=3)
        calls = [JudgeCall([{"role": "user", "content": f"item {i}"}], LABEL_SCHEMA) for i in range(12)]
        out = judge.complete_many_sync(calls)
        assert [c.value["label"] for c in out] == ["ocean"] * 12
        assert 1 < srv.max_inflight <= 3


def test_free_text_and_sync_calls_inside_a_running_loop():
    """complete_sync works where an event loop runs (a Jupyter cell): tests/test_notebook_judge.py."""
    with JudgeServer(lambda b: "A fluent sentence.") as srv:
        judge = make_judge(srv)
        assert judge.complete_sync(MSGS).value == "A fluent sentence."

        async def inside():
            return judge.complete_sync(MSGS).value

        assert asyncio.run(inside()) == "A fluent sentence."


def test_steering_style_rating_schema():
    """The generic call the steering evals use: a custom schema and validator."""
    schema = {"type": "object", "properties": {"concept": {"type": "integer", "minimum": 0, "maximum": 2},
                                               "fluency": {"type": "integer", "minimum": 0, "maximum": 2}},
              "required": ["concept", "fluency"]}
    replies = iter(['{"concept": 3, "fluency": 1}', '```json\n{"concept": 2, "fluency": 1}\n```'])
    with JudgeServer(lambda b: next(replies)) as srv:
        done = make_judge(srv).complete_sync(MSGS, schema, validate=lambda v: (v["concept"], v["fluency"]))
        assert done.value == (2, 1) and done.reasks == 1
        assert "<= 2" in srv.records[1].messages[-1]["content"]


def test_random_faults_mixture_all_succeed():
    rates = {"429": 0.1, "500": 0.1, "reset": 0.05, "bad_body": 0.05, "malformed": 0.05, "fenced": 0.05}
    with JudgeServer(answer, faults=FaultPlan(rates, seed=3)) as srv:
        judge = make_judge(srv, retry=RetryPolicy(max_retries=8, base_s=0.005, max_s=0.01, max_retry_after_s=0.02),
                           concurrency=4, max_reasks=4)
        out = judge.complete_many_sync([JudgeCall([{"role": "user", "content": f"q{i}"}], LABEL_SCHEMA) for i in range(30)])
        assert all(getattr(c, "value", None) == {"label": "ocean"} for c in out), out
        assert sum(1 for r in srv.records if r.fault) > 5


def test_retry_after_pauses_calls_that_were_queued_for_a_slot():
    """A 429 asking for 1 s pauses every call, also those waiting for a concurrency slot at the time:
    no request reaches the server until the pause is over. The 429 answers after 0.05 s and the other
    call in flight after 0.3 s, so the queued calls get their slot after the client has seen the 429
    (a call let out before the 429 reached the client could not know of it)."""
    with JudgeServer(answer, script=scripted("429"), retry_after_s=1, retry_after_ms=None, latency_s=0.3,
                     fault_latency_s=0.05) as srv:
        judge = make_judge(srv, retry=RetryPolicy(max_retries=3, base_s=0.01, max_s=0.02, max_retry_after_s=5),
                           concurrency=2, seed=0)
        calls = [JudgeCall([{"role": "user", "content": f"item {i}"}], LABEL_SCHEMA) for i in range(6)]
        out = judge.complete_many_sync(calls)
        records = srv.snapshot()
    assert [c.value for c in out] == [{"label": "ocean"}] * 6
    limited = records[0]
    assert limited.status == 429 and len(records) == 7
    pause_end = limited.answered + 1.0  # Retry-After: 1 (the client adds 0-10% jitter on top)
    after = [r for r in records[1:] if r.arrived > limited.answered]
    assert len(after) >= 4  # the retry and the calls that were queued behind the two slots
    early = [(r.index, round(r.arrived - limited.answered, 3)) for r in after if r.arrived < pause_end - 0.02]
    assert not early, f"requests sent during the Retry-After pause (index, seconds after the 429): {early}"


def test_a_trickling_server_cannot_hold_a_request_past_the_deadline():
    """One byte every 0.5 s never trips a per-read timeout; the 2 s deadline of the whole attempt
    does, and the retry gets the answer. (Trickled whole, the body would take minutes.)"""
    with JudgeServer(answer, script=scripted("trickle"), trickle_interval_s=0.5) as srv:
        judge = make_judge(srv, timeout_s=2.0)
        done = judge.complete_sync(MSGS, LABEL_SCHEMA)
        first = srv.snapshot()[0]
    assert done.value == {"label": "ocean"} and done.requests == 2
    assert judge.retry_log[0][0].startswith("timed out after 2 s")
    assert first.fault == "trickle" and not first.completed


def test_budget_is_never_crossed_by_a_server_counting_a_token_per_character():
    """The reservation is an upper bound (a token per prompt byte + framing + max_tokens), so a server
    that counts one token per character cannot push the spending over the budget; a call is refused
    only when it could cross the budget with nothing else in flight."""
    from autointerp.accounting import prompt_token_bound

    budget = 2500
    calls = [JudgeCall([{"role": "system", "content": "Reply with JSON."},
                        {"role": "user", "content": f"item {i} " + "word " * (10 + 7 * (i % 5))}], LABEL_SCHEMA)
             for i in range(40)]
    with JudgeServer(answer, tokens_per_char=1.0) as srv:
        judge = make_judge(srv, ledger=Ledger(Prices("fake-judge", 1.0, 1.0), Budget(budget, "tokens")),
                           concurrency=4, max_tokens=32)
        out = judge.complete_many_sync(calls)
        n_requests = len(srv.records)
    spent = judge.ledger.spent_tokens
    done = [c for c in out if not isinstance(c, Exception)]
    refused = [i for i, c in enumerate(out) if isinstance(c, BudgetExceeded)]
    assert spent <= budget, f"spent {spent} tokens of a {budget}-token budget"
    assert refused and len(done) == n_requests == 40 - len(refused)
    assert spent == sum(c.prompt_tokens + c.completion_tokens for c in done)
    for i in refused:  # refused only when it could have crossed the budget
        assert spent + prompt_token_bound(list(calls[i].messages)) + 32 > budget
