"""A judge backend speaking Anthropic's Messages API (Claude) through Anthropic's `anthropic` SDK.

What differs from the OpenAI protocol, and how the judge meets it:
- the system prompt is a top-level `system` field, not a message; `max_tokens` is required;
- the reply is a list of content blocks: the answer is its `text` blocks; `thinking` and
  `redacted_thinking` blocks (extended or adaptive thinking) are never read as the answer;
- `stop_reason` says how it ended: `max_tokens` (or `model_context_window_exceeded`) is a reply
  cut off at the limit, `refusal` a reply withheld by Anthropic's classifiers;
- API version 2026-10-21 (anthropic 2.x sends it as `anthropic-version`) takes no temperature on any
  Claude model: none is sent, and the provenance says so (temperature None: sampled);
- thinking: `thinking` (adaptive, enabled with a token budget, disabled) and `output_config.effort`;
- usage: `input_tokens` (plus prompt-cache tokens) and `output_tokens` (thinking included);
- errors: 429 `rate_limit_error` and 529 `overloaded_error` (retried, honouring retry-after), 5xx;
  401 `authentication_error` stops the run at once (`CredentialsRejected`), other 4xx are permanent;
  a 200 that is no message (a proxy's HTML page, an error object) is said as such, never read as an
  empty answer.

The key is --judge-api-key or $ANTHROPIC_API_KEY ($ANTHROPIC_AUTH_TOKEN: a bearer token), the
server $ANTHROPIC_BASE_URL or Anthropic's. `anthropic` is imported when a backend is made or used,
never with this module: a missing or older SDK is said (`_check_sdk`) only to those who ask for Claude.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping
from urllib.parse import urlsplit

from .config import THINKING
from .openai_replies import error_message, html_title, looks_like_html
from .sdk_attempt import ClientPerLoop, attempt, status_failure
from .wire import ChatRequest, ChatResponse, PermanentError, TransientError

__all__ = ["AnthropicBackend", "EFFORTS", "THINKING", "ENV_API_KEY", "ENV_BASE_URL", "message_response", "anthropic_endpoint",
           "check_settings"]

ENV_API_KEY = "ANTHROPIC_API_KEY"
ENV_AUTH_TOKEN = "ANTHROPIC_AUTH_TOKEN"
ENV_BASE_URL = "ANTHROPIC_BASE_URL"
# output_config.effort (anthropic 2.17: types/output_config_param.py); "none" turns thinking off instead
EFFORTS = ("low", "medium", "high", "xhigh", "max")
MIN_THINKING_BUDGET = 1024  # budget_tokens of thinking type enabled: at least this (the API's floor)

# how a Messages reply ended, as the judge reads an OpenAI finish_reason
_FINISH = {"max_tokens": "length", "model_context_window_exceeded": "length", "refusal": "content_filter"}


def thinking_settings(reasoning_effort: str | None, thinking: str | None, budget: int) -> dict[str, Any]:
    """The `thinking` and `output_config` fields a judge's settings send (an empty dict: neither,
    the model's defaults). `reasoning_effort` none turns thinking off; low...max is the effort;
    `thinking` enabled takes `budget` (the judge's reasoning tokens) as its budget_tokens."""
    effort = (reasoning_effort or "").strip().lower()
    thinking = (thinking or "").strip().lower()
    if effort and effort != "none" and effort not in EFFORTS:
        raise ValueError(f"an Anthropic judge takes --judge-reasoning-effort {', '.join(EFFORTS)} (sent as "
                         f"output_config.effort) or none (thinking off), got {effort!r}")
    if thinking and thinking not in THINKING:
        raise ValueError(f"--judge-thinking must be one of {', '.join(THINKING)} (or empty: the model's default), "
                         f"got {thinking!r}")
    if effort == "none":
        if thinking and thinking != "disabled":
            raise ValueError(f"--judge-reasoning-effort none turns thinking off, --judge-thinking {thinking} turns it "
                             "on: give one of them")
        thinking = "disabled"
    body: dict[str, Any] = {}
    if thinking == "enabled":
        if budget < MIN_THINKING_BUDGET:
            raise ValueError(f"--judge-thinking enabled thinks within a budget of --judge-reasoning-tokens, which "
                             f"Anthropic wants at least {MIN_THINKING_BUDGET:,} (got {budget:,}): e.g. "
                             "--judge-reasoning-tokens 2000")
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    elif thinking:
        body["thinking"] = {"type": thinking}
    if effort in EFFORTS:
        body["output_config"] = {"effort": effort}
    return body


class AnthropicBackend:
    """Claude through the Messages API (`POST {base}/v1/messages`), one request per `chat`.

    The client's own retries are off (`max_retries=0`): the `Judge` retries, counts and honours
    retry-after. `timeout_s` is the deadline of one attempt as a whole. `reasoning_effort`,
    `thinking` and `thinking_budget` become the `thinking` / `output_config` fields sent with every
    request (`thinking_settings`; refused there when Anthropic would refuse them)."""

    kind = "anthropic"
    # thinking comes in blocks of its own, never inside the text: untagged text cut off at the limit
    # is a draft answer, never thinking a chat template opened (what the judge fears from servers)
    sees_template = True
    send_temperature = False  # API version 2026-10-21: no Claude model takes one
    max_tokens_param = "max_tokens"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout_s: float = 60.0, reasoning_effort: str | None = None, thinking: str | None = None,
                 thinking_budget: int = 0, env: Mapping[str, str] | None = None) -> None:
        _check_sdk()
        env = os.environ if env is None else env
        if not model:
            raise ValueError("AnthropicBackend: model is empty; give --judge-model (e.g. claude-haiku-4-5)")
        self.model = model
        self.base_url, self._auth = anthropic_endpoint(base_url, api_key, env)
        self.timeout_s = float(timeout_s)
        self.body_extra = thinking_settings(reasoning_effort, thinking, thinking_budget)
        self.reasoning_effort = (reasoning_effort or "").strip().lower() or None
        self._client = ClientPerLoop(self._make_client)

    def cache_extra(self) -> dict[str, Any]:
        return {"body_extra": self.body_extra} if self.body_extra else {}

    def provenance(self) -> dict[str, Any]:
        """What a label's provenance records of this backend's settings beyond the judge's own."""
        return {"reasoning_effort": self.reasoning_effort, "thinking": self.body_extra.get("thinking")}

    def _make_client(self):
        from anthropic import AsyncAnthropic

        return AsyncAnthropic(base_url=self.base_url, timeout=self.timeout_s, max_retries=0, **self._auth)

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The Messages request: system turns joined into the top-level `system`, the rest as messages.
        A blank turn (a re-ask's record of an empty reply) is left out: the API refuses one with a 400
        ("all messages must have non-empty content"), and joins the turns around it into one."""
        system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": m["role"], "content": m["content"]} for m in request.messages
                         if m["role"] != "system" and m["content"].strip()],
        }
        if system:
            body["system"] = system
        body.update(self.body_extra)
        return body

    async def chat(self, request: ChatRequest) -> ChatResponse:
        import anthropic

        try:
            msg = await attempt(self._client.get().messages.create(**self.body(request)), timeout_s=self.timeout_s,
                                sdk=anthropic, where=self.base_url or "https://api.anthropic.com")
        except anthropic.APIStatusError as e:
            raise _status_error(e, self.base_url) from None
        if not isinstance(getattr(msg, "content", None), list):  # a page, an error object: no content blocks
            raise _not_a_message(msg, self.base_url)
        return message_response(msg)

    async def aclose(self) -> None:
        await self._client.aclose()


def anthropic_endpoint(base_url: str | None, api_key: str | None,
                       env: Mapping[str, str]) -> tuple[str | None, dict[str, str]]:
    """(the base URL, the client's credentials): `base_url`, else $ANTHROPIC_BASE_URL (None: Anthropic's);
    the key (`api_key`, else $ANTHROPIC_API_KEY), else a bearer token ($ANTHROPIC_AUTH_TOKEN), else a
    placeholder for a server of one's own (a base URL given: it may check none); Anthropic's own API
    without any is refused. The one lookup, for `check_settings` and `AnthropicBackend` alike."""
    url = _base_url(base_url or env.get(ENV_BASE_URL) or None)
    key = api_key or env.get(ENV_API_KEY)
    if key:
        return url, {"api_key": key}
    if env.get(ENV_AUTH_TOKEN):
        return url, {"auth_token": env[ENV_AUTH_TOKEN]}
    if url is not None:
        return url, {"api_key": "not-needed"}
    raise ValueError(f"no Anthropic API key: set {ENV_API_KEY} (or give --judge-api-key)")


def check_settings(*, base_url: str | None, api_key: str | None, reasoning_effort: str | None,
                   thinking: str | None, thinking_budget: int, env: Mapping[str, str]) -> None:
    """What `AnthropicBackend(...)` would refuse, checked without making it: the SDK, the base URL,
    the credentials and the thinking settings."""
    _check_sdk()
    anthropic_endpoint(base_url, api_key, env)
    thinking_settings(reasoning_effort, thinking, thinking_budget)


def _check_sdk() -> None:
    """Anthropic's SDK is there, in the major version this backend speaks (2.x: API 2026-10-21)."""
    try:
        import anthropic
    except ImportError:
        raise ValueError("the Anthropic judge needs Anthropic's SDK: pip install 'anthropic>=2,<3'") from None
    major = str(getattr(anthropic, "__version__", "0")).split(".")[0]
    if major != "2":
        raise ValueError(f"the Anthropic judge speaks the anthropic SDK 2.x, this environment has "
                         f"{anthropic.__version__}: pip install 'anthropic>=2,<3'")


def _base_url(url: str | None) -> str | None:
    """The Anthropic API's base URL, refused when it ends in the route the client adds (/v1/messages)."""
    if url is not None and urlsplit(url).path.rstrip("/").endswith("/messages"):
        raise ValueError(f"the Anthropic judge's base URL {url} ends in /messages: give the server's root without "
                         "its route (e.g. https://api.anthropic.com); the client adds /v1/messages")
    return url


def _status_error(e, base_url: str | None) -> Exception:
    """The judge's failure for an HTTP error of the Messages API."""
    status = e.status_code
    kind = getattr(e, "type", None)
    said = f"HTTP {status}" + (f" {kind}" if kind else "") + f": {error_message(e)}"
    if status == 404 and base_url and urlsplit(base_url).path.rstrip("/").endswith("/v1"):
        said += f" (the client adds /v1/messages to the base URL: give {base_url.rstrip('/')[:-3]} instead)"
    # 429 rate_limit_error, 529 overloaded_error and other 5xx are retried; 401 stops the run
    return status_failure(e, said, credentials=f"set {ENV_API_KEY} to a valid key for {base_url or 'Anthropic'} "
                                               "(or give --judge-api-key)")


def _not_a_message(reply: Any, base_url: str | None) -> Exception:
    """The failure for a 200 whose body is no Messages reply: a page (a proxy's, a web server's at a
    wrong URL; the SDK hands over a body that is not JSON as its text), or JSON of another shape."""
    if isinstance(reply, str) and looks_like_html(reply):
        return PermanentError(f"the server answered with an HTML page ({html_title(reply)}), not a Messages reply: is "
                              f"{base_url or 'the base URL'} the API's root (the client adds /v1/messages)?")
    if not isinstance(reply, str):  # the SDK's Message made of whatever JSON came (or that JSON itself)
        reply = json.dumps(reply.model_dump(exclude_none=True) if hasattr(reply, "model_dump") else reply, default=str)
    return TransientError(f"the reply was not a Messages API message: {' '.join(reply.split())[:200]}")


def message_response(msg: Any) -> ChatResponse:
    """A ChatResponse from a Messages API `Message`: the text blocks are the answer; thinking blocks
    are only noted (`reasoned`)."""
    blocks = list(getattr(msg, "content", None) or [])
    text = "".join(b.text for b in blocks if getattr(b, "type", None) == "text" and isinstance(b.text, str))
    thought = any(getattr(b, "type", None) in ("thinking", "redacted_thinking") for b in blocks)
    usage = getattr(msg, "usage", None)

    def count(obj: Any, name: str) -> int:
        v = getattr(obj, name, None)
        return max(0, int(v)) if isinstance(v, int) else 0

    # every input token is billed: the prompt cache's writes and reads are counted apart from input_tokens
    prompt = sum(count(usage, n) for n in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
    # the writes split by how long they are kept (usage.cache_creation); a bare total is the default, 5 minutes
    written = count(usage, "cache_creation_input_tokens")
    written_1h = min(written, count(getattr(usage, "cache_creation", None), "ephemeral_1h_input_tokens"))
    stop = getattr(msg, "stop_reason", None)
    refusal = None
    if stop == "refusal":
        details = getattr(msg, "stop_details", None)
        refusal = getattr(details, "explanation", None) or "stop_reason refusal"
    return ChatResponse(
        text if blocks else None, prompt, count(usage, "output_tokens"), refusal, _FINISH.get(stop, "stop"),
        reasoning_tokens=count(getattr(usage, "output_tokens_details", None), "thinking_tokens"),
        reasoned=thought,
        cached_prompt_tokens=count(usage, "cache_read_input_tokens"),
        cache_write_5m_tokens=written - written_1h, cache_write_1h_tokens=written_1h,
    )
