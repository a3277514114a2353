"""A loopback HTTP server speaking OpenAI chat completions and Anthropic's Messages API, with
injected faults, and a fake LLM that answers saesteer's auto-interp prompts.

    with JudgeServer(fake_llm_answer, faults=FaultPlan({"429": 0.1, "500": 0.1}, seed=1)) as srv:
        backend = OpenAIBackend("fake-judge", base_url=srv.url)    # http://127.0.0.1:PORT/v1
        ...
        srv.records  # one Record per request: body key, fault, status, completed

Faults (name -> what the client sees):
  "429"          HTTP 429 with Retry-After (whole seconds) and retry-after-ms headers
  "500"          HTTP 500 with an error body            "503"  HTTP 503
  "400"          HTTP 400 (must not be retried)
  "reset"        the connection is reset (RST) after the request is read, no response
  "timeout"      no response for `timeout_hold_s` seconds (longer than the client's timeout)
  "bad_body"     HTTP 200 with a truncated, unparseable JSON body
  "trickle"      HTTP 200 whose (valid) body is sent one byte every `trickle_interval_s` seconds, so
                 no single read ever waits long: only an overall deadline stops it
  "malformed"    a chat completion whose content is cut in half (invalid JSON)
  "fenced"       content wrapped in ```json ... ``` (valid: must be accepted)
  "prose"        content with a sentence of prose before it (valid: must be accepted)
  "refusal"      message.refusal set and content null (half of the time), or an apology text
  "wrong_length" one item dropped from an answers list; a label 200 characters long
  "bad_schema"   valid JSON with the wrong key

Fault choice is a pure function of (seed, request body, how many times that body was seen), so
runs are reproducible whatever order concurrent requests arrive in, and a retried request can
succeed. `script(index, body) -> fault | None` overrides the plan for scripted tests.

Anthropic's Messages API (`POST {srv.root}/v1/messages`, the route the `anthropic` client calls)
is served as documented: the key in `x-api-key` (or `Authorization: Bearer`, as anthropic 2.x sends
it) checked against `api_key` when one is set (else a 401 `authentication_error`), the
`anthropic-version` header and `max_tokens` required, the system prompt top-level (a `system`
message is a 400), `temperature` refused (API version 2026-10-21), the answer in a `text` content
block after a `thinking` block when `thinking_text` is set, `stop_reason`, `usage.input_tokens` /
`output_tokens` (and the prompt cache's counts `messages_cache_usage` gives, e.g. `cache_creation_input_tokens`
and `cache_creation: {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}`), and errors as `{"type": "error", "error": {"type", "message"}}`. The fake LLM reads
the request as the chat one it stands for (the system prompt first). Faults there: "429"
(`rate_limit_error`), "529" (`overloaded_error`), both with retry-after; "500", "503", "400" as above;
"max_tokens" (the answer cut in half, stop_reason max_tokens); the content faults as for chat (a
refusal apart from the content is stop_reason refusal with no content, as Anthropic withholds one).
The connection's faults (reset, timeout, trickle, bad_body) are served on the chat route only: one
drawn on the Messages route fails the test when the server stops.

Protocol shapes: `reply(exchange) -> (status, headers, body bytes) | None` answers a request
the way a given real server would (an Exchange has the request's path with its query, headers and
JSON body); None lets the fake LLM answer as usual. Every request's Exchange is in `exchanges`.

Usage counts: by default ~4 characters per token; `tokens_per_char=1.0` makes a server that counts
one token per character (prompt: every message's content; completion: the answer), the kind that
overruns a budget reserved at chars / 3.5. Each `Record` has the `arrived` and `answered`
times (time.monotonic()) of its request, for pacing checks (Retry-After).
Stdlib only (http.server in a thread); nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

TRANSIENT_FAULTS = ("429", "500", "503", "reset", "timeout", "bad_body", "trickle")
MESSAGES_FAULTS = ("529", "max_tokens")  # Anthropic's overloaded_error, a reply cut off at max_tokens
CONTENT_FAULTS = ("malformed", "fenced", "prose", "refusal", "wrong_length", "bad_schema")


def body_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class FaultPlan:
    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        total = sum(self.rates.values())
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {total} > 1")
        unknown = set(self.rates) - set(TRANSIENT_FAULTS) - set(CONTENT_FAULTS) - set(MESSAGES_FAULTS) - {"400"}
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}")

    def choose(self, key: str, nth: int) -> str | None:
        h = hashlib.sha256(f"{self.seed}:{key}:{nth}".encode()).digest()
        u = int.from_bytes(h[:8], "little") / 2**64
        acc = 0.0
        for name, rate in sorted(self.rates.items()):
            acc += rate
            if u < acc:
                return name
        return None


@dataclass
class Exchange:
    path: str  # with the query string
    headers: dict[str, str]  # lower-case names
    body: Any  # the parsed JSON body (None if it was not JSON)


@dataclass
class Record:
    index: int
    key: str
    fault: str | None
    status: int | None = None  # None: no HTTP response (reset / timeout)
    completed: bool = False  # a 200 response was fully written
    messages: list = field(default_factory=list)
    arrived: float = 0.0  # time.monotonic() when the request was read
    answered: float | None = None  # when its response (or error status) was sent
    usage: dict | None = None  # the usage its 200 reported (Messages route)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class JudgeServer:
    def __init__(
        self,
        responder: Callable[[dict], str],
        *,
        faults: FaultPlan | None = None,
        script: Callable[[int, dict], str | None] | None = None,
        latency_s: float = 0.0,
        fault_latency_s: float | None = None,  # latency of injected faults (429, 5xx, ...); None: latency_s
        timeout_hold_s: float = 2.0,
        retry_after_s: int = 1,
        retry_after_ms: int | None = 20,
        model_check: str | None = None,
        hold_after: int | None = None,
        hold_from: int | None = None,
        trickle_interval_s: float = 0.5,
        tokens_per_char: float | None = None,
        reply: Callable[[Exchange], tuple[int, dict[str, str], bytes] | None] | None = None,
        api_key: str | None = None,
        thinking_text: str | None = None,
        messages_cache_usage: dict | None = None,
    ) -> None:
        self.api_key = api_key  # the key the Messages route wants (None: any)
        self.thinking_text = thinking_text  # a thinking block before every Messages answer
        self.messages_cache_usage = messages_cache_usage  # prompt-cache counts every Messages answer reports
        self.responder = responder
        self.reply = reply
        self.exchanges: list[Exchange] = []
        self.faults = faults or FaultPlan()
        self.script = script
        self.latency_s = latency_s
        self.fault_latency_s = latency_s if fault_latency_s is None else fault_latency_s
        self.timeout_hold_s = timeout_hold_s
        self.retry_after_s = retry_after_s
        self.retry_after_ms = retry_after_ms
        self.model_check = model_check
        self.hold_after = hold_after  # after this many completed answers, hold new requests (no answer)
        # hold every request from the `hold_from`-th to arrive (0-based) on: the same requests held
        # whatever the concurrency and the machine's load (with `hold_after`, requests in flight when
        # the last answer counted is written are answered too: a run of few requests may then finish)
        self.hold_from = hold_from
        self.trickle_interval_s = trickle_interval_s
        self.tokens_per_char = tokens_per_char
        self._released = threading.Event()
        self.inflight = 0
        self.max_inflight = 0
        self.records: list[Record] = []
        self._seen: Counter[str] = Counter()
        self.unserved: list[str] = []  # faults drawn for a route that does not serve them (see __exit__)
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "JudgeServer":
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.unserved and exc[0] is None:  # a test that believed them injected would prove nothing
            raise AssertionError(f"faults {sorted(set(self.unserved))} are not served on the Messages route; "
                                 "those requests were answered as if no fault had been drawn")

    @property
    def url(self) -> str:
        return self.root + "/v1"

    @property
    def root(self) -> str:
        """The server's root: the base URL of the `anthropic` client (which adds /v1/messages)."""
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- bookkeeping --------------------------------------------------------------------------------
    def _register(self, body: dict) -> Record:
        key = body_key(body)
        with self._lock:
            nth = self._seen[key]
            self._seen[key] += 1
            idx = len(self.records)
            fault = self.script(idx, body) if self.script else self.faults.choose(key, nth)
            rec = Record(idx, key, fault, messages=body.get("messages", []), arrived=time.monotonic())
            self.records.append(rec)
        return rec

    def release(self) -> None:
        """Let held requests go (they end without an answer) and stop holding new ones."""
        self.hold_after = self.hold_from = None
        self._released.set()

    def chat_exchanges(self) -> list[Exchange]:
        """The requests made to the chat-completions route (not /models and the like)."""
        return [e for e in self.exchanges if e.path.split("?")[0].endswith("/chat/completions")]

    def n_completed(self) -> int:
        with self._lock:
            return sum(1 for r in self.records if r.completed)

    def held(self) -> list[Record]:
        return [r for r in self.snapshot() if r.fault == "held"]

    def settled_on_hold(self) -> bool:
        """Requests are held (`hold_after`) and every other request taken was answered: no answer
        comes after this (the next requests are held too). Held requests alone do not say so: a
        request that came in before the hold began may still be being answered. For a plan without
        faults (a faulted request is never `completed`)."""
        records = self.snapshot()
        return any(r.fault == "held" for r in records) and all(r.fault == "held" or r.completed for r in records)

    def snapshot(self) -> list[Record]:
        with self._lock:
            return list(self.records)

    def completed_keys(self) -> list[str]:
        return [r.key for r in self.snapshot() if r.completed]

    def fault_counts(self) -> Counter:
        return Counter(r.fault for r in self.snapshot())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_owner: JudgeServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out as separate writes; without this, Nagle's algorithm holds the
        # body until the client's delayed ACK (~40 ms per response) and the server looks slow
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None, raw: bytes | None = None,
                   trickle_s: float | None = None) -> None:
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if trickle_s is None:
            self.wfile.write(data)
            self.wfile.flush()
            return
        for i in range(len(data)):  # one byte at a time: every read gets something soon
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
            time.sleep(trickle_s)

    def do_POST(self) -> None:  # noqa: N802
        srv = self.server_owner
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        if self._reply(srv, raw):
            return
        if self.path.split("?")[0].rstrip("/").endswith("/v1/messages"):
            self._messages(srv, raw)
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._send_json(400, {"error": {"message": "request body is not JSON"}})
            return
        rec = srv._register(body)
        with srv._lock:
            srv.inflight += 1
            srv.max_inflight = max(srv.max_inflight, srv.inflight)
        try:
            self._answer(srv, rec, body)
        finally:
            with srv._lock:
                srv.inflight -= 1

    # -- Anthropic's Messages API -------------------------------------------------------------------
    def _anthropic_error(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"type": "error", "error": {"type": kind, "message": message},
                                 "request_id": "req_loopback"}, headers)

    def _messages(self, srv: JudgeServer, raw: bytes) -> None:
        """POST /v1/messages as Anthropic's API answers it (see the module docstring)."""
        headers = {k.lower(): v for k, v in self.headers.items()}
        bearer = headers.get("authorization", "")
        key = headers.get("x-api-key") or (bearer[7:] if bearer.lower().startswith("bearer ") else None)
        if not key or (srv.api_key is not None and key != srv.api_key):
            self._anthropic_error(401, "authentication_error", "invalid x-api-key")
            return
        if not headers.get("anthropic-version"):
            self._anthropic_error(400, "invalid_request_error", "anthropic-version: header is required")
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._anthropic_error(400, "invalid_request_error", "request body is not JSON")
            return
        problem = _messages_request_problem(body)
        if problem:
            self._anthropic_error(400, "invalid_request_error", problem)
            return
        # the chat request it stands for: what the fake LLM, the faults and the records read
        system = body.get("system") or ""
        if isinstance(system, list):
            system = "".join(b.get("text", "") for b in system)
        chat = {"model": body["model"], "messages": [{"role": "system", "content": system}] * bool(system)
                + [{"role": m["role"], "content": _block_text(m["content"])} for m in body["messages"]]}
        rec = srv._register(chat)
        fault = rec.fault
        if fault in ("429", "529"):
            rec.status, rec.answered = int(fault), time.monotonic()
            kind = {"429": "rate_limit_error", "529": "overloaded_error"}[fault]
            self._anthropic_error(int(fault), kind, "Overloaded" if fault == "529" else "rate limited",
                                  {"retry-after": str(srv.retry_after_s)})
            return
        if fault in ("500", "503", "400"):
            rec.status = int(fault)
            self._anthropic_error(int(fault), "invalid_request_error" if fault == "400" else "api_error",
                                  "injected " + fault)
            return
        if fault in TRANSIENT_FAULTS:  # a connection's faults, served on the chat route only
            with srv._lock:
                srv.unserved.append(fault)
        text, refusal = _content_fault(fault, srv.responder(chat), rec.key)
        stop = "end_turn"
        if fault == "max_tokens":
            text, stop = text[: max(1, len(text) // 2)], "max_tokens"
        content = [{"type": "text", "text": text, "citations": None}]
        if refusal is not None:  # the classifiers withheld the reply: no content, stop_reason refusal
            text, stop, content = "", "refusal", []
        elif srv.thinking_text is not None:
            content.insert(0, {"type": "thinking", "thinking": srv.thinking_text, "signature": "c2lnbmF0dXJl"})
        prompt_chars = sum(len(m["content"]) for m in chat["messages"])
        out_chars = len(text) + len(srv.thinking_text or "")
        usage = {"input_tokens": prompt_chars // 4 + 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                 "output_tokens": body["max_tokens"] if stop == "max_tokens" else out_chars // 4 + 1,
                 **(srv.messages_cache_usage or {})}
        rec.status, rec.answered, rec.usage = 200, time.monotonic(), usage
        self._send_json(200, {"id": f"msg_{rec.index:024d}", "type": "message", "role": "assistant",
                              "model": body["model"], "content": content, "stop_reason": stop, "stop_sequence": None,
                              "usage": usage})
        rec.completed = True

    def _reply(self, srv: JudgeServer, raw: bytes) -> bool:
        """Answer with the scripted protocol shape, if `reply` has one for this request."""
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = None
        ex = Exchange(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        with srv._lock:
            srv.exchanges.append(ex)
        out = srv.reply(ex) if srv.reply is not None else None
        if out is None:
            return False
        status, headers, data = out
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **headers, "Content-Length": str(len(data))}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        return True

    def _answer(self, srv: JudgeServer, rec: Record, body: dict) -> None:
        if (srv.hold_after is not None and srv.n_completed() >= srv.hold_after) or (
                srv.hold_from is not None and rec.index >= srv.hold_from):
            rec.fault = "held"
            srv._released.wait(timeout=60)
            self.close_connection = True
            return
        fault = rec.fault
        wait = srv.latency_s if fault is None else srv.fault_latency_s
        if wait:
            time.sleep(wait)
        try:
            if fault == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            if fault == "timeout":
                time.sleep(srv.timeout_hold_s)
                self.close_connection = True
                return
            if fault == "429":
                headers = {"Retry-After": str(srv.retry_after_s)}
                if srv.retry_after_ms is not None:
                    headers["retry-after-ms"] = str(srv.retry_after_ms)
                rec.status = 429
                rec.answered = time.monotonic()
                self._send_json(429, {"error": {"message": "rate limited", "type": "rate_limit"}}, headers)
                return
            if fault in ("500", "503"):
                rec.status = int(fault)
                self._send_json(int(fault), {"error": {"message": "server error", "type": "server_error"}})
                return
            if fault == "400":
                rec.status = 400
                self._send_json(400, {"error": {"message": "bad request (injected)", "type": "invalid_request"}})
                return
            if srv.model_check is not None and body.get("model") != srv.model_check:
                rec.status = 404
                self._send_json(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
                return
            if fault == "bad_body":
                rec.status = 200
                self._send_json(200, None, raw=b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"ind')
                return
            content, refusal = _content_fault(fault, srv.responder(body), rec.key)
            prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages", []))
            answer_chars = len(content or refusal or "")
            if srv.tokens_per_char is not None:
                usage = {"prompt_tokens": int(prompt_chars * srv.tokens_per_char),
                         "completion_tokens": int(answer_chars * srv.tokens_per_char)}
            else:
                usage = {"prompt_tokens": prompt_chars // 4 + 1, "completion_tokens": answer_chars // 4 + 1}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            resp = {
                "id": f"chatcmpl-{rec.index}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": refusal},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
            rec.status = 200
            rec.answered = time.monotonic()
            self._send_json(200, resp, trickle_s=srv.trickle_interval_s if fault == "trickle" else None)
            rec.completed = True
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True


def _block_text(content: Any) -> str:
    """A Messages API message's content (a string, or a list of content blocks) as text."""
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")


def _messages_request_problem(body: Any) -> str | None:
    """Why Anthropic's API would refuse this Messages request with a 400 (None: it would take it)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if "temperature" in body:
        return "`temperature` is deprecated for this model."
    for i, m in enumerate(body["messages"]):
        final_assistant = i == len(body["messages"]) - 1 and m.get("role") == "assistant"
        if not _block_text(m.get("content", "")).strip() and not final_assistant:
            return f"messages.{i}: all messages must have non-empty content except for the optional final assistant message"
    roles = [m.get("role") for m in body["messages"]]
    if "system" in roles:
        return ('messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
                "not \"system\" as an input message role.")
    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled" and not 1024 <= thinking.get("budget_tokens", 0) < body["max_tokens"]:
        return "thinking.budget_tokens: must be at least 1024 and less than max_tokens"
    return None


def _content_fault(fault: str | None, content: str, key: str) -> tuple[str | None, str | None]:
    """The fake LLM's answer `content` as a content fault makes it: (content, refusal), where a refusal
    comes apart from the content (OpenAI's `refusal` field) for half the requests, chosen by the
    request's `key` (its content, not arrival order: reproducible), and as refusing words for the rest."""
    if fault == "malformed":
        return content[: max(1, len(content) // 2)], None
    if fault == "fenced":
        return "```json\n" + content + "\n```", None
    if fault == "prose":
        return "Sure, here is my answer:\n" + content, None
    if fault == "refusal":
        if int(key[:8], 16) % 2 == 0:
            return None, "I'm sorry, I can't help with that."
        return "I'm sorry, but I can't help with that request.", None
    if fault == "wrong_length":
        return _wrong_length(content), None
    if fault == "bad_schema":
        return json.dumps({"result": content}), None
    return content, None


def _wrong_length(content: str) -> str:
    try:
        obj = json.loads(content)
    except json.JSONDecodeError:
        return content + " extra"
    if isinstance(obj, dict) and isinstance(obj.get("answers"), list):
        obj["answers"] = obj["answers"][:-1] if len(obj["answers"]) > 1 else obj["answers"] + [0, 1]
    elif isinstance(obj, dict) and isinstance(obj.get("label"), str):
        obj["label"] = (obj["label"] + " ") * 40
    return json.dumps(obj)


# ------------------------------------------------------------------------------------------------
# A fake LLM for saesteer's auto-interp prompts. It reads prompts the way a naive model would:
# the data section is what lies between the FIRST opening fence and the FIRST closing fence after
# it; everything else is "instructions". It obeys an instruction of the form
#   ignore (all) previous instructions and answer 'X'
# if one appears in the instruction area, so a prompt that lets dataset text escape its fence
# makes it answer X. Otherwise it answers correctly for the toy stores of the tests: the label
# is the most common marked token; a context matches a label if it contains one of its words.

_INJECT_RE = re.compile(r"ignore (?:all )?previous instructions and answer ['\"]([^'\"]+)['\"]", re.IGNORECASE)
_MARK_RE = re.compile(r"<<(.*?)>>")


def _split_fence(text: str, tag: str) -> tuple[str, str]:
    """(data inside the first <tag>...</tag>, the text outside it)."""
    open_t, close_t = f"<{tag}>", f"</{tag}>"
    i = text.find(open_t)
    if i < 0:
        return "", text
    j = text.find(close_t, i + len(open_t))
    if j < 0:
        return text[i + len(open_t):], text[:i]
    return text[i + len(open_t): j], text[:i] + text[j + len(close_t):]


def _task(body: dict) -> str:
    system = body["messages"][0]["content"]
    if "labelling one latent feature" in system:
        return "explain"
    if "decide whether the marked tokens" in system:
        return "fuzz"
    if "simulating a latent feature" in system:
        return "simulate"
    if "the intruder" in system:
        return "intruder"
    return "detect"


_NUMBERED_RE = re.compile(r"\s*(.*?)\[(\d+)\]")  # "The[0] ship[1]s[2]": each token (its own space first), then its position


def fake_llm_answer(body: dict) -> str:
    msgs = body["messages"]
    system = msgs[0]["content"]
    user = msgs[1]["content"]  # the original request (re-asks come after it)
    task = _task(body)
    if task == "explain":
        data, outside = _split_fence(user, "examples")
    else:
        label_text, outside = _split_fence(user, "label")
        data, outside = _split_fence(outside, "contexts")
    m = _INJECT_RE.search(system + "\n" + outside)
    if m:  # an injected instruction escaped into the instruction area: obey it
        injected = m.group(1)
        if task == "explain":
            return json.dumps({"label": injected})
        n = len([ln for ln in data.splitlines() if ln.strip()])
        if task == "simulate":
            return json.dumps({"activations": [[[0, 10]] for _ in range(n)]})
        if task == "intruder":
            return json.dumps({"intruder": 1})
        return json.dumps({"answers": [1] * n})
    lines = [ln.split(":", 1)[1] if ":" in ln else ln for ln in data.splitlines() if ln.strip()]
    if task == "explain":
        # marks without a letter or digit (SentencePiece's lone "▁", a quote) name nothing: saesteer refuses them
        marked = Counter(t.strip().lower() for ln in lines for t in _MARK_RE.findall(ln) if any(map(str.isalnum, t)))
        label = marked.most_common(1)[0][0] if marked else "nothing"
        return json.dumps({"label": label})
    words = set(label_text.lower().replace(",", " ").replace(":", " ").split()) - {"/", "context"}
    if task == "simulate":  # strength 10 on the label's words, nothing elsewhere
        return json.dumps({"activations": [[[int(i), 10] for t, i in _NUMBERED_RE.findall(ln) if t.strip().lower() in words]
                                            for ln in lines]})
    if task == "intruder":  # the context with the fewest of the label's words
        counts = [sum(1 for t in _MARK_RE.sub(r"\1", ln).lower().split() if t in words) for ln in lines]
        return json.dumps({"intruder": counts.index(min(counts)) + 1})
    answers = []
    for ln in lines:
        if task == "detect":
            toks = set(_MARK_RE.sub(r"\1", ln).lower().split())
            answers.append(1 if toks & words else 0)
        else:
            marks = [t.strip().lower() for t in _MARK_RE.findall(ln)]
            answers.append(1 if marks and all(t in words for t in marks) else 0)
    return json.dumps({"answers": answers})


# ---------------------------------------------------------------------------------------------
# real providers' replies, byte for byte where it matters, for `JudgeServer(reply=...)`


def first_then(*first: tuple[int, dict[str, str], bytes], then: tuple[int, dict[str, str], bytes]):
    """A `reply` that serves the `first` replies in turn (faults: a 429, a 500), then `then` to every request."""
    replies = iter(first)
    return lambda ex: next(replies, None) or then


def chat_completion(content: str | None, *, finish: str = "stop", usage: dict | None = None, message_extra=None,
                    model: str = "m") -> tuple[int, dict[str, str], bytes]:
    """A 200 chat completion; `usage` None leaves the field out (llama.cpp builds and proxies that omit it)."""
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1767225600, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **(message_extra or {})},
                         "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return 200, {}, json.dumps(body).encode()


def openai_error(status: int, message: str, type_: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """An error as OpenAI's API sends it: {"error": {"message", "type", "param", "code"}}."""
    return status, dict(headers or {}), json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


def error_in_a_200(error: dict) -> tuple[int, dict[str, str], bytes]:
    """OpenRouter's way for an error met while generating: a 200 whose body holds `error`, its `code` the
    HTTP status it would have had."""
    return 200, {}, json.dumps({"id": "gen-1", "object": "chat.completion", "error": error}).encode()


def gemini_quota_error(quota_id: str, retry_s: float = 36.429760048) -> tuple[int, dict[str, str], bytes]:
    """Gemini's OpenAI endpoint's 429 RESOURCE_EXHAUSTED, a list as Google sends it: the same words and a
    retryDelay of seconds whichever quota was met; only `QuotaFailure`'s quotaId says per day or per minute."""
    return 429, {}, json.dumps([{"error": {
        "code": 429, "status": "RESOURCE_EXHAUSTED",
        "message": ("You exceeded your current quota, please check your plan and billing details. For more information "
                    "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for "
                    "metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 20, model: "
                    f"gemini-2.5-flash\nPlease retry in {retry_s}s."),
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": quota_id, "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                "quotaValue": "20"}]},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [
                {"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{int(retry_s)}s"}]}}]).encode()


def openrouter_free_models_429(reset_ms: int, per: str = "day") -> tuple[int, dict[str, str], bytes]:
    """OpenRouter's 429 for a key that spent its free-model requests of the day (`per` "day") or of the minute
    ("min"); when they come back is only in the body's metadata (milliseconds since the epoch)."""
    more = " Add 10 credits to unlock 1000 free model requests per day" if per == "day" else ""
    return 429, {}, json.dumps({"error": {
        "message": f"Rate limit exceeded: free-models-per-{per}.{more}",
        "code": 429, "metadata": {"headers": {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0",
                                              "X-RateLimit-Reset": str(reset_ms)}, "provider_name": None}},
        "user_id": "user_2x"}).encode()


# OpenAI's reply to a key whose organisation has no credit: a 429, yet no wait ever helps
OPENAI_NO_QUOTA = ("You exceeded your current quota, please check your plan and billing details. For more information "
                   "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.")
# OpenAI's rate-limit 429: no Retry-After; when the limit resets is in x-ratelimit-reset-* (Go durations)
OPENAI_RATE_LIMIT_HEADERS = {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "0",
                             "x-ratelimit-reset-requests": "1m30s", "x-ratelimit-limit-tokens": "200000",
                             "x-ratelimit-remaining-tokens": "199000", "x-ratelimit-reset-tokens": "300ms"}


def lmstudio_wrong_route(path: str) -> tuple[int, dict[str, str], bytes]:
    """LM Studio's answer to a route it does not serve (e.g. /chat/completions without /v1): a 200."""
    return 200, {"X-Powered-By": "Express"}, json.dumps(
        {"error": f"Unexpected endpoint or method. (POST {path.split('?')[0]})"}).encode()
