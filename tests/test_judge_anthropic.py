"""Claude as the judge: `saesteer label --judge-backend anthropic` through Anthropic's own `anthropic`
client, against the loopback server's Messages API route (tests/helpers/judge_server.py), on a
toy-world feature store made with the CLI as users make one.

What these paths show: labels written from Messages replies (system prompt top-level, max_tokens,
no temperature, the key from $ANTHROPIC_API_KEY, the server from $ANTHROPIC_BASE_URL), usage counted,
provenance and the response cache as for OpenAI; a reply cut off at max_tokens never becomes a label;
a thinking block is never read as the label; `--judge-thinking` / `--judge-reasoning-effort` sent as
Anthropic's fields; a 529 retried after its retry-after; a 401 stops the run at once with one line
naming ANTHROPIC_API_KEY; 4xx/5xx classified as for OpenAI.
"""

from __future__ import annotations

import json
import shutil

import pytest

from helpers.judge_server import JudgeServer, fake_llm_answer
from helpers.real_cli import cache_train_store, flags_named, known_flags, saesteer

pytestmark = [pytest.mark.usefixtures("offline_env", "one_thread")]

KEY = "sk-ant-loopback"
MODEL = "claude-haiku-4-5"
LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
ASK = [{"role": "system", "content": "You are labelling one latent feature."},
       {"role": "user", "content": "<examples>the <<sea>> was calm</examples>"}]


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    """A toy-world feature store: `saesteer cache` of the toy model, `train`, `features build`."""
    work = tmp_path_factory.mktemp("toy-world")
    cache_train_store("toy", "toy", work, "toy.db", "--max-tokens", 4096)
    return work / "toy.db"


@pytest.fixture
def store(toy_store, tmp_path):
    path = tmp_path / "toy.db"
    shutil.copy(toy_store, path)
    return path


