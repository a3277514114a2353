"""What the judge's HTTP backends share about one attempt through an official SDK (`openai`,
`anthropic`: the same error classes, by name): one client per event loop, the attempt's deadline
as a whole, and an HTTP error status as the judge's failure.

- `ClientPerLoop`: httpx pools are bound to the event loop that made them; a client is made per
  loop and kept for it, and one of a finished loop is dropped.
- `attempt`: `timeout_s` is the deadline of the attempt in all (connect, send, wait, read): httpx's
  timeouts are per read, so a server sending a byte now and then would hold a request forever
  under them alone. A timeout or a connection error is worth retrying.
- `status_failure` (`failure_for`, also the rule for an error inside a 200 body): 401 refuses the credentials and 402 / 429 `insufficient_quota` an account
  without credit, a 429 for a quota spent for the day likewise (the run stops), 408, 429 and 5xx are retried (honouring retry-after, else on a 429
  the wait its message names, else Google's RetryInfo, else OpenAI's `x-ratelimit-reset-*`), other statuses are not; a server's `x-should-retry` header
  overrules the status, as it does in both SDKs. A refusal for a prompt over the model's context
  says what to shorten.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any, Awaitable, Callable, TypeVar

from .judge import CredentialsRejected, no_credit, quota_spent
from .wire import (PermanentError, TransientError, is_retryable, parse_rate_limit_reset, parse_retry_after,
                   wait_in_message)

__all__ = ["ClientPerLoop", "attempt", "error_code", "failure_for", "status_failure"]

T = TypeVar("T")


class ClientPerLoop:
    """The SDK client of the running event loop, made by `make()` the first time it is wanted there.
    Each loop keeps its own: a notebook's `await judge.complete(...)` runs on the kernel's loop and
    `judge.complete_sync(...)` on a worker thread's; replacing the kernel's client there dropped it
    for the SDK to close from the wrong loop and thread."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}

    def get(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            for done in [lp for lp in self._clients if lp.is_closed()]:  # a finished loop's client is dropped
                del self._clients[done]
            client = self._clients[loop] = self._make()
        return client

    async def aclose(self) -> None:
        """Close the running loop's client (another loop's cannot be closed here)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()


async def attempt(call: Awaitable[T], *, timeout_s: float, sdk: Any, where: str) -> T:
    """Await one SDK call within `timeout_s` in all; the SDK's timeout and connection errors (and
    the deadline passing) as `TransientError`. `where` is the server's URL, which a connection error
    names (a server not started, a wrong port: what the user fixes)."""
    try:
        return await asyncio.wait_for(call, timeout=timeout_s)
    except (sdk.APITimeoutError, asyncio.TimeoutError):
        raise TransientError(f"timed out after {timeout_s:g} s (no complete answer by then)") from None
    except sdk.APIConnectionError as e:
        cause = e.__cause__ or e
        raise TransientError(f"could not reach {where} ({type(cause).__name__}: {cause}); is the server running "
                             "there? (JudgeConfig.base_url, --judge-base-url)") from None


def status_failure(e: Any, said: str, *, credentials: str) -> Exception:
    """The judge's failure for an SDK's `APIStatusError` `e`, described by `said` ("HTTP 429: ...");
    `credentials` says what to set when the server refused the key (`failure_for`)."""
    err = error_object(getattr(e, "body", None))
    return failure_for(e.status_code, said, code=error_code(err), err=err, headers=e.response.headers,
                       credentials=credentials)


_KEY_HINT = "check the judge's API key (--judge-api-key)"


def failure_for(status: int | None, said: str, *, code: str | None = None, err: Any = None, headers: Any = None,
                credentials: str = _KEY_HINT) -> Exception:
    """The judge's failure for an error with HTTP `status` (None: a server's error that names none,
    worth retrying), described by `said`, the error body's `code` and the reply's `headers`: the one
    rule for an HTTP error status and for an error inside a 200 body (OpenRouter's, a proxy's).
    401 refuses the credentials (`credentials` says what to set). An account with no credit left
    (OpenAI's 429 `insufficient_quota`, a 402 from OpenRouter, DeepSeek or Anthropic, Anthropic's 400
    "Your credit balance is too low") refuses every request alike, however long one waits: the run
    stops there too, never retried as a rate limit; so does a quota spent for the day (`daily_quota`, from
    the error object `err`), whose 429 may name a wait of seconds all the same, and Anthropic's spend limit."""
    if status == 401:  # every request of the run would be refused alike: it stops, saying what to set
        return CredentialsRejected(f"{said}: {credentials}")
    if status == 402 or code == "insufficient_quota" or "credit balance is too low" in said:
        return no_credit(said)
    if status in (429, None) and daily_quota(err, said):
        return quota_spent(said, until=_resets_at(err))
    if status == 400 and _SPEND_LIMIT_WORDS.search(said):  # its message names the day access comes back
        return quota_spent(said)
    if status is None:
        return TransientError(said)
    headers = {} if headers is None else headers
    told = str(headers.get("x-should-retry", "")).lower()  # the server's own word, which both SDKs obey first
    if told == "true" or (is_retryable(status) and told != "false"):
        wait = parse_retry_after(headers)
        if wait is None and status == 429:  # the wait its message names (for the limit this request met:
            # the reset headers of a limit not spent to 0 may be the other one's), else OpenAI's reset headers
            wait = wait_in_message(said)
            wait = _google_retry_delay(err) if wait is None else wait
            wait = parse_rate_limit_reset(headers) if wait is None else wait
        return TransientError(said, status=status, retry_after=wait)
    return PermanentError(said + context_hint(said) if status in (400, 413) else said, status=status)


