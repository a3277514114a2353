"""`saesteer sweep` / `steer-eval --concept` against a reasoning judge as OpenAI serves one (gpt-5, o-series):
400s refusing `max_tokens` and `temperature` (met by one switch each), and a reply that spent its output limit
thinking (`content: ""`, `finish_reason: "length"`, the tokens in `completion_tokens_details.reasoning_tokens`).
When every rating is lost that way the command stops in one or two lines naming the setting that gives the
model room (--judge-reasoning-tokens), not "check --judge-model"; with that setting the run rates.
"""

from __future__ import annotations

import json

import pytest

from helpers.judge_server import JudgeServer, chat_completion, openai_error
from helpers.real_cli import flags_named, known_flags, saesteer
from test_early_refusals import MODEL, loads, ws  # noqa: F401 (the fixtures)

pytestmark = [pytest.mark.usefixtures("offline_env")]


def gpt5(ex):
    """OpenAI's reasoning model: refuses max_tokens and a temperature but 1; thinks 1,000 tokens first."""
    body = ex.body
    if "max_tokens" in body:
        return openai_error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                            "'max_completion_tokens' instead.", "invalid_request_error", "unsupported_parameter")
    if body.get("temperature", 1) != 1:
        return openai_error(400, "Unsupported value: 'temperature' does not support 0 with this model. Only the "
                            "default (1) value is supported.", "invalid_request_error", "unsupported_value")
    limit = body["max_completion_tokens"]
    if limit < 1000:  # the limit spent thinking: nothing left for the answer
        return chat_completion("", finish="length", usage={
            "prompt_tokens": 120, "completion_tokens": limit, "total_tokens": 120 + limit,
            "completion_tokens_details": {"reasoning_tokens": limit}})
    return chat_completion(json.dumps({"rating": 2, "reason": "about the sea"}), usage={
        "prompt_tokens": 120, "completion_tokens": 1012, "total_tokens": 1132,
        "completion_tokens_details": {"reasoning_tokens": 1000}})


def _run(command, ws, tmp_path, url, *flags):
    built, sae, _ = ws
    extra = (["--cue", "the sea", "--out", tmp_path / "card.json"] if command == "steer-eval"
             else ["--unit", "raw", "--strengths", "0,4", "--out", tmp_path / "sweeps"])
    return saesteer(command, "--sae", sae, "--store", built.path, "--model", MODEL, "--latent", 3, "--concept",
                    "the sea", "--judge-model", "gpt-5-mini", "--judge-base-url", url, "--judge-api-key", "k",
                    "--judge-cache-path", tmp_path / "answers.sqlite", "--prompt", "the whale", "--samples", 1,
                    "--max-new-tokens", 3, *extra, *flags, "--no-progress")


@pytest.mark.parametrize("command", ["sweep", "steer-eval"])
def test_a_reasoning_judge_out_of_room_is_said_naming_the_setting_and_the_setting_works(ws, loads, tmp_path,
                                                                                       command):
    with JudgeServer(lambda body: "", reply=gpt5) as srv:
        r = _run(command, ws, tmp_path, srv.url)
        assert r.rc == 2, r.text[-2000:]
        r.no_traceback()
        error, = [line for line in r.err.splitlines() if line.startswith("error:")]  # the rest: progress, notes
        for words in ("the judge gave no usable rating", "truncated judge output", "--judge-reasoning-tokens"):
            assert words in error, error
        assert "--judge-base-url" not in error and flags_named(error) <= known_flags(command)
        r = _run(command, ws, tmp_path, srv.url, "--judge-reasoning-tokens", 2000)
    assert r.rc == 0, r.text[-2000:]
    assert "unusable" not in r.err
