"""The judge: one interface over LLM backends, with retries, a response cache, accounting,
a concurrency bound, schema-checked answers and bounded re-asks.

    judge = Judge(OpenAIBackend(model="gpt-4o-mini"), cache=ResponseCache(path), ledger=...)
    done = await judge.complete(messages, schema={...})      # -> Completion (done.value: parsed)
    done = judge.complete_sync(messages, schema={...})       # same, from plain (non-async) code
    many = await judge.complete_many([JudgeCall(messages, schema), ...])

A *backend* (`autointerp.wire`) sends one chat request and returns one response, raising
`TransientError` for what is worth retrying (429, 408, 5xx, connection resets, timeouts,
unreadable bodies) and `PermanentError` for the rest (other 4xx). The `Judge` adds, per request:

- the cache: a response already stored under the same (backend kind, model, full request) key
  is reused and costs nothing;
- the budget: an upper bound of the cost is reserved before sending (one token per prompt byte,
  plus framing the server was seen to add, plus max_tokens; see `accounting`); a request that
  does not fit waits for those in flight to settle, then is refused (`BudgetExceeded`) if it
  still does not fit, so the budget is never crossed; a reply without token counts is counted at
  that bound (said once), never as free;
- retries with jittered exponential backoff; a 429's Retry-After (or retry-after-ms; without them
  the wait its message names, else OpenAI's x-ratelimit-reset-*) is honoured
  and pauses *all* requests of this judge until it has passed, since a rate limit is shared: the
  pause is checked after a request gets its concurrency slot, right before it is sent, so calls
  that were queued for a slot during the pause wait for it too;
- the concurrency bound: at most `concurrency` requests in flight (a backoff does not hold a slot);
- the deadline: the backend gives each attempt `timeout_s` in all, however slowly the server
  sends (a server trickling bytes cannot hold a request longer);
- a refused key (HTTP 401), an account without credit (402, OpenAI's 429 insufficient_quota) or a
  quota spent for the day (Gemini's per-day RESOURCE_EXHAUSTED, OpenRouter's free-models-per-day, a
  wait of over an hour and over `max_retry_after_s`): `CredentialsRejected`, and no later request of
  this judge is sent;
  it is never one call's failure (`complete_many` raises it), so every command stops at it.

and per call: the answer is parsed as JSON (bare or ```json fenced), checked against `schema`
and then by `validate`; when that fails, or the model refuses, the judge re-asks (the bad answer
and the reason are appended to the conversation) at most `max_reasks` times, then raises
`AnswerInvalid`. An invalid answer is never returned. The answer is what follows a reasoning
model's thinking (`<think>...</think>` in the content; reasoning sent in its own field is never
read: replies holding only that are re-asked, and the final error says how to turn thinking
off). Two endings are not re-asked, since asking again would end the same way: a reply cut off
at the output-token limit before any answer (a reasoning model that spent it thinking: the error
says how to give it room, `reasoning_tokens` are added to every request's limit; a chat template
that opens the block itself (DeepSeek-R1, QwQ) leaves no opening tag in the reply, so a server's
cut-off reply to a JSON ask with no closing `</think>` and no reasoning sent apart counts as such
unless it opens with its JSON answer (a note after the answer may be what was cut; thinking never
opens with one), and a local judge's reply after such a template is all thinking until
`</think>`) and a reply withheld by the server's content filter.

The backends' own retry machinery is switched off (openai `max_retries=0`): retries here are
counted, jittered and share the Retry-After pause.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Sequence

from saes.errors import SaesteerError

from .accounting import BudgetExceeded, Ledger, Prices, Reservation, prompt_token_bound
from .cache import CachedResponse, ResponseCache, request_key
from .syncrun import run_coroutine_sync
from .schema import InvalidAnswer, check_schema, opens_with_json_answer, parse_json_answer
from .wire import Backend, ChatRequest, ChatResponse, PermanentError, TransientError, split_thinking

__all__ = [
    "JudgeError",
    "RequestFailed",
    "CredentialsRejected",
    "AnswerInvalid",
    "BudgetExceeded",
    "InvalidAnswer",
    "RetryPolicy",
    "Completion",
    "JudgeCall",
    "Judge",
]


# ---------------------------------------------------------------------------------------------
# errors


class JudgeError(RuntimeError):
    """A judge call that produced no valid answer; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RequestFailed(JudgeError):
    """The request failed permanently, or still failed after all retries."""