_CONTEXT_WORDS = re.compile(r"context[ _](length|size|window)|maximum context|prompt is too long|too many tokens",
                            re.IGNORECASE)


def context_hint(said: str) -> str:
    """What to change when a server refused a request as longer than its model's context (OpenAI's and
    vLLM's "maximum context length", llama.cpp's "exceeds the available context size", Anthropic's
    "prompt is too long"); "" for any other refusal."""
    if not _CONTEXT_WORDS.search(said):
        return ""
    return (" (the judge's prompt plus its answer's room exceed the model's context: give the server a longer one, "
            "lower --judge-reasoning-tokens, or show shorter examples: `saesteer label` --max-example-tokens, "
            "--n-explain-top, --n-explain-quantile)")


def error_object(body: Any) -> dict | None:
    """The error object of an SDK error's body: OpenAI's SDK hands over the body's `error` (a dict),
    Anthropic's the whole body; Google's OpenAI endpoint sends a list, `[{"error": {...}}]`."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if not isinstance(body, dict):
        return None
    err = body.get("error", body)
    return err if isinstance(err, dict) else None


# Anthropic's 400 for a workspace that reached the spend limit set for it: "You have reached your specified API
# usage limits. You will regain access on 2026-04-01 at 00:00 UTC." (every request until then alike)
_SPEND_LIMIT_WORDS = re.compile(r"reached your specified API usage limits", re.IGNORECASE)
# OpenRouter's daily cap on free models ("Rate limit exceeded: free-models-per-day. Add 10 credits to unlock
# 1000 free model requests per day"; "free-models-per-day-high-balance")
_PER_DAY_WORDS = re.compile(r"free-models-per-day", re.IGNORECASE)


def daily_quota(err: Any, said: str) -> bool:
    """Whether a 429 is a quota spent for the day, not a rate limit of seconds: Gemini's RESOURCE_EXHAUSTED
    names the quota met in its `QuotaFailure` details (quotaId GenerateRequestsPerDayPerProjectPerModel-FreeTier;
    its words, "You exceeded your current quota", and its retryDelay of seconds are the same for a per-minute
    quota), OpenRouter's says free-models-per-day."""
    return bool(_PER_DAY_WORDS.search(said)) or any("perday" in q.lower() for q in _quota_ids(err))


def _quota_ids(err: Any) -> list[str]:
    """The quotaIds a Google error's `QuotaFailure` details name: the quotas the request went over."""
    ids = []
    details = err.get("details") if isinstance(err, dict) else None
    for d in details if isinstance(details, list) else ():
        violations = d.get("violations") if isinstance(d, dict) else None
        for v in violations if isinstance(violations, list) else ():
            if isinstance(v, dict) and "quotaId" in v:
                ids.append(str(v["quotaId"]))
    return ids


def _google_retry_delay(err: Any) -> float | None:
    """Seconds from the `RetryInfo` detail of a Google error ("retryDelay": "36s", a protobuf Duration), which
    its message says too, beyond the part of it an error message keeps."""
    details = err.get("details") if isinstance(err, dict) else None
    for d in details if isinstance(details, list) else ():
        delay = d.get("retryDelay") if isinstance(d, dict) else None
        if isinstance(delay, str) and re.fullmatch(r"\d{1,9}(\.\d{1,9})?s", delay):
            return float(delay[:-1])
    return None


def _resets_at(err: Any) -> str:
    """' until YYYY-MM-DD HH:MM UTC' from the reset time an OpenRouter 429 carries in its body (`metadata.headers`
    `X-RateLimit-Reset`, milliseconds since the epoch); Gemini's daily quotas reset at midnight Pacific time
    and are its Google Cloud project's, not the key's (a new key of the same project gets none); else ' for
    the day'."""
    meta = err.get("metadata") if isinstance(err, dict) else None
    headers = meta.get("headers") if isinstance(meta, dict) else None
    try:
        ms = float(headers.get("X-RateLimit-Reset")) if isinstance(headers, dict) else None
        when = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc) if ms else None
    except (TypeError, ValueError, OverflowError, OSError):
        when = None
    if when:
        return f" until {when:%Y-%m-%d %H:%M} UTC"
    if _quota_ids(err):
        return (" until midnight Pacific time (Gemini counts it per Google Cloud project: another key needs another "
                "project)")
    return " for the day"


def error_code(err: Any) -> str | None:
    """The `code` (else `type`) of an OpenAI-shaped error object, where it is a word
    ("insufficient_quota"; OpenRouter's numeric codes are statuses)."""
    if not isinstance(err, dict):
        return None
    return next((v for v in (err.get("code"), err.get("type")) if isinstance(v, str) and v), None)