@pytest.fixture
def claude_env(monkeypatch):
    """The environment a Claude user has: the key; the server set per test through ANTHROPIC_BASE_URL."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "SAESTEER_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    return monkeypatch


def label(store, *flags, limit=2):
    return saesteer("label", "--store", store, "--judge-backend", "anthropic", "--judge-model", MODEL,
                    "--limit", limit, "--scorers", "detection", "--embed-backend", "none", "--no-progress", *flags)


def messages(srv):
    return [e for e in srv.exchanges if e.path.split("?")[0].endswith("/v1/messages")]


def labels(store):
    from features import FeatureStore

    with FeatureStore.open(store) as st:
        return {i: st.feature(i).label for i in range(st.d_sae) if st.feature(i).label is not None}


def sent_labels(srv):
    """The labels the fake LLM answered to the explain requests the server saw."""
    return {json.loads(fake_llm_answer(r_chat))["label"] for r_chat in _chats(srv)
            if "labelling one latent feature" in r_chat["messages"][0]["content"]}


def _chats(srv):
    return [{"messages": r.messages} for r in srv.snapshot() if r.completed]


# ---------------------------------------------------------------------------------------------
# a run as users make it


def test_saesteer_label_with_claude_writes_labels_counts_usage_and_caches(store, claude_env, tmp_path):
    with JudgeServer(fake_llm_answer, api_key=KEY) as srv:
        claude_env.setenv("ANTHROPIC_BASE_URL", srv.root)
        r = label(store, "--report", tmp_path / "run.json").ok()
        assert f"anthropic:{MODEL}: 2 labelled, 0 failed" in r.out
        got = labels(store)
        assert len(got) == 2 and {lab.text for lab in got.values()} <= sent_labels(srv)
        sent = messages(srv)
        for ex in sent:  # the Messages protocol as documented: the system prompt top-level, max_tokens, no temperature
            assert ex.headers["anthropic-version"] and KEY in (ex.headers.get("x-api-key", "") + ex.headers.get("authorization", ""))
            assert ex.body["model"] == MODEL and ex.body["max_tokens"] > 0 and "temperature" not in ex.body
            assert ex.body["system"] and {m["role"] for m in ex.body["messages"]} <= {"user", "assistant"}
        # usage: the server's input/output tokens are what the run counted
        usage = json.loads((tmp_path / "run.json").read_text())["usage"]
        recs = [r for r in srv.snapshot() if r.completed]
        assert usage["prompt_tokens"] == sum(r.usage["input_tokens"] for r in recs) > 0
        assert usage["completion_tokens"] == sum(r.usage["output_tokens"] for r in recs) > 0
        for lab in got.values():  # provenance: which judge, and the settings as sent
            prov = lab.provenance
            assert (prov.judge_kind, prov.judge_model) == ("anthropic", MODEL)
            assert {k: prov.params.get(k) for k in ("temperature", "max_tokens_param", "thinking")} == \
                {"temperature": None, "max_tokens_param": "max_tokens", "thinking": None}
        n = len(sent)
        label(store, "--overwrite", "true").ok()  # a re-run: every answer from the response cache
        assert len(messages(srv)) == n
        assert {i: lab.text for i, lab in labels(store).items()} == {i: lab.text for i, lab in got.items()}


def test_a_reply_cut_off_at_max_tokens_is_never_a_label(store, claude_env):
    with JudgeServer(fake_llm_answer, api_key=KEY, script=lambda i, body: "max_tokens") as srv:
        claude_env.setenv("ANTHROPIC_BASE_URL", srv.root)
        r = label(store, limit=1)
        assert r.rc == 4, r.text
        assert "cut off at the token limit" in r.out
        assert labels(store) == {}


def test_a_reply_that_spent_max_tokens_thinking_fails_at_once_naming_the_settings(store, claude_env):
    # extended thinking counts within max_tokens: a thinking block and no text, stop_reason max_tokens
    def reply(ex):
        if not ex.path.endswith("/v1/messages"):
            return None
        body = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "stop_reason": "max_tokens",
                "stop_sequence": None, "content": [{"type": "thinking", "thinking": 'The label is {"label": "x"}',
                                                    "signature": "c2ln"}],
                "usage": {"input_tokens": 900, "output_tokens": ex.body["max_tokens"],
                          "output_tokens_details": {"thinking_tokens": ex.body["max_tokens"]}}}
        return 200, {}, json.dumps(body).encode()

    with JudgeServer(fake_llm_answer, reply=reply) as srv:
        claude_env.setenv("ANTHROPIC_BASE_URL", srv.root)
        r = label(store, "--judge-concurrency", 1, limit=1)
        assert r.rc == 4, r.text
        assert "truncated judge output" in r.out and "while the model was still thinking" in r.out
        assert {"--judge-reasoning-tokens", "--judge-reasoning-effort"} <= flags_named(r.out)
        assert len(messages(srv)) == 1  # not asked again: the same limit would end the same way
        assert labels(store) == {}


def test_a_thinking_block_is_never_read_as_the_label(store, claude_env):
    with JudgeServer(fake_llm_answer, api_key=KEY,
                     thinking_text='A first guess: {"label": "DECOY", "answers": [1]}. No, narrower.') as srv:
        claude_env.setenv("ANTHROPIC_BASE_URL", srv.root)
        label(store).ok()
        got = {lab.text for lab in labels(store).values()}
        assert len(got) >= 1 and "DECOY" not in " ".join(got) and got <= sent_labels(srv)


@pytest.mark.parametrize("flags, thinking, output_config, room", [
    (("--judge-thinking", "adaptive", "--judge-reasoning-effort", "low"), {"type": "adaptive"}, {"effort": "low"}, 0),
    (("--judge-thinking", "enabled", "--judge-reasoning-tokens", 2000), {"type": "enabled", "budget_tokens": 2000},
     None, 2000),
    (("--judge-reasoning-effort", "none"), {"type": "disabled"}, None, 0),
])
def test_thinking_settings_are_sent_as_anthropics_fields_and_recorded(store, claude_env, flags, thinking,
                                                                      output_config, room):
    effort = dict(zip(flags[::2], flags[1::2])).get("--judge-reasoning-effort")
    with JudgeServer(fake_llm_answer, api_key=KEY, thinking_text="Marked tokens: all one word.") as srv:
        claude_env.setenv("ANTHROPIC_BASE_URL", srv.root)
        label(store, *flags, limit=1).ok()
        for ex in messages(srv):
            assert ex.body.get("thinking") == thinking and ex.body.get("output_config") == output_config
        # the explainer's answer limit plus the room to think (thinking counts within max_tokens)
        from autointerp.interp import LABEL_MAX_TOKENS

        explain = [ex for ex in messages(srv) if "labelling one latent feature" in ex.body["system"]]
        assert explain and {ex.body["max_tokens"] for ex in explain} == {LABEL_MAX_TOKENS + room}
        (lab,) = labels(store).values()
        params = lab.provenance.params
        assert (params["thinking"], params["reasoning_effort"], params["reasoning_tokens"]) == (thinking, effort, room)


def test_the_thinking_and_effort_values_are_the_installed_sdks():
    from typing import get_args, get_type_hints

    from anthropic.types.output_config_param import OutputConfigParam
    from anthropic.types.thinking_config_param import ThinkingConfigParam

    from autointerp.anthropic_messages import EFFORTS, THINKING

    effort = get_type_hints(OutputConfigParam)["effort"]  # Optional[Literal[...]]
    assert set(EFFORTS) == {v for a in get_args(effort) for v in get_args(a)}
    assert set(THINKING) <= {get_args(get_type_hints(t)["type"])[0] for t in get_args(ThinkingConfigParam)}


def test_an_overloaded_529_is_retried_after_its_retry_after(store, claude_env, tmp_path):
    import autointerp.config

    waits = []

    async def recorded_sleep(seconds):  # the judge's waits, recorded instead of slept
        waits.append(seconds)

    real_make_judge = autointerp.config.make_judge
    claude_env.setattr(autointerp.config, "make_judge", lambda *a, **kw: real_make_judge(*a, **kw, sleep=recorded_sleep))
    with JudgeServer(fake_llm_answer, api_key=KEY, retry_after_s=30,
                     script=lambda i, body: "529" if i == 0 else None) as srv:
        claude_env.setenv("ANTHROPIC_BASE_URL", srv.root)
        label(store, "--judge-concurrency", 1, "--judge-backoff-base-s", 0.001, "--judge-backoff-max-s", 0.002,
              "--report", tmp_path / "run.json", limit=1).ok()
        first, second = srv.snapshot()[:2]
        assert first.status == 529 and second.completed and second.messages == first.messages
        # the server's retry-after (30 s, up to 10% jitter added), not the 2 ms backoff
        assert waits and 30 <= waits[0] <= 33, waits
        assert json.loads((tmp_path / "run.json").read_text())["usage"]["retries"] == 1
        assert len(labels(store)) == 1


def test_a_refused_key_stops_the_run_at_once_with_one_line_naming_the_variable(store, claude_env):
    claude_env.setenv("ANTHROPIC_API_KEY", "sk-ant-revoked")
    with JudgeServer(fake_llm_answer, api_key=KEY) as srv:
        claude_env.setenv("ANTHROPIC_BASE_URL", srv.root)
        r = label(store, "--judge-concurrency", 1, limit=5).no_traceback()
        assert r.rc == 2, r.text
        (line,) = r.err.strip().splitlines()
        assert line.startswith("error: ") and "401" in line and "ANTHROPIC_API_KEY" in line
        assert flags_named(line) <= known_flags("label")
        assert len(messages(srv)) == 1  # not once per latent
        assert labels(store) == {}


def test_no_key_at_all_is_refused_before_anything_is_sent(store, claude_env):
    claude_env.delenv("ANTHROPIC_API_KEY")
    r = label(store).no_traceback()
    assert r.rc == 2 and "set ANTHROPIC_API_KEY" in r.err and len(r.err.strip().splitlines()) == 1, r.err


@pytest.mark.parametrize("flags, said", [
    (("--judge-temperature", 0.7), "takes no temperature"),
    (("--judge-response-format", "json_object"), "has none"),
    (("--judge-reasoning-effort", "minimal"), "low, medium, high, xhigh, max"),
    (("--judge-thinking", "enabled"), "--judge-reasoning-tokens 2000"),
    (("--judge-thinking", "adaptive", "--judge-reasoning-effort", "none"), "give one of them"),
    (("--judge-base-url", "https://api.anthropic.com/v1/messages"), "the client adds /v1/messages"),
])
def test_settings_anthropic_does_not_take_are_refused_up_front(store, claude_env, flags, said):
    r = label(store, *flags).no_traceback()
    assert r.rc == 2 and said in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert flags_named(r.err) <= known_flags("label")


def test_judge_thinking_is_refused_for_an_openai_judge(store, claude_env):
    r = saesteer("label", "--store", store, "--judge-model", "gpt-4o-mini", "--judge-base-url", "http://127.0.0.1:9/v1",
                 "--judge-thinking", "adaptive", "--no-progress")
    assert r.rc == 2 and "--judge-backend anthropic" in r.err, r.err


# ---------------------------------------------------------------------------------------------
# errors, classified as the OpenAI backend's are


@pytest.mark.parametrize("fault, retried", [("429", True), ("529", True), ("500", True), ("503", True),
                                            ("400", False)])
def test_messages_errors_are_retried_or_not_as_openais_are(claude_env, fault, retried):
    from autointerp.config import JudgeConfig, make_judge
    from autointerp.judge import RequestFailed

    with JudgeServer(fake_llm_answer, api_key=KEY, retry_after_s=0,
                     script=lambda i, body: fault if i == 0 else None) as srv:
        judge = make_judge(JudgeConfig(backend="anthropic", model=MODEL, base_url=srv.root, max_retries=2,
                                       backoff_base_s=0.001, backoff_max_s=0.002, use_cache=False), cache_path=None)
        if retried:
            assert judge.complete_sync(ASK, schema=LABEL).value == {"label": "sea"}
            assert len(messages(srv)) == 2
        else:
            with pytest.raises(RequestFailed, match="HTTP 400 invalid_request_error"):
                judge.complete_sync(ASK, schema=LABEL)
            assert len(messages(srv)) == 1


def test_a_connection_fault_the_loopback_cannot_serve_on_messages_fails_the_test_using_it(claude_env):
    # never a fault plan that injected nothing while its test passed
    from autointerp.config import JudgeConfig, make_judge

    with pytest.raises(AssertionError, match=r"\['reset'\] are not served on the Messages route"):
        with JudgeServer(fake_llm_answer, api_key=KEY, script=lambda i, body: "reset" if i == 0 else None) as srv:
            judge = make_judge(JudgeConfig(backend="anthropic", model=MODEL, base_url=srv.root, use_cache=False),
                               cache_path=None)
            judge.complete_sync(ASK, schema=LABEL)


def test_an_answer_of_the_wrong_shape_is_asked_again(claude_env):
    # the loopback's content faults reach the Messages route as they reach the chat one
    from autointerp.config import JudgeConfig, make_judge

    with JudgeServer(fake_llm_answer, api_key=KEY, script=lambda i, body: "bad_schema" if i == 0 else None) as srv:
        judge = make_judge(JudgeConfig(backend="anthropic", model=MODEL, base_url=srv.root, use_cache=False),
                           cache_path=None)
        done = judge.complete_sync(ASK, schema=LABEL)
        assert done.value == {"label": "sea"} and done.reasks == 1
        assert len(messages(srv)) == 2


def test_a_judge_made_directly_on_claude_prices_it_unknown_not_free(claude_env):
    # `Judge(backend)` without a ledger: only a local model is free; a USD budget then asks for prices
    from autointerp import AnthropicBackend, Judge

    judge = Judge(AnthropicBackend(MODEL))
    assert judge.ledger.prices.input_per_mtok is None and judge.ledger.prices.output_per_mtok is None


@pytest.mark.parametrize("installed, said", [(None, "needs Anthropic's SDK"), ("1.17.0", "has 1.17.0")])
def test_a_missing_or_older_sdk_is_said_in_one_line_with_the_install_command(store, claude_env, monkeypatch,
                                                                               installed, said):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "anthropic", None if installed is None else
                        types.SimpleNamespace(__version__=installed))
    r = label(store).no_traceback()
    assert r.rc == 2 and said in r.err and "pip install 'anthropic>=2,<3'" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1


def test_a_refusal_stop_is_not_asked_again_and_says_the_servers_words(claude_env):
    # stop_reason "refusal": Anthropic's classifiers withheld the reply; the same ask would be withheld again
    from autointerp.config import JudgeConfig, make_judge
    from autointerp.judge import AnswerInvalid

    def reply(ex):
        body = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "content": [],
                "stop_reason": "refusal", "stop_sequence": None,
                "stop_details": {"type": "refusal", "category": None, "explanation": "declined by policy"},
                "usage": {"input_tokens": 40, "output_tokens": 1}}
        return 200, {}, json.dumps(body).encode()

    with JudgeServer(fake_llm_answer, reply=reply) as srv:
        judge = make_judge(JudgeConfig(backend="anthropic", model=MODEL, base_url=srv.root, use_cache=False),
                           cache_path=None)
        with pytest.raises(AnswerInvalid, match="content filter.*declined by policy"):
            judge.complete_sync(ASK, schema=LABEL)
        assert len(messages(srv)) == 1


def test_other_thinking_settings_are_never_answered_from_the_cache_of_a_run_without_them(store, claude_env):
    with JudgeServer(fake_llm_answer, api_key=KEY) as srv:
        claude_env.setenv("ANTHROPIC_BASE_URL", srv.root)
        label(store, limit=1).ok()
        first = len(messages(srv))
        label(store, "--judge-reasoning-effort", "low", "--overwrite", "true", limit=1).ok()
        fresh = messages(srv)[first:]
        assert len(fresh) == first and {ex.body["output_config"]["effort"] for ex in fresh} == {"low"}
        (lab,) = labels(store).values()
        assert lab.provenance.params["reasoning_effort"] == "low"


def test_a_dollar_budget_for_claude_names_the_price_flags_that_exist(store, claude_env):
    # Claude's prices are not built in: the refusal must name flags `saesteer label` has
    r = label(store, "--budget", "2usd", "--dry-run").no_traceback()
    assert r.rc == 2 and "claude-haiku-4-5" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert {"--judge-price-input", "--judge-price-output"} <= flags_named(r.err) <= known_flags("label")


# ---------------------------------------------------------------------------------------------
# every command that asks a judge: sweep and steer-eval (--concept), output-score, label (above)


def _sae(toy_store):
    return toy_store.parent / "run" / "saes" / "sae"


def _message(text):
    """A Messages API reply whose answer is `text`."""
    return 200, {}, json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
                                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                "stop_sequence": None, "usage": {"input_tokens": 50, "output_tokens": 5}}).encode()


def _judged(command, toy_store, store, tmp_path):
    """`saesteer <command>` asking Claude on the toy world's latents, one request at a time."""
    common = ("--judge-backend", "anthropic", "--judge-model", MODEL, "--judge-concurrency", 1, "--no-progress")
    if command == "sweep":
        return saesteer("sweep", "--sae", _sae(toy_store), "--model", "toy", "--latent", 3, "--concept", "the sea",
                        "--unit", "raw", "--strengths", "0,4", "--prompt", "the sea was", "--samples", 1,
                        "--max-new-tokens", 4, "--out", tmp_path / "sweep", *common)
    saesteer("label", "--store", store, "--limit", 1, "--scorers", "detection", "--embed-backend", "none",
             "--no-progress").ok()  # offline: a label to score against
    return saesteer("output-score", "--store", store, "--sae", _sae(toy_store), "--samples", 2, "--new-tokens", 4,
                    *common)


