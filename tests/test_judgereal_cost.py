"""What a run's cost report says, from what real providers bill:

- prompt tokens a provider's prompt cache served are billed at its cached-input price, which the user gives
  (--judge-price-cached-input) for a model outside the built-in table: DeepSeek's `prompt_cache_hit_tokens`,
  OpenAI's `prompt_tokens_details.cached_tokens`, Anthropic's `cache_read_input_tokens`;
- prompt tokens Anthropic writes to its prompt cache are billed above the input price: 1.25 times it for a
  write kept 5 minutes (the default; a bare `cache_creation_input_tokens`), 2 times for one kept an hour
  (`usage.cache_creation.ephemeral_1h_input_tokens`), and behind an OpenAI-compatible endpoint (OpenRouter's
  `prompt_tokens_details.cache_write_tokens`, LiteLLM's `cache_creation_input_tokens`) at the 5-minute rate;
- OpenRouter sends what it billed with every reply (`usage.cost`, USD; `usage: {include: true}` is no longer
  needed): that is the cost, not our estimate from prices, and the report says which it is.
Through the real `openai` and `anthropic` clients against served replies, and `saesteer label`.
"""

from __future__ import annotations

import json
import re

import pytest

from autointerp.config import JudgeConfig, make_judge
from helpers.judge_server import chat_completion, fake_llm_answer
from helpers.real_cli import saesteer

LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
ASK = [{"role": "system", "content": "Label the latent."},
       {"role": "user", "content": "<examples>la mer, das Meer, 海 — def sea(): pass</examples>"}]
DEEPSEEK_USAGE = {"prompt_tokens": 10_000, "completion_tokens": 100, "total_tokens": 10_100,
                  "prompt_cache_hit_tokens": 8_000, "prompt_cache_miss_tokens": 2_000}
# OpenRouter's usage as it now sends it on every reply
OPENROUTER_USAGE = {"prompt_tokens": 194, "completion_tokens": 12, "total_tokens": 206, "cost": 0.000123,
                    "is_byok": False, "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                    "cost_details": {"upstream_inference_cost": None},
                    "completion_tokens_details": {"reasoning_tokens": 0}}


def judge(srv, **cfg):
    kw = dict(base_url=srv.url, api_key="k", use_cache=False, timeout_s=10.0)
    kw.update(cfg)
    return make_judge(JudgeConfig(**kw), cache_path=None)


def test_the_cached_input_price_given_prices_deepseeks_cache_hits(srv):
    srv.reply = lambda ex: chat_completion('{"label": "sea"}', usage=DEEPSEEK_USAGE)
    j = judge(srv, model="deepseek-chat", price_input=0.27, price_cached_input=0.07, price_output=1.10)
    done = j.complete_sync(ASK, schema=LABEL)
    assert done.cost_usd == pytest.approx((2_000 * 0.27 + 8_000 * 0.07 + 100 * 1.10) / 1e6)
    u = j.ledger.summary()
    assert u["cached_prompt_tokens"] == 8_000 and "$0.07 cached input" in u["cost_source"]


def test_the_cached_input_price_given_prices_claudes_cache_reads(srv):
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
           "content": [{"type": "text", "text": '{"label": "sea"}'}], "stop_reason": "end_turn", "stop_sequence": None,
           "usage": {"input_tokens": 100, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4_000,
                     "output_tokens": 10}}
    srv.reply = lambda ex: (200, {}, json.dumps(msg).encode())
    j = judge(srv, backend="anthropic", model="claude-haiku-4-5", base_url=srv.root, price_input=1.0,
              price_cached_input=0.10, price_output=5.0)
    done = j.complete_sync(ASK, schema=LABEL)
    assert done.cost_usd == pytest.approx((100 * 1.0 + 4_000 * 0.10 + 10 * 5.0) / 1e6)


CLAUDE_WRITES = {"cache_creation_input_tokens": 3_000, "cache_read_input_tokens": 500,
                 "cache_creation": {"ephemeral_5m_input_tokens": 1_000, "ephemeral_1h_input_tokens": 2_000}}


