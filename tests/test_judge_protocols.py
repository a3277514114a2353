"""The judge against the response shapes real OpenAI-protocol servers send in 2026, the way users
configure it (`make_judge(JudgeConfig(...))`, `saesteer label --judge-...`).

What these paths show:
- reasoning models (OpenAI o-series, gpt-5): the 400s refusing `max_tokens` and a non-default
  `temperature` (OpenAI's exact bodies) are met by one switch each, with a note, remembered for
  later requests; a reply that spent its output-token limit thinking (`content: ""`,
  `finish_reason: "length"`, `reasoning_tokens` in the usage; Ollama's `reasoning` field) fails at
  once with one line naming `--judge-reasoning-tokens` / `--judge-reasoning-effort`, which work;
- local reasoning models (DeepSeek-R1, Qwen3 on Ollama / vLLM / llama.cpp / LM Studio): the answer
  after `<think>...</think>` (or after a lone `</think>`) is read, never a draft inside the
  thinking, and gpt-oss's raw Harmony channels give their `final` channel, never the analysis; a
  think block cut off at the limit is a "truncated judge output" error, not a label, and so is a
  reply cut off with no closing tag (the template opened the block: no tag in the reply);
  reasoning in its own field (`reasoning_content`, `reasoning`) is never read;
- bodies that are not a usable answer: `finish_reason: "content_filter"` (not re-asked), a 200
  carrying an `error` object (OpenRouter; its `code` decides retry or not), an `error` inside the
  choice, empty `choices`, `content: null`;
- what sits in front of the server: a reverse proxy's HTML 502 (retried, reported by its title),
  an HTML page with 200 (a web UI at the base URL: not retried, says so), Ollama's base URL
  without `/v1` (its plain-text 404: the error suggests the URL with /v1), a base URL ending in
  /chat/completions (refused up front), Azure OpenAI deployment URLs with `?api-version=`
  (sent with every request, with Azure's `api-key` header);
- answers in ```json fences or followed by prose are read.
One loopback server (tests/helpers/judge_server.py) serves the whole module; each test scripts its
replies through the server's `reply` hook.
"""

from __future__ import annotations

import json
import threading
import warnings

import pytest

from autointerp.config import JudgeConfig, make_judge
from autointerp.judge import AnswerInvalid, RequestFailed
from helpers.judge_server import fake_llm_answer
from helpers.real_cli import flags_named, known_flags, saesteer
from saes.errors import SaesteerWarning

LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
ASK = [{"role": "system", "content": "Label the latent."}, {"role": "user", "content": "<examples>sea</examples>"}]

# OpenAI's 400 bodies for a reasoning model (o1, o3, gpt-5...), as its API sends them
MAX_TOKENS_400 = {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                                       "'max_completion_tokens' instead.", "type": "invalid_request_error",
                            "param": "max_tokens", "code": "unsupported_parameter"}}
TEMPERATURE_400 = {"error": {"message": "Unsupported value: 'temperature' does not support 0 with this model. Only the "
                                        "default (1) value is supported.", "type": "invalid_request_error",
                             "param": "temperature", "code": "unsupported_value"}}
NGINX_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
             b"</center>\r\n<hr><center>nginx/1.27.4</center>\r\n</body>\r\n</html>\r\n")


def js(obj) -> bytes:
    return json.dumps(obj).encode()


