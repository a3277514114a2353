"""What an OpenAI-protocol server's reply means: a chat completion read leniently into a
`ChatResponse`, an error object inside a 200 (OpenRouter), the server's own words in an error
reply, a 400 refusing one request parameter (reasoning models), an HTML page where JSON was due."""

from __future__ import annotations

import html
import json
import math
import re
from typing import Any

from .wire import ChatResponse, PermanentError, TransientError, refuses_system_role

__all__ = ["chat_response", "error_message", "html_title", "looks_like_html", "unsupported_param"]


def unsupported_param(e) -> str | None:
    """'max_tokens' or 'temperature' when a 400 says the model does not take it (OpenAI's words:
    "Unsupported parameter: 'max_tokens' is not supported with this model. Use
    'max_completion_tokens' instead." / "Unsupported value: 'temperature' does not support 0 with
    this model. Only the default (1) value is supported."), 'system' when the model's chat template
    takes no system turn (vLLM passes the template's own words on: Gemma 2's "System role not
    supported", Mistral-7B-Instruct's "Conversation roles must alternate..."), else None."""
    body = getattr(e, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    param = err.get("param")
    message = str(err.get("message") or getattr(e, "message", "") or "")
    if refuses_system_role(message):
        return "system"
    for name in ("max_tokens", "temperature"):
        named = param == name or f"'{name}'" in message
        if named and (err.get("code") in ("unsupported_parameter", "unsupported_value")
                      or message.lower().startswith("unsupported")):
            return name
    return None


def error_message(e) -> str:
    """The server's own words in an error reply. The openai client hands over the body's `error`
    (a dict, or a string), or the body's text when it is not JSON, as `e.body`."""
    body = getattr(e, "body", None)
    if isinstance(body, list) and body and isinstance(body[0], dict):  # Google's [{"error": {...}}]
        body = body[0]
    if isinstance(body, dict):
        err = body.get("error", body)
        err = err if isinstance(err, (dict, str)) else body
        if isinstance(err, dict):  # OpenAI's {"message": ...}; FastAPI's {"detail": ...} (vLLM, SGLang off-route)
            body = next((v for k in ("message", "detail") if isinstance(v := err.get(k), str) and v), None)
            if body is not None:
                body += _provider_said(err)
        else:
            body = err
    if isinstance(body, str) and body.strip():
        if looks_like_html(body):
            return f"an HTML page ({html_title(body)}), likely from a proxy in front of the server"
        return " ".join(body.split())[:300]
    return str(getattr(e, "message", e))[:300]


def looks_like_html(text: str) -> bool:
    head = text.lstrip()[:200].lower()
    return head.startswith("<!doctype html") or head.startswith("<html") or "<head" in head or "<body" in head


def html_title(text: str) -> str:
    m = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    title = " ".join(html.unescape(m.group(1)).split())[:120] if m else ""
    return f"title {title!r}" if title else "no title"


def _provider_said(err: dict) -> str:
    """What a router's error names beyond its message: OpenRouter's `metadata` holds the upstream
    provider's name and its own error (`raw`), or a moderation's `reasons` ("Provider returned error"
    alone says nothing a user can act on)."""
    meta = err.get("metadata")
    if not isinstance(meta, dict):
        return ""
    said = []
    if isinstance(meta.get("provider_name"), str):
        said.append(f"provider {meta['provider_name']}")
    raw, reasons = meta.get("raw"), meta.get("reasons")
    if raw:
        said.append(" ".join((raw if isinstance(raw, str) else json.dumps(raw)).split())[:200])
    if isinstance(reasons, list) and reasons:
        said.append("flagged: " + ", ".join(map(str, reasons))[:200])
    return f" ({': '.join(said)})" if said else ""


def _body_error(err: Any) -> Exception:
    """The failure that an error object inside a 200 body stands for (OpenRouter reports errors met
    while generating this way, with `code` the HTTP status it would have had; a proxy may pass an
    upstream error on with OpenAI's string `code`), by the rule for an HTTP status (`failure_for`):
    no credit or a refused key stop the run here too."""
    from .sdk_attempt import error_code, failure_for

    if isinstance(err, dict):
        msg = str(err.get("message") or err)[:300] + _provider_said(err)
        code = err.get("code")
    else:
        msg, code = str(err)[:300], None
    try:
        status = int(code)
    except (TypeError, ValueError):
        status = None
    status = status if status is not None and 400 <= status < 600 else None  # else no status it names
    reason = f"the server answered 200 with an error: {msg}" + (f" (code {status})" if status else "")
    if msg.startswith("Unexpected endpoint or method"):  # LM Studio's answer to a route it lacks, sent as a 200
        return PermanentError(reason, status=404)
    return failure_for(status, reason, code=error_code(err), err=err if isinstance(err, dict) else None)


def chat_response(data: Any) -> ChatResponse:
    """A ChatResponse from a chat-completion JSON body, tolerating what lenient servers omit."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if isinstance(data, dict) and data.get("error") and not choices:
        raise _body_error(data["error"])
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        # a 200 whose body is not a chat completion (a proxy's page, an empty list of choices)
        raise TransientError(f"response had no choices (not a chat completion): {json.dumps(data)[:200]}")
    ch = choices[0]
    if ch.get("error"):  # OpenRouter: an error met mid-generation, finish_reason "error"
        raise _body_error(ch["error"])
    msg = ch.get("message") if isinstance(ch.get("message"), dict) else {}
    text = msg.get("content")
    thought_parts = False
    if isinstance(text, list):  # content parts: the answer is the text parts; Mistral's Magistral sends its
        # thinking as {"type": "thinking", "thinking": [...]} parts before them, others as "reasoning" parts
        parts = [p for p in text if isinstance(p, dict)]
        thought_parts = any(p.get("type") in ("thinking", "reasoning") for p in parts)
        text = "".join(p["text"] for p in parts
                       if p.get("type", "text") in ("text", "output_text") and isinstance(p.get("text"), str))
    refusal = msg.get("refusal")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}

    details = usage.get("completion_tokens_details")
    # vLLM, llama.cpp, LM Studio / Ollama, OpenRouter (whose reasoning_details may come without `reasoning`)
    reasoning = msg.get("reasoning_content") or msg.get("reasoning") or msg.get("reasoning_details")
    reported = "prompt_tokens" in usage or "completion_tokens" in usage
    prompt = _token_count(usage.get("prompt_tokens"))
    thought = _token_count(details.get("reasoning_tokens")) if isinstance(details, dict) else 0
    if reported:  # Gemini's OpenAI endpoint (and proxies of it) leave the thinking, billed as output, out of
        # completion_tokens, though total_tokens and reasoning_tokens count it: output is the most any of them says
        completion = max(_token_count(usage.get("completion_tokens")), thought,
                         _token_count(usage.get("total_tokens")) - prompt)
    else:
        completion = sum(len(t.encode("utf-8")) for t in (text, reasoning, refusal) if isinstance(t, str))
    return ChatResponse(
        text if isinstance(text, str) else None,
        prompt, completion,
        refusal if isinstance(refusal, str) and refusal else None,
        ch.get("finish_reason"),
        reasoning_tokens=thought,
        reasoned=bool(reasoning) or thought_parts,
        usage_reported=reported,
        cached_prompt_tokens=_cached_prompt_tokens(usage),
        cache_write_5m_tokens=_cache_write_tokens(usage),
        cost_usd=_reported_cost(usage),
    )


def _reported_cost(usage: dict) -> float | None:
    """The USD the provider billed for this request, where it says: OpenRouter's `usage.cost` (in credits,
    one per USD; sent with every reply, `usage: {include: true}` no longer needed), plus, for a request
    it sent with the user's own provider key (`is_byok`), `cost_details.upstream_inference_cost`, which
    that provider bills apart. None where no finite, non-negative figure is given."""
    def usd(x: Any) -> float | None:
        if isinstance(x, bool) or not isinstance(x, (int, float, str)):
            return None
        try:
            v = float(x)
        except ValueError:
            return None
        return v if math.isfinite(v) and v >= 0 else None

    cost = usd(usage.get("cost"))
    details = usage.get("cost_details")
    if cost is not None and usage.get("is_byok") is True and isinstance(details, dict):
        cost += usd(details.get("upstream_inference_cost")) or 0.0
    return cost


def _cached_prompt_tokens(usage: dict) -> int:
    """Prompt tokens the provider's prompt cache served: OpenAI's (vLLM's, OpenRouter's)
    `prompt_tokens_details.cached_tokens`, DeepSeek's `prompt_cache_hit_tokens`."""
    details = usage.get("prompt_tokens_details")
    cached = _token_count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return cached or _token_count(usage.get("prompt_cache_hit_tokens"))


def _cache_write_tokens(usage: dict) -> int:
    """Prompt tokens the provider wrote to its prompt cache, which Claude bills above the input price, as an
    endpoint that fronts Claude reports them: OpenRouter's `prompt_tokens_details.cache_write_tokens`,
    LiteLLM's `cache_creation_input_tokens` (Anthropic's own name). Neither says how long they are kept: priced
    at the default TTL's rate, 5 minutes (OpenRouter reports the cost it billed besides, which is the cost)."""
    details = usage.get("prompt_tokens_details")
    written = _token_count(details.get("cache_write_tokens")) if isinstance(details, dict) else 0
    return written or _token_count(usage.get("cache_creation_input_tokens"))


def _token_count(x: Any) -> int:
    """A token count a lenient server sent (a number, a numeric string, null, junk) as a count: 0 when none."""
    try:
        return max(0, int(x or 0))
    except (TypeError, ValueError):
        return 0