def test_output_score_of_a_store_without_labels_is_refused_before_the_model_and_judge(toy_store, store, claude_env,
                                                                                      monkeypatch, capsys):
    import autointerp.config
    import saesteer.models
    from saesteer.cli import main

    monkeypatch.setattr(saesteer.models, "load_recorded_model", lambda *a, **kw: pytest.fail("the model loaded"))
    monkeypatch.setattr(autointerp.config, "make_judge", lambda *a, **kw: pytest.fail("the judge was made"))
    assert main(["output-score", "--store", str(store), "--sae", str(toy_store.parent / "run/saes/sae"),
                 "--judge-backend", "anthropic", "--judge-model", MODEL]) == 2
    assert "no labelled latent to score; run `saesteer label` first" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sweep", "output-score"])
def test_a_refused_key_stops_every_judging_command_at_its_first_request(toy_store, store, claude_env, tmp_path,
                                                                         command):
    claude_env.setenv("ANTHROPIC_API_KEY", "sk-ant-revoked")
    with JudgeServer(fake_llm_answer, api_key=KEY) as srv:
        claude_env.setenv("ANTHROPIC_BASE_URL", srv.root)
        r = _judged(command, toy_store, store, tmp_path).no_traceback()
        assert r.rc == 2, r.text
        (line,) = r.err.strip().splitlines()
        assert line.startswith("error: ") and "401" in line and "ANTHROPIC_API_KEY" in line
        assert flags_named(line) <= known_flags(command)
        assert len(messages(srv)) == 1  # nothing more is sent once the key was refused