def completion(content, *, finish="stop", message_extra=None, usage_extra=None, model="m") -> bytes:
    """A chat completion as OpenAI-protocol servers send it."""
    message = {"role": "assistant", "content": content, **(message_extra or {})}
    usage = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30, **(usage_extra or {})}
    return js({"id": "chatcmpl-1", "object": "chat.completion", "created": 1767225600, "model": model,
               "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage})


def ok(content, **kw):
    return 200, {}, completion(content, **kw)


def judge(srv, *, base_url=None, **cfg):
    kw = dict(model="judge-model", base_url=base_url or srv.url, api_key="k", max_retries=2, backoff_base_s=0.001,
              backoff_max_s=0.002, max_retry_after_s=0.002, use_cache=False, timeout_s=10.0)
    kw.update(cfg)
    return make_judge(JudgeConfig(**kw), cache_path=None)


def ask(srv, **cfg):
    return judge(srv, **cfg).complete_sync(ASK, schema=LABEL)


def answered_at_once(srv, content):
    """The judge's reading of a reply holding `content`, checked to be the label "sea" with no re-ask."""
    srv.reply = lambda ex: ok(content)
    done = ask(srv)
    assert done.value == {"label": "sea"} and done.reasks == 0
    return done


# ---------------------------------------------------------------------------------------------
# reasoning models behind OpenAI's API


def openai_reasoning_model(answer):
    """o-series / gpt-5: refuse max_tokens and any temperature but 1, as OpenAI does."""

    def reply(ex):
        if "max_tokens" in ex.body:
            return 400, {}, js(MAX_TOKENS_400)
        if ex.body.get("temperature", 1) != 1:
            return 400, {}, js(TEMPERATURE_400)
        return ok(answer(ex.body), usage_extra={"completion_tokens_details": {"reasoning_tokens": 64}})

    return reply


def test_a_reasoning_model_refusing_max_tokens_and_temperature_answers_after_one_switch_each(srv):
    srv.reply = openai_reasoning_model(lambda body: '{"label": "sea words"}')
    j = judge(srv, model="o4-mini-protocols")
    with pytest.warns(SaesteerWarning) as notes:
        first = j.complete_sync(ASK, schema=LABEL)
    assert first.value == {"label": "sea words"}
    said = " | ".join(str(w.message) for w in notes)
    assert "max_completion_tokens" in said and "default temperature" in said
    assert len(srv.chat_exchanges()) == 3  # refused twice, once per parameter, then answered
    srv.exchanges.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SaesteerWarning)  # no second note
        second = j.complete_sync([ASK[0], {"role": "user", "content": "<examples>ship</examples>"}], schema=LABEL)
    assert second.value == {"label": "sea words"}
    (sent,) = srv.chat_exchanges()  # later requests go out in the accepted form from the start
    assert sent.body["max_completion_tokens"] == 256 and "max_tokens" not in sent.body and "temperature" not in sent.body


def test_concurrent_refusals_are_each_resent_and_said_once(srv):
    # every request of a batch goes out before the first refusal comes back: each is refused for
    # max_tokens (and most for temperature) while another already switched; all must still answer
    from autointerp.judge import JudgeCall

    n = 4
    arrived = threading.Barrier(n, timeout=10)
    refuse = openai_reasoning_model(lambda body: '{"label": "sea words"}')

    def reply(ex):
        if "max_tokens" in ex.body:
            arrived.wait()  # all n in flight at once
        return refuse(ex)

    srv.reply = reply
    j = judge(srv, model="o3-concurrent", concurrency=n)
    calls = [JudgeCall([ASK[0], {"role": "user", "content": f"<examples>sea {i}</examples>"}], LABEL) for i in range(n)]
    with pytest.warns(SaesteerWarning) as notes:
        done = j.complete_many_sync(calls)
    assert [getattr(d, "value", d) for d in done] == [{"label": "sea words"}] * n
    said = [str(w.message) for w in notes]
    assert sum("does not take max_tokens" in m for m in said) == 1
    assert sum("default temperature" in m for m in said) == 1
    assert len(srv.chat_exchanges()) <= 3 * n


def test_saesteer_label_with_a_gpt5_style_judge_labels_and_says_what_it_switched(srv, tmp_path):
    from helpers.label_store import build_trigger_store

    path, triggers = build_trigger_store(tmp_path / "toy.db", n_latents=2)
    # its content also opens with thinking that holds a draft answer, as a reasoning model's may
    srv.reply = openai_reasoning_model(lambda body: '<think>Draft: {"label": "x", "answers": [1]}</think>'
                                                    + fake_llm_answer(body))
    r = saesteer("label", "--store", path, "--judge-model", "gpt-5-mini-protocols", "--judge-base-url", srv.url,
                 "--judge-api-key", "k", "--judge-reasoning-effort", "low", "--judge-reasoning-tokens", "500",
                 "--scorers", "detection", "--embed-backend", "none", "--no-progress").ok()
    assert "note: judge model gpt-5-mini-protocols does not take max_tokens" in r.err
    assert flags_named(r.err) <= known_flags("label")
    from features import FeatureStore

    with FeatureStore.open(path) as st:
        assert [st.feature(i).label.text for i in range(2)] == [triggers[0], triggers[1]]
        # what was sent after the switches: no temperature (sampled at the model's default, not the
        # configured 0.0), max_completion_tokens, and the reasoning settings
        sent = {"temperature": None, "max_tokens_param": "max_completion_tokens", "reasoning_effort": "low",
                "reasoning_tokens": 500}
        for i in range(2):
            prov = st.feature(i).label.provenance
            assert {k: prov.params.get(k) for k in sent} == sent
            assert {k: prov.extra["autointerp"]["judge"].get(k) for k in sent} == sent


def test_a_reply_that_spent_its_limit_thinking_fails_at_once_and_the_named_settings_fix_it(srv):
    # gpt-5 at a small max_completion_tokens: HTTP 200, content "", every token spent reasoning
    def reply(ex):
        limit = ex.body.get("max_completion_tokens") or ex.body["max_tokens"]
        if limit < 1000 and ex.body.get("reasoning_effort") != "low":
            return ok("", finish="length", usage_extra={"completion_tokens": limit,
                                                        "completion_tokens_details": {"reasoning_tokens": limit}})
        return ok('{"label": "tides"}')

    srv.reply = reply
    with pytest.raises(AnswerInvalid) as e:
        ask(srv, max_tokens_param="max_completion_tokens")
    msg = e.value.reason
    assert "truncated judge output" in msg and "(256)" in msg and "256 reasoning tokens" in msg
    assert {"--judge-reasoning-tokens", "--judge-reasoning-effort"} <= flags_named(msg) <= known_flags("label")
    assert len(srv.chat_exchanges()) == 1  # not re-asked: the same limit would end the same way
    srv.exchanges.clear()
    assert ask(srv, max_tokens_param="max_completion_tokens", reasoning_tokens=2000).value == {"label": "tides"}
    assert srv.chat_exchanges()[0].body["max_completion_tokens"] == 2256
    assert ask(srv, reasoning_effort="low").value == {"label": "tides"}
    assert srv.chat_exchanges()[-1].body["reasoning_effort"] == "low"


def test_ollama_reasoning_field_with_an_empty_answer_at_the_limit_is_a_truncation_error(srv):
    # Ollama's /v1 for a thinking model (gemma4, kimi): content "", all text in `reasoning`
    srv.reply = lambda ex: ok("", finish="length", message_extra={"reasoning": 'The label is {"label": "x"} maybe'})
    with pytest.raises(AnswerInvalid, match="truncated judge output.*still thinking"):
        ask(srv)
    assert len(srv.chat_exchanges()) == 1


def test_saesteer_label_can_turn_an_ollama_models_thinking_off_with_reasoning_effort_none(srv, tmp_path):
    # Ollama's /v1 for a thinking model (gemma4): content "" and the text in `reasoning`, unless the
    # request says reasoning_effort "none" (thinking off; `think: false` is not read on /v1)
    from helpers.label_store import build_trigger_store

    path, triggers = build_trigger_store(tmp_path / "toy.db", n_latents=1)

    def reply(ex):
        if ex.body.get("reasoning_effort") == "none":
            return ok(fake_llm_answer(ex.body))
        return ok("", message_extra={"reasoning": "The marked tokens are all one word, so the label is that word."})

    srv.reply = reply
    saesteer("label", "--store", path, "--judge-model", "gemma4:26b", "--judge-base-url", srv.url,
             "--judge-reasoning-effort", "none", "--scorers", "detection", "--embed-backend", "none",
             "--no-progress").ok()
    assert {e.body.get("reasoning_effort") for e in srv.chat_exchanges()} == {"none"}
    from features import FeatureStore

    with FeatureStore.open(path) as st:
        assert st.feature(0).label.text == triggers[0]


def test_judge_reasoning_effort_takes_only_the_values_servers_accept(srv, tmp_path):
    from typing import get_args

    from autointerp.config import REASONING_EFFORTS

    # openai 1.40 (our lowest) has no such list; we send the value in extra_body, so it works there too
    ReasoningEffort = pytest.importorskip("openai.types.shared.reasoning_effort").ReasoningEffort

    # the installed openai package's list (its Literal, inside Optional)
    assert set(REASONING_EFFORTS) == {v for a in get_args(ReasoningEffort) for v in get_args(a)}
    from helpers.label_store import build_trigger_store

    path, _ = build_trigger_store(tmp_path / "toy.db", n_latents=1)
    flags = ("label", "--store", path, "--judge-model", "gpt-5-mini", "--judge-base-url", srv.url, "--scorers",
             "detection", "--embed-backend", "none", "--no-progress")
    bad = saesteer(*flags, "--judge-reasoning-effort", "hihg")
    assert bad.rc == 2 and len(bad.err.strip().splitlines()) == 1, bad.err
    assert "--judge-reasoning-effort" in bad.err and "'hihg'" in bad.err
    assert "none, minimal, low, medium, high, xhigh, max" in bad.err
    assert not srv.chat_exchanges()  # refused before anything was sent
    srv.reply = lambda ex: ok(fake_llm_answer(ex.body))
    saesteer(*flags, "--judge-reasoning-effort", "Low").ok()
    assert {e.body.get("reasoning_effort") for e in srv.chat_exchanges()} == {"low"}
    # a local transformers judge sends no reasoning_effort: refused before its model is loaded
    local = saesteer(*flags[:3], "--judge-backend", "transformers", "--judge-model", tmp_path / "no-model-here",
                     "--judge-reasoning-effort", "low")
    assert local.rc == 2 and "transformers judge takes none" in local.err, local.err


def test_replies_holding_only_reasoning_fail_naming_the_setting_that_turns_thinking_off(srv):
    # the same Ollama shape with finish_reason "stop": re-asked (a later reply may answer), then one line
    srv.reply = lambda ex: ok("", message_extra={"reasoning": 'The label is {"label": "sea"}.'})
    with pytest.raises(AnswerInvalid) as e:
        ask(srv)
    assert "only reasoning" in e.value.reason and "--judge-reasoning-effort none" in e.value.reason
    assert flags_named(e.value.reason) <= known_flags("label")
    assert len(srv.chat_exchanges()) == 3  # 1 + max_reasks: never read from the reasoning field


# ---------------------------------------------------------------------------------------------
# local reasoning models: thinking in the content, or beside it


@pytest.mark.parametrize("content", [
    '<think>\nThe marks are on sea. A first guess: {"label": "water"}. No, narrower.\n</think>\n\n{"label": "sea"}',
    # DeepSeek-R1's chat template opens <think> itself: the content starts inside the block
    'Okay, the marks are on sea. {"label": "water"} is too wide.\n</think>\n\n{"label": "sea"}',
    '<think>{"label": "water"}</think>```json\n{"label": "sea"}\n```',
])
def test_the_answer_after_the_thinking_is_read_not_a_draft_inside_it(srv, content):
    assert "<think>" not in answered_at_once(srv, content).text


def test_gpt_oss_harmony_channels_in_the_content_give_the_final_channel_never_the_analysis(srv):
    # gpt-oss behind a server that does not parse its channels (mlx_lm.server, some llama.cpp
    # builds): the raw Harmony markup arrives in `content`
    answered_at_once(srv, '<|channel|>analysis<|message|>Marks on sea. Draft: {"label": "water"}; narrower.<|end|>'
                          '<|start|>assistant<|channel|>final<|message|>{"label": "sea"}<|return|>')
    srv.reply = lambda ex: ok('<|channel|>analysis<|message|>Ships. Draft: {"label": "boats"}. But the marks',
                              finish="length")
    with pytest.raises(AnswerInvalid, match="truncated judge output.*still thinking"):
        ask(srv)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])  # vLLM / llama.cpp / LM Studio; Ollama
