"""What a judge backend speaks: one chat request, one response, and its two kinds of failure
(`TransientError`: worth retrying, with the server's Retry-After if it sent one; `PermanentError`:
not), and a key the server refused (HTTP 401: `autointerp.judge.CredentialsRejected`, no request
can succeed). `autointerp.judge.Judge` adds retries, the cache, accounting and re-asks on top."""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict[str, str], ...]
    temperature: float = 0.0
    max_tokens: int = 256
    response_format: str | None = None  # None/"text" or "json_object"

    def key_dict(self, kind: str, model: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        d = {
            "kind": kind,
            "model": model,
            "messages": [dict(m) for m in self.messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "response_format": self.response_format,
        }
        if extra:
            d["extra"] = extra
        return d


@dataclass(frozen=True)
class ChatResponse:
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refusal: str | None = None
    finish_reason: str | None = None
    reasoning_tokens: int = 0  # of completion_tokens, spent thinking (when the server says)
    reasoned: bool = False  # the server sent reasoning beside the answer (reasoning_content / reasoning)
    settings_sent: dict[str, Any] | None = None  # what the request went with (`Judge.settings_for`; None: unknown)
    # False: the server sent no token counts (some llama.cpp builds, proxies); completion_tokens is then
    # the answer's (and sent reasoning's) UTF-8 bytes, a bound, and the judge bounds the prompt alike
    usage_reported: bool = True
    cached_prompt_tokens: int = 0  # of prompt_tokens, served by the provider's prompt cache (billed less)
    # of prompt_tokens, written to Anthropic's prompt cache to keep 5 minutes / 1 hour (billed more)
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cost_usd: float | None = None  # what the provider says it billed (OpenRouter's usage.cost); None: not said


# <think> (DeepSeek-R1, Qwen3, QwQ, GLM), <thinking> (Claude-style prompts, distilled models), <reasoning>
# (GRPO fine-tunes' <reasoning>...</reasoning> format), <seed:think> (ByteDance Seed-OSS), [THINK] (Mistral's Magistral)
_THINK_TAGS = "think|thinking|reasoning|seed:think"
_THINK_OPEN = re.compile(rf"<({_THINK_TAGS})>|\[THINK\]", re.IGNORECASE)
_THINK_CLOSE = re.compile(rf"</({_THINK_TAGS})>|\[/THINK\]", re.IGNORECASE)
# gpt-oss's Harmony markup: <|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final<|message|>...
_HARMONY_FINAL = re.compile(r"<\|channel\|>\s*final\s*(?:<\|constrain\|>\S*?)?<\|message\|>")
_HARMONY_END = re.compile(r"(?:<\|(?:return|end|call)\|>\s*)+$")


def split_thinking(text: str | None) -> tuple[str, str]:
    """(the answer, how the reply's thinking ended) of a reply whose content may hold the model's
    reasoning (DeepSeek-R1, Qwen3, QwQ served without a reasoning parser): `<think>...</think>answer`,
    or `...</think>answer` when the chat template opened the block itself; gpt-oss's raw Harmony
    channels, whose answer is the `final` channel; the same with `<thinking>`, `<reasoning>`, Magistral's
    `[THINK]...[/THINK]` and Seed-OSS's `<seed:think>...</seed:think>`. The second value is "closed" (the answer follows
    a finished thinking block), "cut" (a block that never closes, Harmony without a final channel:
    all thinking, the answer is empty) or "none" (no thinking markup: the text as it is, which may
    still be thinking when the template opened the block and the reply was cut off before closing it).
    A reply, or the rest after a close, that is one JSON answer is that answer whatever markup its
    strings name (a label of a latent that fires on `</think>`)."""
    if not text:
        return "", "none"
    finals = list(_HARMONY_FINAL.finditer(text))
    if finals:
        return _HARMONY_END.sub("", text[finals[-1].end():]).strip(), "closed"
    if text.lstrip().startswith(("<|channel|>", "<|start|>")):
        return "", "cut"
    closes = list(_THINK_CLOSE.finditer(text))
    if closes and not _whole_json(text):  # a JSON answer's words (a label of a latent firing on </think>)
        # the answer follows the last close, unless all after an earlier one is one JSON answer: the
        # answer then names the markup itself, and the last close lies inside it
        # (the first 16 closes tried: bounded work on a reply of markup)
        whole = next((rest for c in closes[:16] if _whole_json(rest := text[c.end():])), None)
        return (text[closes[-1].end():] if whole is None else whole).strip(), "closed"
    if _THINK_OPEN.match(text.lstrip()):
        return "", "cut"
    return text, "none"


def _whole_json(text: str) -> bool:
    """Whether `text` is one JSON answer, bare or ```-fenced, and nothing else."""
    from .schema import InvalidAnswer, parse_json_answer

    if not text.lstrip().startswith(("{", "[", '"', "```")):  # most text: no parse tried
        return False
    try:
        parse_json_answer(text, amid_prose=False)
    except InvalidAnswer:
        return False
    return True


def fold_system(messages) -> tuple[dict[str, str], ...]:
    """The messages with the system turns written at the head of the first user turn, for a chat
    template that refuses a system role (Gemma 2's "System role not supported", Mistral-7B-Instruct's
    and Llama-2's "roles must alternate"); what Gemma 3's template does itself."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return tuple(rest)
    if rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    else:
        rest.insert(0, {"role": "user", "content": system})
    return tuple(rest)


_SYSTEM_REFUSED = re.compile(r"system role not supported|roles must alternate", re.IGNORECASE)


def refuses_system_role(message: str) -> bool:
    """Whether a chat template's (or a server's) error says it takes no system turn."""
    return bool(_SYSTEM_REFUSED.search(message))


_OPEN_AT_END = re.compile(r"<(?:think|thinking|reasoning)>\s*$", re.IGNORECASE)


def thinking_opened(prompt: str) -> str:
    """The thinking tag a rendered chat prompt ends by opening (DeepSeek-R1's, QwQ's "<think>\n": the
    reply starts inside the block), or ""."""
    m = _OPEN_AT_END.search(prompt)
    return m.group(0) if m else ""


RETRYABLE_STATUS = frozenset({408, 429})  # plus every 5xx


def is_retryable(status: int) -> bool:
    """Whether an HTTP status is worth retrying (a rate limit, a timeout, a server error)."""
    return status in RETRYABLE_STATUS or status >= 500


class TransientError(Exception):
    """Worth retrying: rate limit, server error, reset, timeout, unreadable response."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class PermanentError(Exception):
    """Not worth retrying (bad request, auth, unknown model...)."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Backend(Protocol):
    kind: str  # "openai", "anthropic", "transformers", ...
    model: str
    # True: the backend renders the chat template itself, and a thinking block the template opened
    # starts its replies (the tag put back); else (a server) untagged text may be such thinking
    sees_template: bool

    async def chat(self, request: ChatRequest) -> ChatResponse: ...

    def cache_extra(self) -> dict[str, Any]: ...  # backend settings that change answers

    # optional: settings a label's provenance records beyond the judge's own (`Judge.settings_for`)
    # def provenance(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if headers is None:
        return None
    get = headers.get
    ms = get("retry-after-ms")
    if ms is not None:
        try:
            v = float(ms) / 1000.0
            if v >= 0:
                return v
        except ValueError:
            pass
    ra = get("retry-after")
    if ra is None:
        return None
    try:
        v = float(ra)
        return v if v >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _duration_s(text: str) -> float | None:
    """Seconds in a Go-style duration as OpenAI's rate-limit headers write them ("20ms", "1.5s",
    "6m0s", "1m30s", "2h3m4s"); None when it is not one."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * unit[u] for n, u in parts)


