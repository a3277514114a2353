"""The steering API and the web app under real clients behaving as real clients do: the `openai`
client (sync and async, its retries and exception classes), httpx, raw sockets (a body that
trickles in, a deeply nested body), HEAD, CORS preflights, and requests that go away mid-stream.

The app runs in uvicorn on a loopback port (helpers.api_server) over the small chat store of
test_api_openai.py's kind. Nothing here waits on a clock: a paused model (its lock held) makes a
request stay in; waits are bounded only so that a hang fails instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

from helpers.api_server import async_openai_client, build_chat_store, openai_client, serve_chat  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread")]

BODY = {"model": "chat", "prompt": "the sea and the whale", "max_tokens": 48, "temperature": 0}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return build_chat_store(tmp_path_factory.mktemp("apiload"))


@pytest.fixture(scope="module")
def server(ws):
    srv, app = serve_chat(ws)
    yield srv, app
    srv.stop()


def _until(cond, what: str, bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while not cond():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


# -- bodies a parser chokes on, slow bodies -----------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_deeply_nested_json_body_is_a_400_in_openais_shape(server, path):
    """A body well under the size limit can nest past Python's recursion limit: the JSON parser's
    RecursionError was a 500 ('internal error') with a traceback in the server log."""
    srv, _ = server
    deep = "{\"a\":" * 3000 + "1" + "}" * 3000
    body = '{"model": "chat", "prompt": "the", "metadata": ' + deep + "}"
    r = httpx.post(f"{srv.url}{path}", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "nested too deeply" in err["message"]
    assert r.headers["x-request-id"].startswith("req_")


def test_a_body_that_trickles_in_is_refused_with_408_once_its_time_is_up(ws):
    """A client that sends its headers and then its body a byte now and then (slowloris) held its
    connection and a task for as long as it liked; the guard now waits `body_timeout_s` for the
    whole body, then answers 408 and closes."""
    srv, _ = serve_chat(ws, guard={"body_timeout_s": 0.5})
    try:
        body = json.dumps(dict(BODY, max_tokens=1)).encode()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % (srv.port, len(body)) + body[:5])
            got = b""
            while b"\r\n\r\n" not in got:  # no more body is sent: the answer must come from the server's clock
                chunk = s.recv(4096)
                assert chunk, f"closed without an answer: {got!r}"
                got += chunk
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        # a whole body in time is served as ever
        assert httpx.post(f"{srv.url}/v1/completions", json=dict(BODY, max_tokens=1), timeout=30).status_code == 200
    finally:
        srv.stop()


# -- methods, CORS, request ids ---------------------------------------------------------------------

def test_head_is_answered_as_get_without_a_body_and_cors_stays_closed(server):
    """HEAD on a page or a GET endpoint (`curl -I`, uptime checks) was 405: FastAPI's routes answer
    only the methods they name. OPTIONS stays unanswered (405) and a preflight from another origin
    is refused with no Access-Control-Allow-* header: CORS is closed unless configured."""
    srv, _ = server
    with httpx.Client(base_url=srv.url, timeout=30) as h:
        for path in ("/", "/s/chat", "/api/stores", "/api/status", "/v1/models"):
            got, head = h.get(path), h.head(path)  # "/" of a one-store server: a redirect to its page
            assert head.status_code == got.status_code == (303 if path == "/" else 200), (path, head.status_code)
            assert head.content == b"" and head.headers.get("content-type") == got.headers.get("content-type"), path
            assert head.headers.get("content-length") == got.headers.get("content-length"), path
        assert h.head("/v1/nothing").status_code == 404
        assert h.options("/v1/models").status_code == 405
        pre = h.options("/v1/completions", headers={"Origin": "https://elsewhere.example",
                                                    "Access-Control-Request-Method": "POST"})
        posted = h.post("/v1/completions", json=dict(BODY, max_tokens=1), headers={"Origin": "https://elsewhere.example"})
        for r in (pre, posted):
            assert r.status_code == 403 and not any(k.startswith("access-control-") for k in r.headers), r.headers
        # the connection is still good after the bodiless answers (no body bytes left in the stream)
        assert h.get("/v1/models").json()["data"][0]["id"] == "chat"


def test_every_v1_answer_carries_an_x_request_id_the_openai_client_shows(server):
    """OpenAI's answers carry `x-request-id`; the client puts it on its exceptions (`request_id`) and
    responses (`_request_id`), which is what a user pastes into a bug report. This server sent none."""
    srv, _ = server
    client = openai_client(srv)
    raw = client.completions.with_raw_response.create(**dict(BODY, max_tokens=1))
    assert raw.headers["x-request-id"].startswith("req_") and raw.parse()._request_id == raw.headers["x-request-id"]
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="the", max_tokens=1)
    assert e.value.request_id.startswith("req_") and e.value.request_id != raw.headers["x-request-id"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="chat", prompt="the", max_tokens=1, extra_body={"nonsense": 1})
    assert e.value.request_id.startswith("req_") and e.value.body["type"] == "invalid_request_error"
    # the web app's own JSON API and pages are not OpenAI's: no id there
    assert "x-request-id" not in httpx.get(f"{srv.url}/api/stores").headers


# -- a full queue and the client's own retries --------------------------------------------------------

def test_a_full_queue_is_a_503_the_openai_client_retries_until_it_is_served(ws):
    """max_queued=1 and the model paused: a second request gets 503 + Retry-After, which the `openai`
    client maps to InternalServerError (status 503) and, with retries on, waits out and retries; once
    the first request is done the retry is served."""
    from saesteer.api.config import BatchConfig

    srv, app = serve_chat(ws, batch=BatchConfig(max_queued=1, max_batch_rows=4))
    sched = app.state.openai.schedulers[0]
    model_lock = app.state.web.queues[0].lock
    refused = threading.Event()

    def on_response(response: httpx.Response) -> None:
        if response.status_code == 503:
            refused.set()

    try:
        first: list = []
        with model_lock:
            t = threading.Thread(target=lambda: first.append(openai_client(srv).completions.create(**BODY)))
            t.start()
            _until(lambda: sched.in_flight == 1, "the first request is in")
            with pytest.raises(openai.InternalServerError) as e:
                openai_client(srv).completions.create(**BODY)
            assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "1"
            assert "try again" in e.value.message and e.value.body["type"] == "server_error"

            retrying = openai_client(srv, max_retries=5, http_client=httpx.Client(event_hooks={"response": [on_response]}))
            second: list = []
            t2 = threading.Thread(target=lambda: second.append(
                retrying.completions.with_raw_response.create(**dict(BODY, max_tokens=3))))
            t2.start()
            assert refused.wait(30), "the retrying client was never refused"
        t.join(60)
        t2.join(60)
        assert first[0].usage.completion_tokens > 0
        assert second[0].retries_taken >= 1 and second[0].parse().choices[0].finish_reason in ("length", "stop")
    finally:
        srv.stop()


# -- clients that go away -------------------------------------------------------------------------------

def test_an_async_client_that_closes_its_stream_frees_the_slot_while_the_model_is_paused(ws):
    """The async client reads one chunk, the model pauses, the client closes the stream: the server
    cancels the row then (not after max_tokens more steps), so the one slot (max_queued=1) frees up
    before the model resumes, and the next request is served."""
    from saesteer.api.config import BatchConfig

    srv, app = serve_chat(ws, batch=BatchConfig(max_queued=1, max_batch_rows=4))
    sched = app.state.openai.schedulers[0]
    model_lock = app.state.web.queues[0].lock
    # The pause must come before the row's next step, not merely after the client read a chunk: on a
    # busy machine the worker ran all 48 steps before the client took the lock, and the request ended
    # 'length' instead of being cancelled. So the worker's step after the first token waits until the
    # test holds the model's lock, then waits on that lock as it would behind a web-app job.
    real_step, first_token_out, lock_held = sched.engine.step, threading.Event(), threading.Event()

    def step_after_the_first_token_waits_for_the_lock():
        if first_token_out.is_set():
            assert lock_held.wait(60), "the test never took the model's lock"
        events = real_step()
        if any(ev.text for ev in events):  # a chunk the client will read
            first_token_out.set()
        return events

    sched.engine.step = step_after_the_first_token_waits_for_the_lock

    async def read_one_then_close():
        async with async_openai_client(srv) as client:
            stream = await client.completions.create(stream=True, **dict(BODY, extra_body={"ignore_eos": True}))
            await stream.__anext__()
            model_lock.acquire()  # the model pauses mid-generation
            lock_held.set()
            await stream.close()

    try:
        asyncio.run(read_one_then_close())
        try:
            _until(lambda: sched.in_flight == 0, "the closed stream's request leaves the server")
            assert sched.cancelled_count == 1
        finally:
            model_lock.release()
        _until(lambda: not sched.engine.busy, "the engine drops the cancelled row")
        assert openai_client(srv).completions.create(**dict(BODY, max_tokens=2)).usage.completion_tokens == 2
    finally:
        srv.stop()


# -- many clients at once -----------------------------------------------------------------------------

def _concurrent_jobs() -> list[tuple[str, dict]]:
    """32 requests that differ in every way batching could mix up: kind, prompt (accents, CJK, code),
    edits, n with a seed, greedy or sampled, stop strings, logprobs, streamed or not."""
    prompts = ["the sea and the whale", "a tree", "bread and the ship", "café naïve 東京 the sea", "def f(x): return x"]
    edits = [[], ["2:clamp=9"], ["6:add=4@generated"], ["12:scale=4"],
             [{"latent": 8, "op": "add", "value": 3, "unit": "raw", "positions": "prompt"}]]
    jobs = []
    for i in range(32):
        kind = "chat" if i % 3 == 0 else "completion"
        body: dict = {"model": "chat", "max_tokens": 6 + i % 7, "extra_body": {"ignore_eos": True,
                                                                               "steering": {"edits": edits[i % 5]}}}
        if i % 4 == 1:
            body.update(n=2 + i % 2, temperature=0.9, seed=100 + i)
        elif i % 4 == 3:
            body.update(temperature=1.0, seed=i)
        else:
            body.update(temperature=0)
        if i % 5 == 2:
            body["stop"] = ["on", "plate", "fish", "the"]
        if kind == "chat":
            body["messages"] = [{"role": "user", "content": prompts[i % 5]}]
            if i % 2:
                body.update(logprobs=True, top_logprobs=2)
        else:
            body["prompt"] = prompts[i % 5]
            if i % 2:
                body["logprobs"] = 2
        body["stream"] = i % 6 == 5
        jobs.append((kind, body))
    return jobs


def _outcome(client, kind: str, body: dict) -> list[tuple]:
    """Per choice: (text, finish_reason, generated token ids, logprobs) of a request, streamed or not."""
    create = client.chat.completions.create if kind == "chat" else client.completions.create
    resp = create(**body)
    chunks = resp if body["stream"] else [resp]
    got: dict[int, dict] = {}
    for chunk in chunks:
        for c in chunk.choices:
            d = got.setdefault(c.index, {"text": "", "lp": []})
            if kind == "chat":
                d["text"] += (c.delta.content or "") if body["stream"] else c.message.content
                d["lp"] += [e.logprob for e in c.logprobs.content] if c.logprobs else []
            else:
                d["text"] += c.text
                d["lp"] += c.logprobs.token_logprobs if c.logprobs else []
            if c.finish_reason is not None:
                d["finish"], d["ids"] = c.finish_reason, c.model_extra["steering"]["token_ids"]
    return [(d["text"], d["finish"], d["ids"], d["lp"]) for _, d in sorted(got.items())]


def test_32_concurrent_clients_each_get_what_their_request_gets_alone(server):
    """32 clients at once, each with its own edits, n and seed, stop strings and logprobs: every
    response is the one its request gets alone (tokens and text exactly; log-probabilities up to
    the rounding of a batched matmul), and they did share forward passes."""
    from concurrent.futures import ThreadPoolExecutor

    srv, app = server
    engine = app.state.openai.schedulers[0].engine
    client = openai_client(srv)
    jobs = _concurrent_jobs()
    alone = [_outcome(client, kind, body) for kind, body in jobs]
    engine.max_rows_seen = 0
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: _outcome(openai_client(srv), *job), jobs))
    assert engine.max_rows_seen > 4
    for (kind, body), a, t in zip(jobs, alone, together):
        assert [x[:3] for x in t] == [x[:3] for x in a], (kind, body)
        for (*_, lp_a), (*_, lp_t) in zip(a, t):
            assert lp_t == pytest.approx(lp_a, abs=1e-3), (kind, body)
    assert any(len(a) > 1 for a in alone) and any(x[1] == "stop" for a in alone for x in a)


# -- connections that never send a request --------------------------------------------------------------

def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes this connection (it sends nothing first); a 30 s bound on waiting."""
    sock.settimeout(30)
    try:
        return sock.recv(4096) == b""
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True