def test_reasoning_in_its_own_field_is_never_read_as_the_answer(srv, field):
    srv.reply = lambda ex: ok('{"label": "sea"}', message_extra={field: 'I could say {"label": "water"}.'})
    assert ask(srv).value == {"label": "sea"}


def test_a_think_block_cut_off_at_the_limit_is_truncated_output_never_a_label(srv):
    srv.reply = lambda ex: ok('<think>\nThe examples show ships. Draft: {"label": "boats"}. But the marks', finish="length")
    with pytest.raises(AnswerInvalid, match="truncated judge output.*still thinking"):
        ask(srv)
    assert len(srv.chat_exchanges()) == 1


def test_a_reply_cut_off_inside_thinking_the_template_opened_is_truncated_output_never_a_label(srv):
    # Qwen3 / DeepSeek-R1 templates end the prompt with "<think>\n": the reply has no opening tag,
    # and cut off at the limit it has no closing one either; the draft inside is not the label
    srv.reply = lambda ex: ok('Okay, the examples show ships. Draft: {"label": "boats"}. But the marks', finish="length")
    with pytest.raises(AnswerInvalid, match="truncated judge output.*no </think>.*--judge-reasoning-tokens"):
        ask(srv)
    assert len(srv.chat_exchanges()) == 1
    # the same reply finished with its closing tag gives the answer after it, even at the limit
    srv.exchanges.clear()
    srv.reply = lambda ex: ok('Okay, ships. Draft: {"label": "boats"}.\n</think>\n\n{"label": "sea"}', finish="length")
    assert ask(srv).value == {"label": "sea"}
    # and a model that does not think, answering in exactly its limit: a bare answer is read
    srv.reply = lambda ex: ok('{"label": "sea"}', finish="length")
    assert ask(srv).value == {"label": "sea"}


