"""A sixth round of user paths: the OpenAI-compatible API driven the way API clients drive it today.

One server per module, over a tiny model whose tokenizer is a real byte-level BPE of the Qwen2
family (its split pattern, its special tokens, Qwen2-Instruct's chat template; trained here by
helpers.real_models.build_family_tokenizer), so streamed text is cut where a real tokenizer cuts it.
What only these paths show:

- one app served twice (two TestClient lifespans, as a notebook or a test suite restarts a server):
  the second serve answered every generation with 503 'the server is shutting down' and every web
  model job with an error, because shutdown closed the API's scheduler and the model queue for good;
  a request still waiting when the server stops now ends with an error instead of hanging, and a web
  model job cancelled at shutdown gives its place in the queue back;
- a client that gives up on a non-streamed request (its timeout, Ctrl-C) left its generation running
  to the end (the openai client then retries, so one slow request became three); it is now cancelled,
  by one task watching the connection beside the handler (which reads the events itself);
- `max_completion_tokens` (what newer clients send instead of `max_tokens`): its refusals named
  `max_tokens`, a field the client never sent, and a request carrying both with different values
  was served with one of them silently; now refused naming both;
- refusals from the security layer (body over the bound: 413) and unknown /v1 paths (the client's
  `embeddings`, `responses`) came as `{"detail": ...}` or a bare 'Not Found', so the openai client
  showed no message (`e.body["message"]`); now OpenAI's error shape, saying what the server serves;
  a client whose base_url lacks /v1 is told so;
- an assistant prefill (a last message from the assistant with vLLM's `continue_final_message`, as
  the openai client sends it in `extra_body`) was refused as an unknown field; it is now continued
  from the prompt transformers renders with the message left open, streamed or not, `role:assistant`
  edits covering the prefill and the reply, and refused (OpenAI's error shape) where it cannot apply;
- what works and stays working: a plain httpx SSE reader sees `data: {json}` events and a final
  `data: [DONE]`, AsyncOpenAI with concurrent streams (usage chunk last, each stream the text of the
  same request unstreamed), `with_raw_response`, `/v1/models/{id}`, `logit_bias` and the penalties
  applied (not ignored), fields that would change the meaning (`tools`, `response_format`,
  `reasoning_effort`, ...) refused by name, and a stream the client closes is cancelled while the
  server goes on serving.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

from helpers.chat_templates import QWEN2_TEMPLATE  # noqa: E402
from helpers.api_server import async_openai_client, openai_client, serve_entries  # noqa: E402
from helpers.web_app import free_port, make_entry  # noqa: E402

MAX_NEW = 48
MSGS = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def parse(self, args):"}]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from helpers.real_models import build_family_tokenizer, corpus_documents
    from helpers.web_store import build_web_store

    tok = build_family_tokenizer("qwen2", corpus_documents(), vocab_size=512)
    tok.chat_template = QWEN2_TEMPLATE
    return build_web_store(tmp_path_factory.mktemp("user6"), tokenizer=tok, name="chat", n_layers=2)


def _app(ws, **kw):
    from saesteer.web import Limits, ServeConfig, create_app

    port = kw.pop("port", None) or free_port()
    limits = Limits(max_new_tokens=MAX_NEW)
    return create_app([make_entry(ws, "chat", limits=limits)], config=ServeConfig(port=port), limits=limits, **kw), port


@pytest.fixture(scope="module")
def server(ws):
    from saesteer.web import Limits

    limits = Limits(max_new_tokens=MAX_NEW)
    srv, app = serve_entries([make_entry(ws, "chat", limits=limits)], limits=limits)
    yield srv, app
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server[0], timeout=60)


def _wait(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- serving one app twice ----------------------------------------------------------------------


def test_one_app_serves_twice(ws):
    """Two lifespans of one app: generation (/v1) and a web model job (/api fire) work in both."""
    from helpers.web_app import client as test_client

    app, port = _app(ws)
    body = {"model": "chat", "messages": MSGS, "max_tokens": 3, "seed": 1}
    for _ in range(2):
        with test_client(app, base_url=f"http://127.0.0.1:{port}") as c:
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] >= 1
            fire = c.post("/api/stores/chat/fire", json={"text": "def parse(self):"})
            assert fire.status_code == 200, fire.text


def test_a_request_waiting_when_the_server_stops_ends_with_an_error(ws):
    """The scheduler closes while a request waits behind a running one: it ends with an error event
    (before, it stayed in the inbox and its reader waited for ever); the scheduler then opens again."""
    from saesteer.api.scheduler import Scheduler
    from steering.engine import BatchEngine, Row
    from steering.sampling import SamplingParams

    lock = threading.RLock()
    sched = Scheduler(BatchEngine(ws.model, {"chat": ws.sae}, lock=lock), name="chat")
    ids = ws.model.to_tokens("def parse")[0].tolist()

    def row(n):
        return Row(ids, SamplingParams(max_new_tokens=n, seed=0))

    async def events(job):
        return [ev.finish_reason async for ev in job]

    async def scenario():
        loop = asyncio.get_running_loop()
        sched.start()
        with lock:  # hold the model: the first request is in a step, the second waits in the inbox
            first = sched.submit([row(MAX_NEW)], loop, deliver_tokens=False)
            assert await asyncio.to_thread(_wait, lambda: not sched._inbox)
            second = sched.submit([row(2)], loop, deliver_tokens=False)
            closing = asyncio.ensure_future(asyncio.to_thread(sched.close))
            assert await asyncio.to_thread(_wait, lambda: sched._closed)  # a fixed sleep: flaky on a busy machine
        await closing
        ends = list(await asyncio.wait_for(asyncio.gather(events(first), events(second)), 10))
        sched.start()  # served again
        ends.append(await asyncio.wait_for(events(sched.submit([row(2)], loop, deliver_tokens=False)), 30))
        sched.close()
        return ends

    first, second, again = asyncio.run(scenario())
    assert first == ["error"] and second == ["error"] and again == ["length"]


def test_a_restart_while_the_closed_worker_is_still_in_a_step_fails_clearly_instead_of_hanging(ws):
    """Closed while a step runs (here: the model held), then started again: `start` waited for that
    step without bound, so a server restarted under a held model hung at startup. It now waits
    `join_timeout_s`, then says why it cannot start; once the step ends, it starts."""
    from saesteer.api.scheduler import Scheduler
    from steering.engine import BatchEngine, Row
    from steering.sampling import SamplingParams

    lock = threading.RLock()
    sched = Scheduler(BatchEngine(ws.model, {"chat": ws.sae}, lock=lock), name="chat")
    sched.join_timeout_s = 0.05  # close and the restart give up at once: the step waits for the lock
    ids = ws.model.to_tokens("def parse")[0].tolist()
    tried: list = []

    def restart():
        try:
            sched.start()
            tried.append("started")
        except RuntimeError as e:
            tried.append(str(e))

    async def submit():
        sched.submit([Row(ids, SamplingParams(max_new_tokens=2, seed=0))], asyncio.get_running_loop(),
                     deliver_tokens=False)

    sched.start()
    lock.acquire()
    try:
        asyncio.run(submit())
        assert _wait(lambda: not sched._inbox)  # the worker took the job in: it waits for the model
        sched.close()
        t = threading.Thread(target=restart, daemon=True)
        t.start()
        t.join(30)
        hung = t.is_alive()
    finally:
        lock.release()
    t.join(30)
    assert not hung, "start() waited for the closed worker's step without bound"
    assert "cannot start the API's scheduler for 'chat' again" in tried[0] and "generation step" in tried[0]
    assert _wait(lambda: not sched._thread.is_alive())  # the step ended: the worker left
    sched.start()
    assert sched._thread.is_alive()
    sched.close()


@pytest.mark.parametrize("moment", ["before the engine has its rows", "during their prefill"])
def test_a_job_cancelled_while_the_worker_takes_it_in_is_cancelled(ws, moment):
    """A client that goes away just after the worker took its job out of the inbox, or while its
    rows are in their prefill: `cancel` found them neither waiting nor running, and they ran to the
    end for nobody (outside the bound on requests in the server). The engine's `cancel` now sees rows
    in their prefill, and the scheduler cancels a job again once the rows it took in are added."""
    from saesteer.api.scheduler import Scheduler
    from steering.engine import BatchEngine, Row
    from steering.sampling import SamplingParams

    engine = BatchEngine(ws.model, {"chat": ws.sae})
    sched = Scheduler(engine, name="chat")
    add, prefill, added = engine.add, engine.runner.prefill, []  # the client leaves at that moment (on this thread)
    if moment == "before the engine has its rows":
        engine.add = lambda rows: (sched.cancel(rows[0].group), add(rows))
    else:
        engine.add = lambda rows: (added.append(rows[0].group), add(rows))
        engine.runner.prefill = lambda *a: (sched.cancel(added[0]), prefill(*a))[1]
    ids = ws.model.to_tokens("def parse")[0].tolist()

    async def scenario():
        sched.start()
        job = sched.submit([Row(ids, SamplingParams(max_new_tokens=MAX_NEW, seed=0))], asyncio.get_running_loop(),
                           deliver_tokens=False)
        return [ev.finish_reason async for ev in job]

    try:
        assert asyncio.run(asyncio.wait_for(scenario(), 60)) == ["cancelled"]
    finally:
        sched.close()


def test_a_web_model_job_waiting_when_the_server_stops_leaves_the_reopened_queue_empty():
    """`ModelQueue.close` cancels the jobs that had not started; their places are given back, so the
    queue a second serve opens starts empty (they stayed counted: each stop made it smaller for good)."""
    from saesteer.web.jobs import ModelQueue

    q = ModelQueue("m", max_pending=2)
    started, release = threading.Event(), threading.Event()

    def running():
        started.set()
        release.wait(10)

    async def scenario():
        first = asyncio.ensure_future(q.run(running))
        assert await asyncio.to_thread(started.wait, 10)
        second = asyncio.ensure_future(q.run(lambda: None))
        for _ in range(100):  # a few turns of the loop: the task counts itself in
            if q.pending == 2:
                break
            await asyncio.sleep(0.01)
        assert q.pending == 2
        q.close()
        release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
        q.open()
        assert await q.run(lambda: 7) == 7

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert q.pending == 0
    q.close()


# -- clients that go away -------------------------------------------------------------------------


def test_a_non_streamed_request_whose_client_left_is_cancelled(server, client):
    srv, app = server
    sched = app.state.openai.schedulers[0]
    model_lock = app.state.web.queues[0].lock  # generation waits for it at every forward pass
    before = sched.cancelled_count
    body = {"model": "chat", "prompt": "def parse", "max_tokens": MAX_NEW, "ignore_eos": True}
    with model_lock:  # hold the model: the request cannot finish before its client times out
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{srv.url}/v1/completions", json=body, timeout=1.0)
        assert _wait(lambda: sched.cancelled_count == before + 1, 10), "the generation went on for nobody"
    assert _wait(lambda: sched.in_flight == 0 and not sched.engine.busy)
    assert client.completions.create(model="chat", prompt="def", max_tokens=2).usage.completion_tokens >= 1


def test_a_non_streamed_request_runs_one_task_beside_its_handler(server):
    """The handler reads the events itself; one task watches for the client going away (there were
    two: one collecting, one watching)."""
    import saesteer.api.routes as routes

    srv, app = server
    sched = app.state.openai.schedulers[0]
    model_lock = app.state.web.queues[0].lock
    body = {"model": "chat", "prompt": "def parse", "max_tokens": 4, "ignore_eos": True}
    done = []

    async def tasks_of_routes():
        return sorted(t.get_coro().__qualname__ for t in asyncio.all_tasks()
                      if getattr(getattr(t.get_coro(), "cr_code", None), "co_filename", None) == routes.__file__)

    with model_lock:  # hold the model: the request stays in while its tasks are counted
        t = threading.Thread(target=lambda: done.append(httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60)))
        t.start()
        assert _wait(lambda: sched.in_flight == 1)
        job = next(iter(sched._jobs))
        ours = asyncio.run_coroutine_threadsafe(tasks_of_routes(), job.loop).result(10)
    t.join(60)
    assert ours == ["_client_gone"]
    assert done[0].status_code == 200 and done[0].json()["usage"]["completion_tokens"] == 4


def test_a_stream_the_client_closes_is_cancelled_and_the_server_goes_on(server, client):
    _, app = server
    sched = app.state.openai.schedulers[0]
    model_lock = app.state.web.queues[0].lock
    before = sched.cancelled_count
    stream = client.chat.completions.create(model="chat", messages=MSGS, max_tokens=16, stream=True,
                                            extra_body={"ignore_eos": True})
    next(iter(stream))
    with model_lock:  # pause generation, then go away mid-stream
        stream.close()
        assert _wait(lambda: sched.cancelled_count == before + 1, 10)
    assert _wait(lambda: sched.in_flight == 0 and not sched.engine.busy)
    r = client.chat.completions.create(model="chat", messages=MSGS, max_tokens=3, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3


# -- what clients send ------------------------------------------------------------------------------


def test_max_completion_tokens_is_honoured_and_named_in_its_refusals(client):
    kw = dict(model="chat", messages=MSGS, extra_body={"ignore_eos": True})
    assert client.chat.completions.create(max_completion_tokens=5, **kw).usage.completion_tokens == 5
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(max_completion_tokens=MAX_NEW + 1, **kw)
    assert e.value.body["param"] == "max_completion_tokens" and f"at most {MAX_NEW}" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(max_completion_tokens=5, max_tokens=6, **kw)
    assert "max_completion_tokens (5) and max_tokens (6)" in e.value.body["message"]
    assert client.chat.completions.create(max_completion_tokens=4, max_tokens=4, **kw).usage.completion_tokens == 4


def test_refusals_before_the_api_speak_openais_error_shape(server, client):
    srv, _ = server
    with pytest.raises(openai.APIStatusError) as e:  # over --max-body-bytes (64 KiB by default)
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x" * 70_000}], max_tokens=1)
    assert e.value.status_code == 413 and "request body too large" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="chat", input="def")
    assert "no /v1/embeddings" in e.value.body["message"] and "/v1/chat/completions" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="chat", input="def")
    assert "no /v1/responses" in e.value.body["message"]
    # curl -d '{...}' without -H 'Content-Type: application/json' sends a form's type
    r = httpx.post(f"{srv.url}/v1/chat/completions", content=json.dumps({"model": "chat", "messages": MSGS}),
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "Content-Type: application/json" in r.json()["error"]["message"]
    no_v1 = openai.OpenAI(base_url=srv.url, api_key="loopback", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        no_v1.chat.completions.create(model="chat", messages=MSGS, max_tokens=1)
    assert f"base_url to http://127.0.0.1:{srv.port}/v1" in e.value.body["message"]


def test_v1_errors_carry_openais_types_and_codes(ws, server):
    """OpenAI answers every refusal with type 'invalid_request_error' (a wrong key: code
    'invalid_api_key') and its own failures with 'server_error'; a client switching on `type` or
    `code` met 'not_found_error', 'authentication_error' (other vendors' names) from this server."""
    from saesteer.web import Limits, ServeConfig, create_app
    from helpers.web_app import client as test_client

    srv, _ = server
    for path, body in (("/v1/embeddings", {}), ("/v1/chat/completions", {"model": "nope", "messages": MSGS}),
                       ("/v1", {})):
        err = httpx.post(f"{srv.url}{path}", json=body).json()["error"]
        assert err["type"] == "invalid_request_error", (path, err)
    limits = Limits(max_new_tokens=MAX_NEW)
    port = free_port()
    app = create_app([make_entry(ws, "chat", limits=limits)], config=ServeConfig(port=port, require_token=True),
                     limits=limits, token="t0k3n-" + "x" * 40)
    with test_client(app, base_url=f"http://127.0.0.1:{port}") as c:
        r = c.post("/v1/chat/completions", json={"model": "chat", "messages": MSGS})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["code"] == "invalid_api_key"


def test_a_content_part_type_is_echoed_cut_short(client):
    """The refusal names the part's type; a client's long (or multi-line) `type` is cut, not echoed whole."""
    part = {"type": "image_url\n" + "x" * 5000, "image_url": {"url": "data:,"}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": [part]}], max_tokens=1)
    message = e.value.body["message"]
    assert "only text content parts" in message and "image_url" in message and len(message) < 300


@pytest.mark.parametrize("field, value", [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
    ("response_format", {"type": "json_object"}),
    ("tool_choice", "required"),
    ("reasoning_effort", "low"),
    ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "def parse"}),
])
def test_fields_that_change_the_meaning_are_refused_by_name(client, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=MSGS, max_tokens=2, **{field: value})
    assert field.split("_")[0] in e.value.body["message"]