class CredentialsRejected(RequestFailed, SaesteerError):
    """The server refused the credentials (HTTP 401) or the account behind them (no credit left: 402,
    OpenAI's 429 insufficient_quota; a quota spent for the day: `quota_spent`): every request would fail
    the same way for hours, so this
    is never one call's failure; `reason` says which setting to fix. A backend raises it (never
    retried); the judge sends nothing more once it has met one; whatever uses the judge (a labelling
    run, a scorer, a sweep) lets it through, and the CLI says it in one line (exit status 2), as any
    error the user fixes."""

    def __init__(self, reason: str) -> None:
        RequestFailed.__init__(self, reason)
        SaesteerError.__init__(self, reason)


# what a stop for a spent quota or credit says besides the server's words: the run's work is not lost
_RESUMES = ("labels written so far are kept, and rerunning the same command resumes where this run stopped "
            "(answers already given are cached)")
# a server-requested wait this long (and over --judge-max-retry-after-s) is not one to sit out within the run: a
# quota spent for hours (Groq's "tokens per day ... try again in 7h12m"), a server down for hours (`long_wait`)
QUOTA_WAIT_S = 3600.0


def no_credit(said: str) -> CredentialsRejected:
    """The stop for an account without credit (402, OpenAI's 429 insufficient_quota): `said` is the server's
    error as the backend words it."""
    return CredentialsRejected(f"{said}: the account behind the key has no credit left; add credit (or raise its "
                               f"spending limit) with the provider, or use another key (--judge-api-key); {_RESUMES}")


def quota_spent(said: str, *, until: str = "") -> CredentialsRejected:
    """The stop for a quota spent for the day or for hours (Gemini's per-day RESOURCE_EXHAUSTED, OpenRouter's
    free-models-per-day, a wait of hours): retrying within the run would only wait; `until` says when the
    server said it resets, if it did."""
    return CredentialsRejected(f"{said}: the provider's quota for this key is spent{until}; rerun once it is back, "
                               f"raise the quota, or use a key of another account (--judge-api-key); {_RESUMES}")


def long_wait(said: str, seconds: float, status: int | None) -> CredentialsRejected:
    """The stop for a server asking to wait hours: a 429's is a quota spent for hours (Groq's tokens per day);
    another status's (a 503 down for maintenance) is no quota, and rerunning later is the fix. The judge stops
    only for a wait over QUOTA_WAIT_S (an hour), so it is said in hours."""
    wait = f"{seconds / 3600:.1f} h"
    if status == 429:
        return quota_spent(said, until=f" (the server asks to wait {wait})")
    return CredentialsRejected(f"{said}: the server asks to wait {wait} before the next request; rerun then; "
                               f"{_RESUMES}")


class AnswerInvalid(JudgeError):
    """Every answer (first ask and all re-asks) was invalid or a refusal."""