@pytest.mark.parametrize("content", [
    '{"label": "sea"}\n\nThe examples all show waves, tides and the',  # a note after the answer, cut
    '```json\n{"label": "sea"}\n```\n\nI chose this label because the',  # fenced, then a note, cut
    '```json\n{"label": "sea"}\n``',  # the closing fence cut
    ' \n{"label": "sea"}\n',
])
def test_a_complete_answer_that_opens_a_reply_cut_off_after_it_is_read(srv, content):
    # a model that does not think (gpt-4o-mini, Llama 3 on Ollama) writes the JSON and goes on
    # explaining until the limit: the answer is whole, and thinking never opens with the answer
    srv.reply = lambda ex: ok(content, finish="length")
    done = ask(srv)
    assert done.value == {"label": "sea"} and done.reasks == 0


@pytest.mark.parametrize("apart", [
    {"message_extra": {"reasoning_content": "The marks are on sea words."}},  # vLLM's reasoning parser
    {"usage_extra": {"completion_tokens_details": {"reasoning_tokens": 90}}},  # o-series, gpt-5
])
def test_a_cut_off_answer_from_a_server_that_sends_the_reasoning_apart_is_read(srv, apart):
    # the server kept the thinking out of the content (its own field, counted reasoning tokens): the
    # content is the answer, prose around the JSON included, even when cut off after it
    srv.reply = lambda ex: ok('Here is the label: {"label": "sea"}. The examples all show', finish="length", **apart)
    done = ask(srv)
    assert done.value == {"label": "sea"} and done.reasks == 0


