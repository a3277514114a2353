"""A judge's settings are checked once, before anything loads, and the judge is made once.

`autointerp.config.check_judge` checks everything that needs nothing made: besides the settings a
backend takes none of, an HTTP judge's base URL and credentials (OpenAI's or Anthropic's own API with
no key, an Azure deployment URL without its api-version, Anthropic's thinking budget under its floor).
`saesteer sweep` / `steer-eval --concept` read the judge's flags once and make one judge, after the
model has loaded (they used to make a throwaway judge first, only to see whether its key was there).
"""

from __future__ import annotations

import json

import pytest

from autointerp.config import JudgeConfig, check_judge
from helpers.judge_server import JudgeServer
from helpers.real_cli import saesteer
from test_early_refusals import MODEL, loads, refused, ws  # noqa: F401 (the fixtures)

pytestmark = [pytest.mark.usefixtures("offline_env")]


@pytest.mark.parametrize("cfg, env, said", [
    (dict(backend="openai", model="gpt-4o-mini"), {}, "no API key: set OPENAI_API_KEY"),
    (dict(backend="openai", model="gpt-4o", base_url="https://r.openai.azure.com/openai/deployments/gpt-4o"),
     {"OPENAI_API_KEY": "k"}, "an Azure OpenAI deployment URL needs an API version"),
    (dict(backend="openai", model="m", base_url="http://localhost:8000/v1/chat/completions"), {},
     "ends in /chat/completions"),
    (dict(backend="anthropic", model="claude-haiku-4-5"), {}, "no Anthropic API key: set ANTHROPIC_API_KEY"),
    (dict(backend="anthropic", model="claude-haiku-4-5", thinking="enabled", reasoning_tokens=500),
     {"ANTHROPIC_API_KEY": "k"}, "Anthropic wants at least 1,024"),
])
def test_check_judge_refuses_what_the_backend_would_without_making_one(cfg, env, said, monkeypatch):
    import autointerp.anthropic_messages
    import autointerp.backends

    for backend in (autointerp.backends.OpenAIBackend, autointerp.anthropic_messages.AnthropicBackend):
        monkeypatch.setattr(backend, "__init__", lambda *a, **kw: pytest.fail("a backend was made"))
    with pytest.raises(ValueError, match=said):
        check_judge(JudgeConfig(**cfg), env)


def test_check_judge_takes_a_local_server_without_a_key_and_a_bearer_token_for_claude():
    assert check_judge(JudgeConfig(backend="openai", model="m", base_url="http://127.0.0.1:1/v1"), {}) == ("openai", "m")
    assert check_judge(JudgeConfig(model="m"), {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}) == ("openai", "m")
    assert check_judge(JudgeConfig(backend="anthropic", model="c"), {"ANTHROPIC_AUTH_TOKEN": "t"}) == ("anthropic", "c")


def _rating(ex):
    return 200, {}, json.dumps({"id": "c", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": '{"rating": 2}'}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}}).encode()


@pytest.mark.parametrize("command", ["sweep", "steer-eval"])
def test_sweep_and_steer_eval_make_their_judge_once_after_the_model(ws, loads, tmp_path, monkeypatch, command):
    import autointerp.backends

    made = []
    real_init = autointerp.backends.OpenAIBackend.__init__

    def counted(self, *a, **kw):
        made.append(loads.copy())  # what had loaded when the judge was made
        real_init(self, *a, **kw)

    monkeypatch.setattr(autointerp.backends.OpenAIBackend, "__init__", counted)
    built, sae, _ = ws
    extra = (["--cue", "the sea", "--out", tmp_path / "card.json"] if command == "steer-eval"
             else ["--unit", "raw", "--strengths", "0,4", "--out", tmp_path / "sweeps"])
    with JudgeServer(lambda body: "", reply=_rating) as srv:
        r = saesteer(command, "--sae", sae, "--store", built.path, "--model", MODEL, "--latent", 3, "--concept",
                     "the sea", "--judge-model", "m", "--judge-base-url", srv.url, "--prompt", "the whale",
                     "--samples", 1, "--max-new-tokens", 3, "--judge-cache-path", tmp_path / "answers.sqlite", *extra,
                     "--no-progress")
    assert r.rc == 0, r.text[-2000:]
    assert made == [["model"]]  # one judge, made once the model had loaded
    assert srv.exchanges  # and it was asked


@pytest.mark.parametrize("command", ["sweep", "steer-eval"])
def test_no_openai_key_is_refused_before_the_model_and_no_judge_is_made(ws, loads, tmp_path, monkeypatch, command):
    import autointerp.backends

    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(autointerp.backends.OpenAIBackend, "__init__", lambda *a, **kw: pytest.fail("judge made"))
    built, sae, _ = ws
    extra = ["--cue", "the sea"] if command == "steer-eval" else ["--out", tmp_path / "sweeps"]
    r = saesteer(command, "--sae", sae, "--store", built.path, "--latent", 3, "--concept", "the sea",
                 "--judge-model", "gpt-4o-mini", *extra, "--no-progress")
    refused(r, "no API key: set OPENAI_API_KEY", "--judge-api-key")
    assert loads == [] and not list(built.path.parent.glob("*judge-cache*"))