@pytest.mark.parametrize("message, says", [
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]},
     "only text content parts are supported (got 'image_url')"),
    ({"role": "tool", "content": "42", "tool_call_id": "call_1"}, "needs tool calling"),
])
def test_messages_this_server_cannot_read_are_refused_in_one_line(client, message, says):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=[MSGS[1], message], max_tokens=2)
    assert says in e.value.body["message"] and ";" not in e.value.body["message"]


def test_informational_fields_and_models_by_id_and_raw_responses(client):
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=MSGS, max_tokens=4, seed=3, stop=["\n\n", "#"], user="u-1", metadata={"run": "a"},
        temperature=0.7, top_p=0.9)
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("application/json")
    r = raw.parse()
    assert r.object == "chat.completion" and r.choices[0].model_extra["steering"]["seed"] == 3
    assert "#" not in r.choices[0].message.content
    model = client.models.retrieve("chat")
    assert model.id == "chat" and model.model_extra["saesteer"]["chat_template"] is True


def test_logit_bias_and_penalties_change_the_tokens(client):
    """Supported, so applied (greedy, so nothing but them changes the tokens): +100 on one token
    makes every token that one; penalties stop the greedy reply repeating itself."""
    kw = dict(model="chat", messages=MSGS, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    greedy = client.chat.completions.create(**kw).choices[0].model_extra["steering"]["token_ids"]
    assert len(set(greedy)) < len(greedy)  # the tiny model repeats itself
    target = next(t for t in range(5, 500) if t not in greedy)
    forced = client.chat.completions.create(logit_bias={str(target): 100}, **kw)
    assert forced.choices[0].model_extra["steering"]["token_ids"] == [target] * 12
    penalised = client.chat.completions.create(presence_penalty=2.0, frequency_penalty=2.0, **kw)
    ids = penalised.choices[0].model_extra["steering"]["token_ids"]
    assert len(set(ids)) > len(set(greedy))


def test_chat_logprobs_have_openais_shape_over_a_byte_level_tokenizer(client):
    """logprobs=True, top_logprobs=3, greedy: one entry per generated token, the chosen one the most
    likely, three alternatives each, and the tokens' bytes make up the reply's text."""
    r = client.chat.completions.create(model="chat", messages=MSGS, max_tokens=8, temperature=0, logprobs=True,
                                       top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 8
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-5) and entry.logprob <= 0
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
    assert bytes(b for e in content for b in e.bytes).decode("utf-8", "replace") == r.choices[0].message.content


# -- reading streams --------------------------------------------------------------------------------


def test_a_plain_sse_reader_sees_json_events_and_a_final_done(server, client):
    srv, _ = server
    body = {"model": "chat", "messages": MSGS, "max_tokens": 12, "seed": 7, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode("utf-8")
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    whole = client.chat.completions.create(model="chat", messages=MSGS, max_tokens=12, seed=7,
                                           extra_body={"ignore_eos": True})
    assert text == whole.choices[0].message.content


def test_async_client_with_concurrent_streams(server, client):
    """Four AsyncOpenAI streams at once (n=2 on one): each stream's text is that of the same request
    unstreamed, and the usage chunk comes last."""
    srv, _ = server

    async def stream(ac, seed, n):
        texts, usage = ["" for _ in range(n)], []
        s = await ac.chat.completions.create(model="chat", messages=MSGS, max_tokens=10, seed=seed, n=n, stream=True,
                                             stream_options={"include_usage": True})
        async for ch in s:
            for c in ch.choices:
                texts[c.index] += c.delta.content or ""
            usage.append(ch.usage)
        return texts, usage

    async def run():
        async with async_openai_client(srv, timeout=60) as ac:
            return await asyncio.gather(*(stream(ac, seed, 2 if seed == 3 else 1) for seed in (1, 2, 3, 4)))

    results = asyncio.run(run())
    for seed, (texts, usage) in zip((1, 2, 3, 4), results):
        whole = client.chat.completions.create(model="chat", messages=MSGS, max_tokens=10, seed=seed,
                                               n=2 if seed == 3 else 1)
        assert texts == [c.message.content for c in whole.choices]
        assert all(u is None for u in usage[:-1]) and usage[-1] == whole.usage


def test_a_streamed_chat_opens_with_a_role_only_chunk_per_choice(client):
    """OpenAI's first chunk of each choice carries the role and empty content, before any text;
    clients that build the message from it saw the role only together with the first text (and
    never, when no text came)."""
    chunks = list(client.chat.completions.create(model="chat", messages=MSGS, max_tokens=3, n=2, seed=3, stream=True))
    firsts = {}
    for ch in chunks:
        for choice in ch.choices:
            firsts.setdefault(choice.index, choice)
    assert sorted(firsts) == [0, 1]
    for choice in firsts.values():
        assert choice.delta.role == "assistant" and choice.delta.content == "" and choice.finish_reason is None
    roles = [choice.delta.role for ch in chunks for choice in ch.choices if choice.delta.role is not None]
    assert len(roles) == 2, "the role is said once per choice"
    text = "".join(choice.delta.content or "" for ch in chunks for choice in ch.choices if choice.index == 0)
    assert text == client.chat.completions.create(model="chat", messages=MSGS, max_tokens=3, n=2, seed=3).choices[0].message.content


def test_top_p_zero_is_greedy(client):
    """OpenAI accepts `top_p=0` (clients send it to mean 'no sampling'); a nucleus of no mass keeps
    only the most likely token, so it is greedy whatever the temperature or seed (it was refused)."""
    greedy = client.completions.create(model="chat", prompt="def parse", max_tokens=8, temperature=0,
                                    extra_body={"ignore_eos": True})
    for seed in (1, 2):
        r = client.completions.create(model="chat", prompt="def parse", max_tokens=8, temperature=1.5, top_p=0,
                                      seed=seed, extra_body={"ignore_eos": True})
        assert r.choices[0].text == greedy.choices[0].text
    sampled = {client.completions.create(model="chat", prompt="def parse", max_tokens=8, temperature=1.5, seed=s,
                                         extra_body={"ignore_eos": True}).choices[0].text for s in (1, 2)}
    assert sampled != {greedy.choices[0].text}, "the temperature alone would not make these equal"


# -- assistant prefill (vLLM's continue_final_message) ------------------------------------------------

PREFILL = MSGS + [{"role": "assistant", "content": "Voilà:\n    return"}]  # the toy model reads 64 tokens
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}  # as vLLM's clients send it


def _open_prompt(ws, messages=PREFILL) -> list[int]:
    """The prompt transformers renders for continuing the last message (what vLLM serves)."""
    return ws.model.tokenizer.apply_chat_template(messages, continue_final_message=True, add_generation_prompt=False,
                                                  tokenize=True)["input_ids"]


def test_a_prefilled_assistant_message_is_continued_streamed_and_not(ws, client):
    """The last message, the assistant's, is left open (no <|im_end|>, no new assistant turn) and the
    reply continues it: the same tokens as the completions endpoint reading the prompt transformers
    renders with continue_final_message; the reply holds only the continuation."""
    ids = _open_prompt(ws)
    tok = ws.model.tokenizer
    assert tok.decode(ids).endswith("Voilà:\n    return") and tok.convert_ids_to_tokens(ids).count("<|im_start|>") == 3
    kw = dict(model="chat", messages=PREFILL, max_tokens=8, temperature=0)
    r = client.chat.completions.create(**kw, extra_body={**CONTINUE, "ignore_eos": True})
    plain = client.completions.create(model="chat", prompt=ids, max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True})
    got = r.choices[0].model_extra["steering"]["token_ids"]
    assert r.usage.prompt_tokens == len(ids) and got == plain.choices[0].model_extra["steering"]["token_ids"]
    assert r.choices[0].message.content == plain.choices[0].text
    # a new turn (the default) reads another prompt
    new_turn = client.chat.completions.create(**dict(kw, max_tokens=1), extra_body={"ignore_eos": True})
    assert new_turn.usage.prompt_tokens > len(ids)
    stream = client.chat.completions.create(**kw, stream=True, extra_body={**CONTINUE, "ignore_eos": True})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == r.choices[0].message.content
    # continue_final_message alone implies no generation prompt
    alone = client.chat.completions.create(**kw, extra_body={"continue_final_message": True, "ignore_eos": True})
    assert alone.choices[0].message.content == r.choices[0].message.content
    # add_generation_prompt false alone: the chat as it is, closed, as transformers renders it
    closed = tok.apply_chat_template(MSGS, add_generation_prompt=False, tokenize=True)["input_ids"]
    r = client.chat.completions.create(model="chat", messages=MSGS, max_tokens=2,
                                       extra_body={"add_generation_prompt": False})
    assert r.usage.prompt_tokens == len(closed)