def test_thinking_that_opens_with_a_list_is_no_answer_opening_the_reply(srv):
    # a JSON number opens "1. ..." too: only an object or array counts as an answer opening a reply
    srv.reply = lambda ex: ok('1. The examples show ships. Draft: {"label": "boats"}. 2. But the', finish="length")
    with pytest.raises(AnswerInvalid, match="truncated judge output.*no </think>"):
        ask(srv)


def test_a_plain_text_ask_cut_off_at_the_limit_gives_the_text(srv):
    # no JSON asked for (Judge.complete without schema or validate): a reply cut off at the limit is
    # still the text, as before; only a JSON ask can tell an answer from thinking by its form
    srv.reply = lambda ex: ok("The sea: waves, tides, salt water and the", finish="length")
    done = judge(srv).complete_sync(ASK)
    assert done.value == "The sea: waves, tides, salt water and the" and done.reasks == 0


# ---------------------------------------------------------------------------------------------
# bodies that hold no usable answer


def test_a_content_filtered_reply_fails_clearly_without_asking_again(srv):
    # Azure OpenAI when its output filter trips: content null, finish_reason content_filter
    srv.reply = lambda ex: ok(None, finish="content_filter")
    with pytest.raises(AnswerInvalid, match="content filter"):
        ask(srv)
    assert len(srv.chat_exchanges()) == 1