def test_output_scores_by_claude_record_an_anthropic_judge(toy_store, store, claude_env, tmp_path):
    import sqlite3

    with JudgeServer(fake_llm_answer, api_key=KEY, reply=lambda ex: _message('{"more": "b"}')) as srv:
        claude_env.setenv("ANTHROPIC_BASE_URL", srv.root)
        _judged("output-score", toy_store, store, tmp_path).ok()
        assert len(messages(srv)) == 2
    with sqlite3.connect(store) as db:
        kinds = db.execute("SELECT p.judge_kind, p.judge_model FROM scores s JOIN label_provenance p "
                           "ON p.id = s.provenance_id WHERE s.method = 'output'").fetchall()
    assert kinds == [("anthropic", MODEL)]


def test_output_score_goes_on_past_a_latent_whose_answers_stay_invalid_and_lists_it(toy_store, store, claude_env,
                                                                                      tmp_path):
    # as `label` does with a failing latent: counted, listed at the end, exit status 4; never "a bug"
    with JudgeServer(fake_llm_answer, api_key=KEY, reply=lambda ex: _message("It is about the sea.")) as srv:
        claude_env.setenv("ANTHROPIC_BASE_URL", srv.root)
        r = _judged("output-score", toy_store, store, tmp_path).no_traceback()
        assert len(messages(srv)) > 2  # the first asks and their re-asks
    assert r.rc == 4, r.text
    (latent,) = labels(store)
    assert f"latent {latent} failed: " in r.out and f"--latents {latent}" in r.out, r.out
    assert "output scores of 0 latents" in r.out and "this is a bug" not in r.text
    # a judge that fails latent after latent: the run stops, as label's does
    saesteer("label", "--store", store, "--limit", 2, "--scorers", "detection", "--embed-backend", "none",
             "--no-progress").ok()  # a second label
    with JudgeServer(fake_llm_answer, api_key=KEY, reply=lambda ex: _message("It is about the sea.")) as srv:
        claude_env.setenv("ANTHROPIC_BASE_URL", srv.root)
        r = saesteer("output-score", "--store", store, "--sae", _sae(toy_store), "--samples", 1, "--new-tokens", 2,
                     "--judge-backend", "anthropic", "--judge-model", MODEL, "--no-progress",
                     "--max-consecutive-failures", 1).no_traceback()
    assert r.rc == 4 and len(labels(store)) == 2, r.text
    assert r.out.count(" failed: ") == 1 and "stopped: 1 latent failed in a row" in r.out, r.out