def _claude_labels_once(srv, usage):
    """A Claude judge (input $1, cache reads $0.10, output $5 per 1M tokens) after one label whose reply
    reports 100 input + 10 output tokens and `usage`'s cache counts: the judge and that request's result."""
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
           "content": [{"type": "text", "text": '{"label": "sea"}'}], "stop_reason": "end_turn", "stop_sequence": None,
           "usage": {"input_tokens": 100, "output_tokens": 10, **usage}}
    srv.reply = lambda ex: (200, {}, json.dumps(msg).encode())
    j = judge(srv, backend="anthropic", model="claude-haiku-4-5", base_url=srv.root, price_input=1.0,
              price_cached_input=0.10, price_output=5.0)
    return j, j.complete_sync(ASK, schema=LABEL)


@pytest.mark.parametrize("usage, written_cost", [
    (CLAUDE_WRITES, 1_000 * 1.25 + 2_000 * 2.0),
    # no split by TTL (an older API version, a proxy): the default TTL's rate
    ({"cache_creation_input_tokens": 3_000, "cache_read_input_tokens": 500}, 3_000 * 1.25),
], ids=["5m-and-1h", "no-split"])
def test_claudes_cache_writes_cost_more_than_input(srv, usage, written_cost):
    j, done = _claude_labels_once(srv, usage)
    assert done.cost_usd == pytest.approx((100 * 1.0 + written_cost * 1.0 + 500 * 0.10 + 10 * 5.0) / 1e6)
    assert j.ledger.summary()["prompt_tokens"] == 100 + 3_000 + 500


def test_after_a_cache_write_a_usd_bound_holds_for_a_prompt_written_whole(srv):
    """CLAUDE_WRITES's request cost 1.49 times its tokens at plain prices (its reads and plain tokens dilute its
    1-hour writes): the next bound must still cover a prompt Anthropic writes whole for an hour."""
    j, _ = _claude_labels_once(srv, CLAUDE_WRITES)
    bound = j.ledger.try_reserve(5_000, 100)
    assert bound.usd >= j.ledger.prices.cost(5_000, 100, cache_write_1h_tokens=5_000)


def test_saesteer_label_prices_claudes_cache_writes(srv, tmp_path):
    from helpers.label_store import build_trigger_store

    path, _ = build_trigger_store(tmp_path / "toy.db", n_latents=3)
    srv.messages_cache_usage = CLAUDE_WRITES
    r = saesteer("label", "--store", path, "--judge-backend", "anthropic", "--judge-model", "claude-haiku-4-5",
                 "--judge-base-url", srv.root, "--judge-api-key", "k", "--scorers", "detection", "--embed-backend",
                 "none", "--no-progress", "--judge-price-input", 1.0, "--judge-price-cached-input", 0.10,
                 "--judge-price-output", 5.0)
    assert r.rc == 0, r.text
    paid = int(re.search(r"requests: (\d+) paid", r.out)[1])
    prompt, out = (int(n.replace(",", "")) for n in re.search(r"tokens: ([\d,]+) in .*? \+ ([\d,]+) out", r.out).groups())
    plain = prompt - paid * 3_500  # the prompt tokens neither written to the cache nor read from it
    cost = (plain * 1.0 + paid * (1_000 * 1.25 + 2_000 * 2.0 + 500 * 0.10) + out * 5.0) / 1e6
    assert paid > 0 and f"cost ${cost:.4f} (" in r.out, r.out