def test_an_error_object_in_a_200_body_is_retried_or_not_by_its_code_and_its_message_shown(srv):
    # OpenRouter: once the model started, errors come with HTTP 200 and {"error": {"code", "message"}}
    seen = []

    def reply(ex):
        seen.append(ex)
        if len(seen) == 1:
            return 200, {}, js({"error": {"code": 502, "message": "Provider returned error", "metadata": {}}})
        return ok('{"label": "sea"}')

    srv.reply = reply
    assert ask(srv).value == {"label": "sea"} and len(seen) == 2
    srv.exchanges.clear()
    srv.reply = lambda ex: (200, {}, js({"error": {"code": 402, "message": "Insufficient credits. Add more using "
                                                                          "https://openrouter.ai/settings/credits"}}))
    with pytest.raises(RequestFailed, match="Insufficient credits.*code 402"):
        ask(srv)
    assert len(srv.chat_exchanges()) == 1  # a 4xx code is not retried


def test_an_error_inside_the_choice_is_reported_with_its_message(srv):
    srv.reply = lambda ex: (200, {}, js({"id": "gen-1", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "error",
         "error": {"code": 502, "message": "upstream model crashed"}}]}))
    with pytest.raises(RequestFailed, match="upstream model crashed"):
        ask(srv, max_retries=1)
    assert len(srv.chat_exchanges()) == 2  # a 5xx code is retried


def test_empty_choices_are_retried_and_reported_with_the_body(srv):
    srv.reply = lambda ex: (200, {}, js({"id": "x", "object": "chat.completion", "choices": [],
                                         "prompt_filter_results": []}))
    with pytest.raises(RequestFailed, match=r"no choices.*prompt_filter_results"):
        ask(srv, max_retries=1)
    assert len(srv.chat_exchanges()) == 2


def test_null_content_is_asked_again_and_the_second_answer_used(srv):
    seen = []

    def reply(ex):
        seen.append(ex)
        return ok(None) if len(seen) == 1 else ok('{"label": "sea"}')

    srv.reply = reply
    done = ask(srv)
    assert done.value == {"label": "sea"} and done.reasks == 1


# ---------------------------------------------------------------------------------------------
# what sits in front of the server, and where its API lives


def test_a_proxys_html_502_is_retried_and_reported_by_its_title(srv):
    srv.reply = lambda ex: (502, {"Content-Type": "text/html"}, NGINX_502)
    with pytest.raises(RequestFailed) as e:
        ask(srv, max_retries=1)
    assert "HTTP 502" in e.value.reason and "'502 Bad Gateway'" in e.value.reason and "<html" not in e.value.reason
    assert len(srv.chat_exchanges()) == 2


def test_an_html_page_with_200_is_not_retried_and_points_at_the_base_url(srv):
    page = b"<!doctype html><html><head><title>Open WebUI</title></head><body></body></html>"
    srv.reply = lambda ex: (200, {"Content-Type": "text/html"}, page)
    with pytest.raises(RequestFailed, match=r"HTML page \(title 'Open WebUI'\).*/v1"):
        ask(srv)
    assert len(srv.chat_exchanges()) == 1


def test_ollamas_base_url_without_v1_gets_the_url_to_use(srv):
    root = srv.url[: -len("/v1")]

    def reply(ex):  # Ollama answers unknown routes with Gin's plain-text 404
        if not ex.path.startswith("/v1/"):
            return 404, {"Content-Type": "text/plain"}, b"404 page not found"
        return ok('{"label": "sea"}')

    srv.reply = reply
    with pytest.raises(RequestFailed) as e:
        ask(srv, base_url=root)
    assert "HTTP 404" in e.value.reason and f"{root}/v1 for Ollama" in e.value.reason
    assert len(srv.chat_exchanges()) == 1
    assert ask(srv, base_url=f"{root}/v1").value == {"label": "sea"}
    with pytest.raises(ValueError, match="without it"):
        judge(srv, base_url=f"{root}/v1/chat/completions")