@pytest.mark.parametrize("headers, body, said, asked", [
    # a proxy's login page, or a web server's at a wrong URL: asking again gets the same page
    ({"Content-Type": "text/html"}, b"<!doctype html><html><head><title>Sign in - Corp proxy</title></head></html>",
     r"an HTML page \(title 'Sign in - Corp proxy'\), not a Messages reply", 1),
    # an error object where the message was due: retried as an unreadable reply
    ({}, json.dumps({"type": "error", "error": {"type": "api_error", "message": "upstream gone"}}).encode(),
     "not a Messages API message: .*upstream gone", 3),
])
def test_a_200_that_is_no_messages_reply_fails_saying_what_came_never_an_empty_answer(claude_env, headers, body,
                                                                                       said, asked):
    from autointerp.config import JudgeConfig, make_judge
    from autointerp.judge import RequestFailed

    with JudgeServer(fake_llm_answer, reply=lambda ex: (200, headers, body)) as srv:
        judge = make_judge(JudgeConfig(backend="anthropic", model=MODEL, base_url=srv.root, max_retries=2,
                                       backoff_base_s=0.001, backoff_max_s=0.002, use_cache=False), cache_path=None)
        with pytest.raises(RequestFailed, match=said):
            judge.complete_sync(ASK, schema=LABEL)
        assert len(messages(srv)) == asked


def test_an_empty_reply_is_asked_again_without_the_blank_turn_anthropic_refuses(claude_env):
    # a reply of thinking alone: the re-ask must not carry it as an empty assistant message, which
    # Anthropic's API refuses ("all messages must have non-empty content ...") with a 400
    from autointerp.config import JudgeConfig, make_judge

    def reply(ex):
        if len(messages(srv)) > 1:
            return None  # the fake LLM answers, on the route that checks the request as Anthropic does
        return 200, {}, json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
                                    "content": [{"type": "thinking", "thinking": "Hmm.", "signature": "c2ln"}],
                                    "stop_reason": "end_turn", "stop_sequence": None,
                                    "usage": {"input_tokens": 40, "output_tokens": 9}}).encode()

    with JudgeServer(fake_llm_answer, reply=reply) as srv:
        judge = make_judge(JudgeConfig(backend="anthropic", model=MODEL, base_url=srv.root, use_cache=False),
                           cache_path=None)
        done = judge.complete_sync(ASK, schema=LABEL)
        assert done.value == {"label": "sea"} and done.reasks == 1
        reask = messages(srv)[1].body["messages"]
        assert [m["role"] for m in reask] == ["user", "user"] and "empty" in reask[-1]["content"]