@pytest.mark.parametrize("usage", [
    # OpenRouter's count (with no `cost`: a proxy that drops it), LiteLLM's (Anthropic's name, beside the read)
    {"prompt_tokens": 3_600, "completion_tokens": 10,
     "prompt_tokens_details": {"cached_tokens": 500, "cache_write_tokens": 3_000}},
    {"prompt_tokens": 3_600, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 500},
     "cache_creation_input_tokens": 3_000, "cache_read_input_tokens": 500},
], ids=["openrouter", "litellm"])
def test_claudes_cache_writes_behind_an_openai_compatible_endpoint_cost_more_than_input(srv, usage):
    """Counted once (prompt_tokens holds them), at the 5-minute rate: the endpoint does not say the TTL."""
    srv.reply = lambda ex: chat_completion('{"label": "sea"}', usage=usage)
    j = judge(srv, model="anthropic/claude-haiku-4.5", price_input=1.0, price_cached_input=0.10, price_output=5.0)
    done = j.complete_sync(ASK, schema=LABEL)
    assert done.cost_usd == pytest.approx((100 * 1.0 + 3_000 * 1.25 + 500 * 0.10 + 10 * 5.0) / 1e6)
    assert j.ledger.summary()["prompt_tokens"] == 3_600


def test_openrouters_reported_cost_is_the_cost_not_our_estimate(srv):
    srv.reply = lambda ex: chat_completion('{"label": "sea"}', usage=OPENROUTER_USAGE)
    # gpt-4o-mini's list prices would make this (194 * 0.15 + 12 * 0.60) / 1e6 = 0.0000363
    j = judge(srv, model="openai/gpt-4o-mini", price_input=0.15, price_output=0.60)
    done = j.complete_sync(ASK, schema=LABEL)
    assert done.cost_usd == pytest.approx(0.000123)
    u = j.ledger.summary()
    assert u["cost_usd"] == pytest.approx(0.000123) and u["cost_source"] == "as the provider reported it"


def test_a_byok_request_adds_what_the_users_own_provider_key_was_billed(srv):
    usage = {**OPENROUTER_USAGE, "cost": 0.00001, "is_byok": True, "cost_details": {"upstream_inference_cost": 0.0002}}
    srv.reply = lambda ex: chat_completion('{"label": "sea"}', usage=usage)
    done = judge(srv, model="anthropic/claude-haiku-4.5").complete_sync(ASK, schema=LABEL)  # no price known
    assert done.cost_usd == pytest.approx(0.00021)


def test_saesteer_label_reports_openrouters_cost_and_says_so(srv, tmp_path):
    from helpers.label_store import build_trigger_store

    path, _ = build_trigger_store(tmp_path / "toy.db", n_latents=3)
    srv.reply = lambda ex: chat_completion(fake_llm_answer(ex.body), usage=OPENROUTER_USAGE)
    r = saesteer("label", "--store", path, "--judge-model", "meta-llama/llama-3.3-70b-instruct",
                 "--judge-base-url", srv.url, "--judge-api-key", "k", "--scorers", "detection", "--embed-backend",
                 "none", "--no-progress")
    assert r.rc == 0, r.text
    paid = int(re.search(r"requests: (\d+) paid", r.out)[1])  # explain + detection batches, a model with no price
    assert f"cost ${paid * 0.000123:.4f} (as the provider reported it)" in r.out, r.out


def test_saesteer_label_prices_cache_hits_at_judge_price_cached_input(srv, tmp_path):
    from helpers.label_store import build_trigger_store

    path, _ = build_trigger_store(tmp_path / "toy.db", n_latents=3)
    srv.reply = lambda ex: chat_completion(fake_llm_answer(ex.body), usage=DEEPSEEK_USAGE)
    r = saesteer("label", "--store", path, "--judge-model", "deepseek-chat", "--judge-base-url", srv.url,
                 "--judge-api-key", "k", "--scorers", "detection", "--embed-backend", "none", "--no-progress",
                 "--judge-price-input", 0.27, "--judge-price-cached-input", 0.07, "--judge-price-output", 1.10)
    assert r.rc == 0, r.text
    paid = int(re.search(r"requests: (\d+) paid", r.out)[1])
    cost = paid * (2_000 * 0.27 + 8_000 * 0.07 + 100 * 1.10) / 1e6
    assert f"{paid * 10_000:,} in ({paid * 8_000:,} from the provider's prompt cache)" in r.out, r.out
    assert f"cost ${cost:.4f} (estimated at $0.27 input, $0.07 cached input, $1.1 output per 1M tokens)" in r.out, r.out