def _read_response(f) -> tuple[int, bytes]:
    """(status, body) of the next HTTP/1.1 response on `f` (a socket's buffered reader; a
    Content-Length body, as the API answers)."""
    status = int(f.readline().split()[1])
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        length = int(value) if name.strip().lower() == b"content-length" else length
    return status, f.read(length)


def test_connections_whose_headers_never_come_are_closed_but_a_long_request_is_not(ws):
    """uvicorn waits forever for a request's headers: a client that opens connections and sends
    nothing, or its headers a byte now and then (slowloris), held a socket each. `saesteer serve`'s
    protocol (listen.guarded_http_protocol) closes them once the headers are overdue; a request whose
    headers came runs as long as it needs (here: held past that time by the paused model), and its
    connection serves the next request (sent pipelined, so that no client's speed decides whether it
    came in time), then is closed once idle past the deadline again."""
    from saesteer.web.listen import guarded_http_protocol

    srv, app = serve_chat(ws, uvicorn_kw={"http": guarded_http_protocol(0.5)})
    model_lock = app.state.web.queues[0].lock
    try:
        with socket.create_connection(("127.0.0.1", srv.port)) as idle, \
                socket.create_connection(("127.0.0.1", srv.port)) as trickle:
            trickle.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % srv.port)  # never finished
            assert _closed_by_server(idle) and _closed_by_server(trickle)
        body = json.dumps(dict(BODY, max_tokens=2)).encode()
        host = b"Host: 127.0.0.1:%d\r\n" % srv.port
        with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as kept, kept.makefile("rb") as f:
            with model_lock:
                kept.sendall(b"POST /v1/completions HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body + b"GET /v1/models HTTP/1.1\r\n" + host + b"\r\n")
                _until(lambda: app.state.openai.schedulers[0].in_flight == 1, "the request is in")
                with socket.create_connection(("127.0.0.1", srv.port)) as probe:  # the deadline has passed once this closes
                    assert _closed_by_server(probe)
            status, answer = _read_response(f)
            assert status == 200 and json.loads(answer)["usage"]["completion_tokens"] == 2
            status, answer = _read_response(f)  # the same connection, answered again
            assert status == 200 and json.loads(answer)["data"][0]["id"] == "chat"
            assert _closed_by_server(kept)  # idle again: its next request's headers are due in turn
    finally:
        srv.stop()