@pytest.mark.parametrize("status, headers, body, said", [
    (404, {"Content-Type": "text/plain"}, b"404 page not found", "404 page not found"),  # Gin (Ollama)
    (404, {}, b'{"detail": "Not Found"}', "Not Found"),  # FastAPI (vLLM, SGLang) off its routes
    (401, {}, b'{"error": "Invalid API key"}', "Invalid API key"),  # an error given as a string
])
def test_error_bodies_that_are_not_openai_shaped_are_shown(srv, status, headers, body, said):
    # the openai client hands over the body's `error` (or the body's text) as e.body, not the body
    srv.reply = lambda ex: (status, headers, body)
    with pytest.raises(RequestFailed) as e:
        ask(srv, base_url=srv.url[: -len("/v1")] if status == 404 else None)
    assert f"HTTP {status}: {said}" in e.value.reason


def test_saesteer_label_stops_at_a_refused_key_in_one_line_naming_the_variable(srv, tmp_path):
    # every latent would meet the same 401: the run stops at its first, not after --max-consecutive-failures
    from helpers.label_store import build_trigger_store

    path, _ = build_trigger_store(tmp_path / "toy.db", n_latents=4)
    srv.reply = lambda ex: (401, {}, js({"error": {"message": "Incorrect API key provided: sk-wrong.",
                                                   "type": "invalid_request_error", "code": "invalid_api_key"}}))
    r = saesteer("label", "--store", path, "--judge-model", "gpt-4o-mini", "--judge-base-url", srv.url,
                 "--judge-api-key", "sk-wrong", "--judge-concurrency", 1, "--scorers", "detection",
                 "--embed-backend", "none", "--no-progress").no_traceback()
    assert r.rc == 2, r.text
    (line,) = r.err.strip().splitlines()
    assert "HTTP 401: Incorrect API key provided" in line and "set OPENAI_API_KEY" in line
    assert flags_named(line) <= known_flags("label")
    assert len(srv.chat_exchanges()) == 1


def test_a_refused_key_is_one_exception_class_from_the_backend_to_the_caller(srv):
    # one name for one thing: the backend's 401 is the CredentialsRejected the judge raises and
    # callers catch (a RequestFailed, and a SaesteerError the CLI says in one line); sent once
    import asyncio

    from autointerp.judge import CredentialsRejected
    from autointerp.wire import ChatRequest
    from saes.errors import SaesteerError

    srv.reply = lambda ex: (401, {}, js({"error": {"message": "Incorrect API key provided: sk-wrong.",
                                                   "type": "invalid_request_error", "code": "invalid_api_key"}}))
    j = judge(srv)
    with pytest.raises(CredentialsRejected, match="set OPENAI_API_KEY") as e:
        asyncio.run(j.backend.chat(ChatRequest(tuple(ASK))))
    assert isinstance(e.value, RequestFailed) and isinstance(e.value, SaesteerError)
    with pytest.raises(CredentialsRejected, match="request rejected: HTTP 401") as e:
        j.complete_sync(ASK, schema=LABEL)
    with pytest.raises(CredentialsRejected):
        j.complete_sync(ASK, schema=LABEL)  # the judge sends nothing more
    assert len(srv.chat_exchanges()) == 2  # the backend's own request and the judge's first


def test_a_model_not_found_404_under_v1_gets_no_url_advice(srv):
    srv.reply = lambda ex: (404, {}, js({"error": {"message": 'model "qwen3:8b" not found, try pulling it first',
                                                   "type": "api_error", "param": None, "code": None}}))
    with pytest.raises(RequestFailed) as e:
        ask(srv)
    assert "try pulling it first" in e.value.reason and "/v1 for Ollama" not in e.value.reason


def test_a_404_under_a_versioned_path_that_ends_elsewhere_gets_no_url_advice(srv):
    # Gemini's OpenAI-compatible endpoint is .../v1beta/openai: its version is not the last segment,
    # and Google's errors may come wrapped in a list
    root = srv.url[: -len("/v1")]
    srv.reply = lambda ex: (404, {}, js([{"error": {"code": 404, "status": "NOT_FOUND", "message":
                                                    "models/gemini-9 is not found for API version v1beta"}}]))
    with pytest.raises(RequestFailed) as e:
        ask(srv, base_url=f"{root}/v1beta/openai")
    assert "HTTP 404: models/gemini-9 is not found" in e.value.reason and "/v1 for Ollama" not in e.value.reason