def test_a_usd_budget_holds_where_the_provider_bills_more_than_the_prices_given(srv, tmp_path):
    """A USD budget needs prices to bound a request before it is sent; OpenRouter then reports what it billed,
    here 10 times what the prices given (a low guess) make of the same tokens. The bound learns that
    from the first reply, so the run stops before its reported spending crosses the budget."""
    from helpers.label_store import build_trigger_store

    path, _ = build_trigger_store(tmp_path / "toy.db", n_latents=5)
    priced = (194 * 0.5 + 12 * 1.5) / 1e6  # what the guessed prices make of OPENROUTER_USAGE's tokens
    usage = {**OPENROUTER_USAGE, "cost": 10 * priced}
    srv.reply = lambda ex: chat_completion(fake_llm_answer(ex.body), usage=usage)
    budget = 0.003  # the first reply's cost fits it twice over; a few more would cross it
    r = saesteer("label", "--store", path, "--judge-model", "meta-llama/llama-3.3-70b-instruct",
                 "--judge-base-url", srv.url, "--judge-api-key", "k", "--judge-concurrency", 1, "--scorers",
                 "detection", "--embed-backend", "none", "--no-progress", "--judge-price-input", 0.5,
                 "--judge-price-output", 1.5, "--budget", f"{budget}usd")
    assert r.rc == 3, r.text  # stopped by the budget
    spent = float(re.search(r"cost \$([\d.]+) \(as the provider reported it\)", r.out)[1])
    assert 0 < spent <= budget, r.out


def test_a_cost_reported_for_some_replies_only_is_summed_saying_which_part_is_estimated(srv):
    """Replies that carry no cost (a provider routed around OpenRouter's accounting, a proxy that drops it) are
    priced; the total says how many were reported and at what prices the rest were estimated. With no price
    known, a total that would hold only the reported part is no total: none is given."""
    plain = {k: v for k, v in OPENROUTER_USAGE.items() if k not in ("cost", "cost_details", "is_byok")}
    usages = iter([OPENROUTER_USAGE, plain, OPENROUTER_USAGE] * 2)
    srv.reply = lambda ex: chat_completion('{"label": "sea"}', usage=next(usages))
    j = judge(srv, model="openai/gpt-4o-mini", price_input=0.15, price_output=0.60)
    for _ in range(3):
        j.complete_sync(ASK, schema=LABEL)
    u = j.ledger.summary()
    assert u["cost_usd"] == pytest.approx(2 * 0.000123 + (194 * 0.15 + 12 * 0.60) / 1e6, abs=1e-6)  # rounded
    assert u["cost_source"] == ("as the provider reported it for 2 of 3 requests, estimated for the rest at $0.15 "
                                "input, $0.15 cached input, $0.6 output per 1M tokens")
    unpriced = judge(srv, model="meta-llama/llama-3.3-70b-instruct")
    for _ in range(3):
        unpriced.complete_sync(ASK, schema=LABEL)
    assert unpriced.ledger.summary()["cost_usd"] is None and unpriced.ledger.summary()["cost_source"] is None


def test_a_token_budgets_stop_names_the_cost_the_provider_reported_for_a_model_of_no_known_price(srv):
    """No price is known for the model, but OpenRouter reports each reply's cost: the stop at a token budget
    says what was spent in USD as well, as the run's report does."""
    from autointerp.accounting import Budget, BudgetExceeded

    srv.reply = lambda ex: chat_completion('{"label": "sea"}', usage=OPENROUTER_USAGE)
    j = make_judge(JudgeConfig(base_url=srv.url, api_key="k", use_cache=False, timeout_s=10.0,
                               model="meta-llama/llama-3.3-70b-instruct"),
                   cache_path=None, budget=Budget(3_000, "tokens"))
    with pytest.raises(BudgetExceeded) as stop:
        for _ in range(50):
            j.complete_sync(ASK, schema=LABEL)
    paid = j.ledger.totals.paid_calls
    assert paid > 0 and f"${paid * 0.000123:.4f})" in str(stop.value), str(stop.value)
