"""What a run counts and pays, from the usage real servers report (or do not):

- OpenAI bills prompt tokens its prompt cache served at a discount (`usage.prompt_tokens_details.
  cached_tokens`; DeepSeek: `prompt_cache_hit_tokens`; Anthropic: `cache_read_input_tokens`): the cost
  is priced so, never at the full input price;
- Gemini's OpenAI endpoint (and proxies in front of it) leaves the thinking, billed as output, out of
  `completion_tokens` while `total_tokens` (or `reasoning_tokens`) counts it: the output counted is the
  largest of them;
- a server that sends no `usage` (some llama.cpp builds, proxies) is counted at an upper bound, with a
  note: 0 tokens would report a free run and a --budget that never binds.
"""

from __future__ import annotations

import warnings

import pytest

from autointerp.config import JudgeConfig, make_judge
from autointerp.openai_replies import chat_response
from helpers.judge_server import chat_completion, fake_llm_answer
from helpers.real_cli import saesteer
from saes.errors import SaesteerWarning

LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
ASK = [{"role": "system", "content": "Label the latent."}, {"role": "user", "content": "<examples>sea</examples>"}]


def judge(srv, **cfg):
    kw = dict(model="gpt-4o-mini", base_url=srv.url, api_key="k", use_cache=False, timeout_s=10.0)
    kw.update(cfg)
    return make_judge(JudgeConfig(**kw), cache_path=None)


def test_prompt_tokens_from_openais_prompt_cache_are_priced_at_the_cached_rate(srv):
    usage = {"prompt_tokens": 10_000, "completion_tokens": 100, "total_tokens": 10_100,
             "prompt_tokens_details": {"cached_tokens": 8_192, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0}}
    srv.reply = lambda ex: chat_completion('{"label": "sea"}', usage=usage)
    j = judge(srv)
    done = j.complete_sync(ASK, schema=LABEL)
    # gpt-4o-mini: $0.15 / M input, $0.075 / M cached input, $0.60 / M output
    assert done.cost_usd == pytest.approx((1_808 * 0.15 + 8_192 * 0.075 + 100 * 0.60) / 1e6)
    assert j.ledger.summary()["cost_usd"] == pytest.approx(done.cost_usd, abs=1e-6)  # rounded to 6 places
    assert done.prompt_tokens == 10_000  # every prompt token is still counted as one


def test_a_price_given_for_input_prices_cached_input_alike():
    """A user's --judge-price-input is the only price known for that model: cached tokens are not
    assumed cheaper than it (the cost stays an upper bound)."""
    from autointerp.accounting import Prices

    p = Prices.for_model("gpt-4o-mini", 1.0, 2.0)
    assert p.cost(1_000_000, 0, cached_prompt_tokens=500_000) == pytest.approx(1.0)
    assert Prices.for_model("gpt-4o-mini").cost(1_000_000, 0, 1_000_000) == pytest.approx(0.075)


@pytest.mark.parametrize("usage, cached", [
    ({"prompt_tokens": 900, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 640}}, 640),  # OpenAI
    ({"prompt_tokens": 900, "completion_tokens": 9, "prompt_cache_hit_tokens": 768,
      "prompt_cache_miss_tokens": 132}, 768),  # DeepSeek
    ({"prompt_tokens": 900, "completion_tokens": 9, "prompt_tokens_details": None}, 0),  # vLLM without caching
])
def test_the_cached_prompt_tokens_are_read_where_each_provider_puts_them(usage, cached):
    data = {"choices": [{"message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}], "usage": usage}
    assert chat_response(data).cached_prompt_tokens == cached


def test_claudes_cache_reads_are_counted_as_cached_prompt_tokens():
    from types import SimpleNamespace as NS

    from autointerp.anthropic_messages import message_response

    msg = NS(content=[NS(type="text", text="x")], stop_reason="end_turn",
             usage=NS(input_tokens=12, cache_creation_input_tokens=0, cache_read_input_tokens=2048, output_tokens=3))
    resp = message_response(msg)
    assert (resp.prompt_tokens, resp.cached_prompt_tokens) == (2060, 2048)


@pytest.mark.parametrize("usage, out", [
    # gemini-2.5-flash through generativelanguage.googleapis.com/v1beta/openai: thoughts only in total_tokens
    ({"prompt_tokens": 20, "completion_tokens": 198, "total_tokens": 623}, 603),
    # a proxy that moved them to reasoning_tokens and left completion_tokens 0
    ({"prompt_tokens": 21, "completion_tokens": 0, "total_tokens": 81,
      "completion_tokens_details": {"reasoning_tokens": 60}}, 60),
    ({"prompt_tokens": 21, "completion_tokens": 70, "completion_tokens_details": {"reasoning_tokens": 60}}, 70),
])
def test_thinking_left_out_of_completion_tokens_is_still_paid_for(srv, usage, out):
    srv.reply = lambda ex: chat_completion('{"label": "sea"}', usage=usage)
    done = judge(srv, model="gemini-2.5-flash", price_input=0.30, price_output=2.50).complete_sync(ASK, schema=LABEL)
    assert done.completion_tokens == out
    assert done.cost_usd == pytest.approx((usage["prompt_tokens"] * 0.30 + out * 2.50) / 1e6)


# ---------------------------------------------------------------------------------------------
# no usage at all


def test_a_reply_without_usage_is_counted_at_a_bound_and_said_once(srv):
    srv.reply = lambda ex: chat_completion('{"label": "sea"}', usage=None)
    j = judge(srv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = j.complete_sync(ASK, schema=LABEL)
        j.complete_sync(ASK, schema=LABEL)
    prompt_bytes = sum(len(m["content"].encode()) for m in ASK)
    assert first.prompt_tokens >= prompt_bytes and first.completion_tokens == len('{"label": "sea"}')
    assert first.cost_usd > 0
    notes = [str(w.message) for w in caught if issubclass(w.category, SaesteerWarning)]
    assert len(notes) == 1 and "reports no token usage" in notes[0], notes


def test_saesteer_label_budget_binds_against_a_server_reporting_no_usage(srv, tmp_path):
    from helpers.label_store import build_trigger_store

    path, _ = build_trigger_store(tmp_path / "toy.db", n_latents=6)
    srv.reply = lambda ex: chat_completion(fake_llm_answer(ex.body), usage=None)  # a llama.cpp build without usage
    r = saesteer("label", "--store", path, "--judge-model", "local", "--judge-base-url", srv.url, "--scorers",
                 "detection", "--embed-backend", "none", "--judge-concurrency", 1, "--budget", "15000tokens",
                 "--no-progress")
    assert "reports no token usage" in r.err, r.text
    assert "stopped by the budget" in r.out, r.text
    labelled = int(r.out.split(" labelled")[0].rsplit(" ", 1)[-1])
    assert 0 < labelled < 6, r.out