def parse_rate_limit_reset(headers: Any) -> float | None:
    """Seconds until the exhausted rate limit resets, from OpenAI's `x-ratelimit-reset-requests` /
    `-tokens` (sent with a 429 that has no Retry-After): the limit whose `x-ratelimit-remaining-*` is 0,
    the later one if both are; when neither says 0, the sooner reset."""
    if headers is None:
        return None
    resets, exhausted = [], []
    for kind in ("requests", "tokens"):
        raw = headers.get(f"x-ratelimit-reset-{kind}")
        wait = _duration_s(raw) if raw else None
        if wait is None:
            continue
        resets.append(wait)
        if str(headers.get(f"x-ratelimit-remaining-{kind}", "")).strip() == "0":
            exhausted.append(wait)
    if exhausted:
        return max(exhausted)
    return min(resets) if resets else None


_WAIT_IN_WORDS = re.compile(r"(?:try again|retry) in ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)|retry after (\d+(?:\.\d+)?) seconds?",
                            re.IGNORECASE)


def wait_in_message(message: str) -> float | None:
    """Seconds a rate-limit message asks to wait, for a 429 whose headers were dropped (a proxy in
    front): OpenAI's and Groq's "Please try again in 1.2s" / "in 7m36.48s", Gemini's "Please retry in
    36.429760048s.", Azure's "Please retry after 6 seconds"."""
    m = _WAIT_IN_WORDS.search(message or "")
    if m is None:
        return None
    return _duration_s(m.group(1)) if m.group(1) else float(m.group(2))
