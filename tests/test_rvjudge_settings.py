"""The judge's endpoint and key are looked up in one place (`backends.openai_endpoint`), from the
environment `make_judge` is given: what `check_judge` passed is what the backend sends, never a second
lookup in the process's environment that finds something else (an Azure key `env` holds sent as a
placeholder Azure refuses; a base URL `env` names ignored for OpenAI's).
"""

from __future__ import annotations

import pytest

from autointerp.config import JudgeConfig, check_judge, make_judge
from helpers.judge_server import JudgeServer, chat_completion, fake_llm_answer, openai_error

LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
ASK = [{"role": "system", "content": "Label the latent."}, {"role": "user", "content": "<examples>mar, sea</examples>"}]
USAGE = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}


@pytest.fixture(autouse=True)
def bare_environment(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_API_KEY", "OPENAI_API_VERSION"):
        monkeypatch.delenv(name, raising=False)


def test_the_environment_given_to_make_judge_is_the_one_the_requests_use():
    def reply(ex):
        if ex.headers.get("api-key") == "azure-secret" and "api-version=2024-10-21" in ex.path:
            return chat_completion('{"label": "sea"}', usage=USAGE)
        return openai_error(401, "Access denied due to invalid subscription key or wrong API endpoint.",
                            "invalid_request_error", "401")

    with JudgeServer(fake_llm_answer, reply=reply) as srv:
        env = {"OPENAI_BASE_URL": f"{srv.root}/openai/deployments/judge-4o", "OPENAI_API_VERSION": "2024-10-21",
               "AZURE_OPENAI_API_KEY": "azure-secret"}
        cfg = JudgeConfig(model="judge-4o", use_cache=False, max_retries=0)
        assert check_judge(cfg, env) == ("openai", "judge-4o")
        assert make_judge(cfg, cache_path=None, env=env).complete_sync(ASK, schema=LABEL).value == {"label": "sea"}
        assert len(srv.exchanges) == 1


def test_no_key_for_openais_own_api_is_refused_alike_by_the_check_and_the_judge():
    cfg = JudgeConfig(model="gpt-4o-mini", use_cache=False)
    for make in (lambda: check_judge(cfg, {}), lambda: make_judge(cfg, cache_path=None, env={})):
        with pytest.raises(ValueError, match="no API key: set OPENAI_API_KEY"):
            make()