def test_an_azure_deployment_url_sends_its_api_version_and_key_header(srv, monkeypatch):
    root = srv.url[: -len("/v1")]

    def reply(ex):  # Azure OpenAI: key in api-key, version in the query, the deployment in the path
        if ex.path != "/openai/deployments/judge-4o/chat/completions?api-version=2024-10-21":
            return 404, {}, js({"error": {"code": "404", "message": "Resource not found"}})
        if ex.headers.get("api-key") != "k":
            return 401, {}, js({"error": {"code": "401", "message": "Access denied due to invalid subscription key."}})
        return ok('{"label": "sea"}')

    srv.reply = reply
    done = ask(srv, base_url=f"{root}/openai/deployments/judge-4o?api-version=2024-10-21")
    assert done.value == {"label": "sea"}
    monkeypatch.delenv("OPENAI_API_VERSION", raising=False)
    with pytest.raises(ValueError, match=r"api-version"):
        judge(srv, base_url=f"{root}/openai/deployments/judge-4o")


def test_a_query_in_any_base_url_goes_with_every_request(srv):
    srv.reply = lambda ex: ok('{"label": "sea"}') if ex.path == "/v1/chat/completions?tenant=t1" else (404, {}, b"{}")
    assert ask(srv, base_url=f"{srv.url}?tenant=t1").value == {"label": "sea"}


# ---------------------------------------------------------------------------------------------
# answers wrapped the way chat models like to


@pytest.mark.parametrize("content", [
    '```json\n{"label": "sea"}\n```',
    '```json\n{"label": "sea"}\n```\nThis label fits because every marked token is about the sea.',
    '{"label": "sea"}\n\nI chose this because the marks fall on {sea words}.',
    'Here is the label:\n```\n{"label": "sea"}\n```',
])
def test_fenced_answers_and_trailing_prose_are_read(srv, content):
    answered_at_once(srv, content)


def test_labels_relabelled_from_the_response_cache_record_the_settings_their_replies_were_asked_with(srv, tmp_path):
    # a second run answered from the cache sends nothing, so it never meets the refusals that switched
    # the first run's requests: the provenance is the settings of the requests the replies came from
    from helpers.label_store import build_trigger_store

    path, triggers = build_trigger_store(tmp_path / "toy.db", n_latents=2)
    srv.reply = openai_reasoning_model(lambda body: fake_llm_answer(body))
    flags = ("label", "--store", path, "--judge-model", "gpt-5-mini-cached", "--judge-base-url", srv.url,
             "--judge-api-key", "k", "--scorers", "detection", "--embed-backend", "none", "--no-progress")
    saesteer(*flags).ok()
    sent = len(srv.chat_exchanges())
    saesteer(*flags, "--overwrite", "true").ok()
    assert len(srv.chat_exchanges()) == sent  # every reply from the cache
    from features import FeatureStore

    with FeatureStore.open(path) as st:
        assert [st.feature(i).label.text for i in range(2)] == [triggers[0], triggers[1]]
        for i in range(2):
            params = st.feature(i).label.provenance.params
            assert (params["temperature"], params["max_tokens_param"]) == (None, "max_completion_tokens"), params


def test_a_refused_key_is_no_rating_for_a_judge_asked_one_call_at_a_time():
    # steering's JudgeScorer takes any judge with complete_sync; an unusable answer scores 0, a refused key stops
    from autointerp.judge import CredentialsRejected
    from steering.evaluate import JudgeScorer

    class OneAtATime:
        asked = 0

        def complete_sync(self, messages, schema):
            self.asked += 1
            raise CredentialsRejected("request rejected: HTTP 401: set OPENAI_API_KEY to a valid key")

    judge = OneAtATime()
    with pytest.raises(CredentialsRejected, match="OPENAI_API_KEY"):
        JudgeScorer(judge, "the sea")(["the sea was"], ["calm today"])
    assert judge.asked == 1


def test_no_openai_key_is_said_naming_flags_the_command_has(tmp_path, monkeypatch):
    from helpers.label_store import build_trigger_store

    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    path, _ = build_trigger_store(tmp_path / "toy.db", n_latents=2)
    r = saesteer("label", "--store", path, "--judge-model", "gpt-4o-mini", "--no-progress").no_traceback()
    assert r.rc == 2 and "set OPENAI_API_KEY" in r.err, r.text
    assert {"--judge-api-key", "--judge-base-url"} <= flags_named(r.err) <= known_flags("label")