# ---------------------------------------------------------------------------------------------
# policy and results


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried."""

    max_retries: int = 6  # retries after the first attempt
    base_s: float = 1.0  # first backoff; doubles each retry
    max_s: float = 60.0  # backoff cap
    max_retry_after_s: float = 300.0  # longest server-requested wait honoured (longer ones are capped)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.base_s < 0 or self.max_s < 0 or self.max_retry_after_s < 0:
            raise ValueError("retry delays (base_s, max_s, max_retry_after_s) must be >= 0")

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds before retry number `retry` (0-based). Retry-After wins (plus up to 10% jitter
        so that waiting clients do not return in lockstep); otherwise "equal jitter" exponential
        backoff: half the capped exponential delay plus a uniform draw over the other half."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s) * (1.0 + 0.1 * rng.random())
        d = min(self.max_s, self.base_s * (2.0**retry))
        return d / 2 + rng.random() * d / 2


@dataclass(frozen=True)
class Completion:
    """A valid answer. `value` is the parsed (and validated) answer, or the text when the call
    asked for free text. Token counts and cost are what *this call* paid (0 for cache hits)."""

    text: str
    value: Any
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    requests: int = 0  # HTTP requests sent, retries included
    cached: int = 0  # responses taken from the cache
    reasks: int = 0
    # the settings the answer's request went with (`Judge.settings_for`; None: a cache entry older than that)
    settings_sent: dict[str, Any] | None = None


@dataclass(frozen=True)
class JudgeCall:
    """One call for `Judge.complete_many`."""

    messages: Sequence[dict[str, str]]
    schema: dict[str, Any] | None = None
    validate: Callable[[Any], Any] | None = None
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass
class _Tally:
    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0


_REASK = (
    "Your previous answer could not be used: {reason}. "
    "Answer the original request again, replying with only the JSON object in the requested form."
)


# ---------------------------------------------------------------------------------------------


class Judge:
    """Robust, cached, accounted access to one backend. See the module docstring."""

    def __init__(
        self,
        backend: Backend,
        *,
        cache: ResponseCache | None = None,
        ledger: Ledger | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 8,
        max_reasks: int = 2,
        temperature: float = 0.0,
        max_tokens: int = 256,
        response_format: str | None = None,
        seed: int | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        reasoning_tokens: int = 0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if reasoning_tokens < 0:
            raise ValueError("reasoning_tokens must be >= 0")
        if max_reasks < 0:
            raise ValueError("max_reasks must be >= 0")
        if response_format not in (None, "text", "json_object"):
            raise ValueError("response_format must be None, 'text' or 'json_object'")
        self.backend = backend
        self.cache = cache
        self.ledger = ledger or Ledger(Prices.for_model(backend.model, local=backend.kind == "transformers"))
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self.max_reasks = max_reasks
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.response_format = None if response_format == "text" else response_format
        self.reasoning_tokens = reasoning_tokens  # added to every request's max_tokens: room to think
        self._rng = random.Random(seed)
        self._sleep = sleep or asyncio.sleep
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self._not_before = 0.0  # time.monotonic() before which no request is sent (429 pause)
        self._settled_event: asyncio.Event | None = None  # set (and replaced) when a reservation settles
        self._extra_framing = 0  # prompt tokens the server counted beyond our bound (chat template)
        self._output_excess = 0  # completion tokens beyond max_tokens the server was seen to charge
        self.retry_log: list[tuple[str, float]] = []  # (reason, delay) of every retry, for tests/logs
        self._refused: str | None = None  # why the server refused the key; then nothing more is sent
        self._usage_noted: set[str] = set()  # what usage the server was said (once each) to leave out

    # -- identity -------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        return self.backend.model

    @property
    def kind(self) -> str:
        return self.backend.kind

    def settings_of(self, usage: Any) -> dict[str, Any]:
        """A provenance's judge settings: those its answers were asked with (`Usage.settings_sent`,
        the first answer's that says), else, for answers from a cache entry older than that record,
        what requests ask the server for now, after any switch a refusal caused (a reasoning model:
        max_completion_tokens, no temperature)."""
        return usage.settings_sent or self.settings_for(self.request_for([]))

    def settings_for(self, request: ChatRequest) -> dict[str, Any]:
        """The settings `request` is sent with now: its temperature (None once the model refused
        any but its default, or the API takes none), the output-limit parameter, reasoning_effort,
        `reasoning_tokens`, the room added to its output limit, and what the backend's `provenance()`
        adds (the reasoning effort it sends; an Anthropic judge's thinking)."""
        settings = {"temperature": request.temperature if getattr(self.backend, "send_temperature", True) else None,
                    "max_tokens_param": getattr(self.backend, "max_tokens_param", None),
                    "reasoning_effort": None,
                    "reasoning_tokens": self.reasoning_tokens}
        if hasattr(self.backend, "provenance"):
            settings.update(self.backend.provenance())
        return settings

    def describe(self) -> str:
        return f"{self.kind}:{self.model}"

    # -- requests -------------------------------------------------------------------------------

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._loop is not loop:
            self._loop, self._sem = loop, asyncio.Semaphore(self.concurrency)
            self._settled_event = asyncio.Event()
        return self._sem

    async def _reserve(self, request: ChatRequest) -> Reservation:
        """Reserve the request's cost bound; wait while requests in flight may free room for it."""
        prompt = prompt_token_bound(list(request.messages), self._extra_framing)
        output = request.max_tokens + self._output_excess
        while True:
            r = self.ledger.try_reserve(prompt, output)
            if r is not None:
                return r
            if not (self.ledger.reserved and self.ledger.fits(prompt, output)):
                return self.ledger.reserve(prompt, output)  # raises BudgetExceeded
            self._semaphore()
            assert self._settled_event is not None
            await self._settled_event.wait()  # taken in the same step as the check: no missed wake-up

    def _settle_done(self) -> None:
        if self._settled_event is not None:
            self._settled_event.set()
            self._settled_event = asyncio.Event()

    def _learn_usage(self, request: ChatRequest, resp: ChatResponse) -> None:
        """Widen the cost bound when the server counted more than it allowed for."""
        over = resp.prompt_tokens - prompt_token_bound(list(request.messages))
        if over > self._extra_framing:
            self._extra_framing = over
        excess = resp.completion_tokens - request.max_tokens
        if excess > self._output_excess:
            self._output_excess = excess

    def _bound_usage(self, request: ChatRequest, resp: ChatResponse) -> ChatResponse:
        """A reply without token counts counted at its bound (the reservation's prompt, the answer's
        bytes up to max_tokens, all of them when it was cut there): the run's figures and its budget
        are then over the truth, never under it (as 0 tokens would be: a budget that never binds).
        A count of 0 prompt tokens is none (no prompt is empty; Ollama's /v1 said 0 for a prompt its
        KV cache held): the prompt is bounded alike, the output as reported."""
        prompt = prompt_token_bound(list(request.messages), self._extra_framing)
        unreported = "no token usage" if not resp.usage_reported else "0 prompt tokens"
        if unreported not in self._usage_noted:
            self._usage_noted.add(unreported)
            from saes.errors import note

            note(f"the judge server ({self.describe()}) reports {unreported}; tokens it does not count are counted "
                 "as an upper bound (one per byte of prompt and answer), so the run's token and cost figures and a "
                 "budget are over, never under")
        if resp.usage_reported:
            return replace(resp, prompt_tokens=prompt, cached_prompt_tokens=0, cache_write_5m_tokens=0,
                           cache_write_1h_tokens=0)
        out = request.max_tokens if resp.finish_reason == "length" else min(resp.completion_tokens, request.max_tokens)
        return replace(resp, prompt_tokens=prompt, completion_tokens=out)

    async def _wait_out_pause(self) -> None:
        """Sleep until the shared 429 pause has passed (again if it was extended meanwhile)."""
        while True:
            until = self._not_before
            wait = until - time.monotonic()
            if wait <= 0:
                return
            await self._sleep(wait)
            if self._not_before <= until:
                return

    def request_for(self, messages: Sequence[dict[str, str]], max_tokens: int | None = None,
                    temperature: float | None = None) -> ChatRequest:
        return ChatRequest(
            messages=tuple({"role": m["role"], "content": m["content"]} for m in messages),
            temperature=self.temperature if temperature is None else temperature,
            max_tokens=(self.max_tokens if max_tokens is None else max_tokens) + self.reasoning_tokens,
            response_format=self.response_format,
        )

    def cache_key(self, request: ChatRequest) -> str:
        extra = self.backend.cache_extra() if hasattr(self.backend, "cache_extra") else None
        return request_key(request.key_dict(self.kind, self.model, extra))

    def is_cached(self, messages: Sequence[dict[str, str]], max_tokens: int | None = None) -> bool:
        """Whether the first ask of these messages would be answered from the cache."""
        return self.cache is not None and self.cache.contains(self.cache_key(self.request_for(messages, max_tokens)))

    async def _send(self, request: ChatRequest, tally: _Tally) -> ChatResponse:
        key = self.cache_key(request)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                tally.cached += 1
                self.ledger.count(cached=1)
                return ChatResponse(hit.text, 0, 0, hit.refusal, hit.finish_reason, settings_sent=hit.settings_sent,
                                    reasoning_tokens=hit.reasoning_tokens, reasoned=hit.reasoned)
        reservation = await self._reserve(request)
        try:
            retry = 0
            while True:
                async with self._semaphore():
                    await self._wait_out_pause()  # after the slot: queued calls see a pause set meanwhile
                    if self._refused is not None:  # refused meanwhile: this request would be refused alike
                        raise CredentialsRejected(self._refused)
                    tally.requests += 1
                    try:
                        resp = await self.backend.chat(request)
                    except TransientError as e:
                        err = e
                    except CredentialsRejected as e:  # the backend's: said once, for every request after it
                        self.ledger.count(failed=1)
                        self._refused = f"request rejected: {e.reason}"
                        raise CredentialsRejected(self._refused) from None
                    except PermanentError as e:
                        self.ledger.count(failed=1)
                        raise RequestFailed(f"request rejected: {e.reason}") from None
                    else:
                        err = None
                        resp = replace(resp, settings_sent=self.settings_for(request))  # after the switches it met
                if err is None:
                    break
                if err.retry_after is not None and err.retry_after > max(self.retry.max_retry_after_s, QUOTA_WAIT_S):
                    self.ledger.count(failed=1)  # waiting hours within the run helps nothing: stop, saying when
                    stop = long_wait(f"request rejected: {err.reason}", err.retry_after, err.status)
                    self._refused = stop.reason
                    raise stop from None
                if retry >= self.retry.max_retries:
                    self.ledger.count(failed=1)
                    raise RequestFailed(
                        f"gave up after {retry + 1} attempts; last error: {err.reason}"
                    ) from None
                delay = self.retry.delay(retry, err.retry_after, self._rng)
                if err.retry_after is not None:  # a rate limit is shared: pause every request
                    self._not_before = max(self._not_before, time.monotonic() + delay)
                self.retry_log.append((err.reason, delay))
                self.ledger.count(retries=1)
                retry += 1
                await self._sleep(delay)
            if not resp.usage_reported or resp.prompt_tokens <= 0:
                resp = self._bound_usage(request, resp)
            cost = self.ledger.settle(reservation, resp.prompt_tokens, resp.completion_tokens, resp.cached_prompt_tokens,
                                      reported_cost=resp.cost_usd, cache_write_5m_tokens=resp.cache_write_5m_tokens,
                                      cache_write_1h_tokens=resp.cache_write_1h_tokens)
            self._learn_usage(request, resp)
        finally:
            self.ledger.release(reservation)
            self._settle_done()
        tally.prompt_tokens += resp.prompt_tokens
        tally.completion_tokens += resp.completion_tokens
        tally.cost = None if (cost is None or tally.cost is None) else tally.cost + cost
        if self.cache is not None:
            self.cache.put(
                key,
                self.model,
                CachedResponse(resp.text, resp.refusal, resp.finish_reason, resp.prompt_tokens, resp.completion_tokens,
                               resp.settings_sent, reasoned=resp.reasoned, reasoning_tokens=resp.reasoning_tokens),
            )
        return resp

    # -- calls ----------------------------------------------------------------------------------

    async def complete(
        self,
        messages: Sequence[dict[str, str]],
        schema: dict[str, Any] | None = None,
        *,
        validate: Callable[[Any], Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Completion:
        """Ask until the answer is valid (at most 1 + max_reasks asks).

        With `schema` or `validate`, the answer must be JSON (bare or ```json fenced); it is
        checked against `schema` and then passed to `validate`, whose return value becomes
        `Completion.value` (raise `InvalidAnswer` or `ValueError` in `validate` to reject).
        With neither, any non-empty, non-refusal text is valid and `value` is the text.

        Raises `AnswerInvalid`, `RequestFailed` or `BudgetExceeded`."""
        conv = [{"role": m["role"], "content": m["content"]} for m in messages]
        tally = _Tally()
        want_json = schema is not None or validate is not None
        last_reason = ""
        only_reasoning = False  # the last reply held reasoning and no answer
        for ask in range(self.max_reasks + 1):
            request = self.request_for(conv, max_tokens, temperature)
            resp = await self._send(request, tally)
            text, thinking = split_thinking(resp.text)
            if resp.finish_reason == "content_filter":  # Anthropic's stop_reason refusal reads as this
                said = f": {resp.refusal.strip()[:200]}" if resp.refusal else ""
                raise AnswerInvalid(f"the server's content filter withheld the judge's answer (finish_reason "
                                    f"content_filter{said}); asking again would be filtered the same way")
            if (resp.finish_reason == "length" and not resp.refusal
                    and _cut_before_answering(resp, text, thinking, want_json=want_json,
                                              sees_template=getattr(self.backend, "sees_template", False))):
                raise AnswerInvalid(_no_room_to_answer(request, resp, thinking, text))
            try:
                if resp.refusal:
                    raise InvalidAnswer(f"you refused ({resp.refusal.strip()[:200]})")
                if want_json:
                    value = parse_json_answer(text)
                    if schema is not None:
                        check_schema(value, schema)
                    if validate is not None:
                        value = validate(value)
                else:
                    if not text.strip():
                        raise InvalidAnswer("the answer was empty")
                    value = text
            except (InvalidAnswer, ValueError, TypeError, KeyError) as e:
                reason = e.reason if isinstance(e, InvalidAnswer) else f"{type(e).__name__}: {e}"
                if resp.finish_reason == "length":
                    reason += " (the answer was cut off at the token limit; be brief)"
                last_reason = reason
                only_reasoning = resp.reasoned and not text.strip()
                conv.append({"role": "assistant", "content": text[:2000]})  # not its thinking
                conv.append({"role": "user", "content": _REASK.format(reason=reason)})
                continue
            return Completion(
                text=text, value=value, model=self.model,
                prompt_tokens=tally.prompt_tokens, completion_tokens=tally.completion_tokens,
                cost_usd=tally.cost, requests=tally.requests, cached=tally.cached, reasks=ask,
                settings_sent=resp.settings_sent,
            )
        raise AnswerInvalid(f"no valid answer after {self.max_reasks + 1} asks; last problem: {last_reason}"
                            + (_ONLY_REASONING if only_reasoning else ""))

    async def complete_many(self, calls: Sequence[JudgeCall]) -> list[Completion | JudgeError | BudgetExceeded]:
        """Run many calls concurrently (bounded by `concurrency`); each slot of the result is a
        Completion or the exception that call ended with (failures do not stop the others). A key
        the server refused is no call's failure: it is raised, once every call has ended."""

        async def one(c: JudgeCall):
            try:
                return await self.complete(c.messages, c.schema, validate=c.validate,
                                           max_tokens=c.max_tokens, temperature=c.temperature)
            except (JudgeError, BudgetExceeded) as e:
                return e

        results = list(await asyncio.gather(*(one(c) for c in calls)))
        refused = next((r for r in results if isinstance(r, CredentialsRejected)), None)
        if refused is not None:
            raise refused
        return results

    def complete_sync(self, messages: Sequence[dict[str, str]], schema: dict[str, Any] | None = None, **kw) -> Completion:
        """`complete` from plain code. Each call runs its own event loop and HTTP connections; inside a
        running one (a Jupyter cell) in a worker thread, as `label_latents` does. For many calls use
        `complete_many_sync`."""
        return run_coroutine_sync(lambda: self._closing(self.complete(messages, schema, **kw)))

    def complete_many_sync(self, calls: Sequence[JudgeCall]) -> list:
        """`complete_many` from plain code (a Jupyter cell too: see `complete_sync`)."""
        return run_coroutine_sync(lambda: self._closing(self.complete_many(calls)))

    async def _closing(self, coro):
        try:
            return await coro
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if hasattr(self.backend, "aclose"):
            await self.backend.aclose()


# Ollama's /v1 serves some thinking models (gemma4) this way whatever the limit: all text in
# `reasoning`, none in `content`, unless thinking is turned off
_ONLY_REASONING = (" (the model wrote only reasoning, in its own field, and no answer: turn its thinking off with "
                   "JudgeConfig.reasoning_effort none, --judge-reasoning-effort none, which Ollama reads)")


def _cut_before_answering(resp: ChatResponse, text: str, thinking: str, *, want_json: bool,
                          sees_template: bool) -> bool:
    """Whether a reply cut off at the output-token limit holds no answer: its thinking was cut, it is
    empty, or it is untagged text from a server, whose chat template is not seen: a template that
    opens the thinking block itself (DeepSeek-R1, QwQ) leaves no <think> in the reply, so such text
    may be a draft inside the thinking. A JSON answer is read then only where the reply opens with
    it (thinking never does; a note after the answer may be what the limit cut); a plain-text ask
    cannot tell, and takes the text as before. A server that sent the reasoning apart (its own
    field, counted reasoning tokens) left only the answer in the content."""
    if thinking == "cut" or not text.strip():
        return True
    maybe_thinking = (thinking == "none" and not sees_template and not resp.reasoned
                      and not resp.reasoning_tokens)
    return maybe_thinking and want_json and not opens_with_json_answer(text)


def _no_room_to_answer(request: ChatRequest, resp: ChatResponse, thinking: str, text: str) -> str:
    """Why a reply that hit the output-token limit before answering failed, and what to set."""
    if thinking == "cut" or resp.reasoned or resp.reasoning_tokens > 0:
        when = "while the model was still thinking"
    elif text.strip():
        when = ("before the reply ended, with no </think> in it (it may be thinking that the chat template opened, "
                "as Qwen3's and DeepSeek-R1's do, so it is not read as an answer)")
    else:
        when = "before any answer"
    spent = f" ({resp.reasoning_tokens:,} reasoning tokens)" if resp.reasoning_tokens else ""
    return (f"truncated judge output: the output-token limit ({request.max_tokens:,}) ran out {when}{spent}; a "
            "reasoning model thinks within that limit: give it room with JudgeConfig.reasoning_tokens "
            "(--judge-reasoning-tokens, e.g. 2000) or lower JudgeConfig.reasoning_effort (--judge-reasoning-effort, "
            "e.g. low)")