def test_edits_on_role_assistant_cover_the_prefilled_part_and_the_reply(ws, client):
    ids = _open_prompt(ws)
    names = ws.model.tokenizer.convert_ids_to_tokens(ids)
    start = len(names) - names[::-1].index("<|im_start|>") - 1  # the assistant's turn: its markup and the prefill
    n = 8
    edit = {"latent": 3, "op": "add", "value": 25.0}
    kw = dict(max_tokens=n, temperature=0)

    def chat(positions):
        r = client.chat.completions.create(model="chat", messages=PREFILL, **kw, extra_body={
            **CONTINUE, "ignore_eos": True, "steering": {"edits": [dict(edit, positions=positions)]}})
        return r.choices[0].model_extra["steering"]["token_ids"]

    by_index = client.completions.create(model="chat", prompt=ids, **kw, extra_body={
        "ignore_eos": True, "steering": {"edits": [dict(edit, positions=list(range(start, len(ids) + n)))]}})
    by_role = chat("role:assistant")
    assert by_role == by_index.choices[0].model_extra["steering"]["token_ids"]
    assert by_role != chat("generated")  # the prefilled part is steered too
    assert chat("turn:-1") == chat(list(range(start, len(ids))))  # the last message: the prefill, not the reply


@pytest.mark.parametrize("messages, extra, says", [
    (MSGS, CONTINUE, "must be the assistant's"),
    (PREFILL, {"continue_final_message": True, "add_generation_prompt": True}, "Cannot set both"),
])
def test_continue_final_message_is_refused_where_it_cannot_apply_in_openais_error_shape(client, messages, extra, says):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=messages, max_tokens=2, extra_body=extra)
    err = e.value.body
    assert e.value.status_code == 400 and says in err["message"]
    assert err["type"] == "invalid_request_error" and err["param"] == "continue_final_message"
