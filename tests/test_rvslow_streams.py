"""Review of the stall timer of a stream (`saesteer.api.routes._stream`), driven directly: the stream's
generator is what Starlette's StreamingResponse iterates, and not asking it for the next chunk is
exactly what a send blocked on a full connection looks like from inside it.

A stall cancels a generation to free its batch rows. Once every row has ended there is nothing to
free: a client slower than the generation (a mobile link reading the tail of n=8 x logprobs=20) must
then get the whole reply, not the reply cut by an error event (or an error after its last chunk).

Nothing is timed: the stall timer and the test's wait are both the event loop's timers, and a timer
due earlier always runs first.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from saesteer.api.routes import _stream
from saesteer.api.scheduler import Job
from steering.engine import RowEvent

STALL_S = 0.01


class _Scheduler:
    def __init__(self) -> None:
        self.cancelled: list[Job] = []

    def cancel(self, job: Job) -> None:
        self.cancelled.append(job)


class _Out:
    """The Assembler's part `_stream` uses: one chunk per event, its text."""
    prep = SimpleNamespace(include_usage=False)
    error = None

    def first_chunks(self):
        return [{"text": "<start>"}]

    def add(self, ev):
        return {"text": ev.text, "finish_reason": ev.finish_reason}


def _job(texts: list[str], *, ended: bool) -> Job:
    """A one-row job with `texts` delivered (the last one finishing the row when `ended`)."""
    job = Job(1, asyncio.get_running_loop(), deliver_tokens=True)
    for i, t in enumerate(texts):
        last = ended and i == len(texts) - 1
        job.queue.put_nowait(RowEvent(0, job, text=t, finish_reason="length" if last else None))
    if ended:
        job.unfinished = 0  # as the worker thread leaves it once the row's last event is delivered
    return job


async def _read_with_a_stall(job: Job, sched: _Scheduler) -> list[str]:
    """The stream's events, its first chunk's send waiting past the stall."""
    agen = _stream(sched, job, _Out(), STALL_S)
    got = [await agen.__anext__()]
    await asyncio.sleep(4 * STALL_S)  # the send of the first chunk blocks: the stall timer (due first) runs
    async for chunk in agen:
        got.append(chunk)
    return [c.decode().removeprefix("data: ").strip() for c in got]


def test_a_stall_after_the_generation_ended_cuts_nothing():
    """All of the reply was generated (the rows are out of the batch) and the client reads slowly: it
    gets every chunk and [DONE], no error, and the job is not cancelled (it would count in the server's
    status as cancelled, and freeing its rows frees nothing)."""
    async def main():
        sched = _Scheduler()
        job = _job(["the sailor ", "sang of ", "the sea, 海 and é"], ended=True)
        return sched, await _read_with_a_stall(job, sched)

    sched, events = asyncio.run(main())
    assert sched.cancelled == [], "a stream generated to its end was cancelled for a slow reader"
    assert [json.loads(e)["text"] for e in events[:-1]] == ["<start>", "the sailor ", "sang of ", "the sea, 海 and é"]
    assert events[-1] == "[DONE]"


def test_a_stall_while_generating_cancels_once_and_says_so():
    """Still generating: the stall cancels the job (once, and no second time from the stream's end),
    and the client reading on gets the chunks so far, one OpenAI-shaped error event and [DONE]."""
    async def main():
        sched = _Scheduler()
        job = _job(["the sailor "], ended=False)
        job.stop_reading()  # what the cancelled job's events end with here (no worker to end them)
        return sched, job, await _read_with_a_stall(job, sched)

    sched, job, events = asyncio.run(main())
    assert sched.cancelled == [job]
    assert json.loads(events[0])["text"] == "<start>"
    err = json.loads(events[-2])["error"]
    assert "its client read nothing for 0.01 s" in err["message"] and err["type"] == "server_error"
    assert events[-1] == "[DONE]"


def test_a_client_gone_in_a_send_leaves_no_stall_timer_behind():
    """The client goes away while a send waits (Starlette closes the stream's generator): the job is
    cancelled by the stream's end, and the stall timer of that send never runs later (it would
    cancel the job a second time, and hold it until then)."""
    async def main():
        sched = _Scheduler()
        job = _job(["the sailor "], ended=False)
        agen = _stream(sched, job, _Out(), STALL_S)
        await agen.__anext__()
        await agen.aclose()  # the send raised (a disconnect): the generator is closed at its `yield`
        assert sched.cancelled == [job]
        await asyncio.sleep(4 * STALL_S)  # past the timer's due time
        return sched, job

    sched, job = asyncio.run(main())
    assert sched.cancelled == [job], "the stall timer of a closed stream ran"


def test_the_openai_client_reading_a_stalled_stream_on_raises_the_error(tmp_path):
    """Through the server and the real `openai` client (its connection's receive buffer small): it takes
    the first chunk, stops reading until the stall has cancelled the generation, then reads on and gets
    an `openai.APIError` naming the stall, rather than a cut reply passed off as complete or a hang."""
    import socket
    import time

    import httpx
    import openai
    import pytest

    from helpers.api_server import openai_client, serve_entries, small_send_buffer_protocol
    from helpers.web_app import make_entry
    from helpers.web_store import build_web_store
    from saesteer.api.config import BatchConfig
    from saesteer.web import Limits

    store = build_web_store(tmp_path, n_ctx=1024, n_contexts=16)  # few contexts: only its model is used
    limits = Limits(max_new_tokens=1000, max_choices=8)
    srv, app = serve_entries([make_entry(store, "tiny", limits=limits)], limits=limits,
                             batch=BatchConfig(stream_stall_s=0.5), uvicorn_kw={"http": small_send_buffer_protocol()})
    sched = app.state.openai.schedulers[0]
    small_rcvbuf = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    try:
        eos = app.state.openai.models["tiny"].stop_ids(False)
        with httpx.Client(transport=small_rcvbuf, timeout=120) as http:
            stream = openai_client(srv, http_client=http).completions.create(
                model="tiny", prompt="Le marin chantait la mer, 海の歌: def sing(x): return x", max_tokens=1000,
                n=8, temperature=1.0, seed=1, stream=True, logprobs=20, logit_bias={str(i): -100 for i in eos})
            chunks = iter(stream)
            next(chunks)
            deadline = time.monotonic() + 120  # a hang guard only
            while sched.cancelled_count + sched.completed == 0:
                assert time.monotonic() < deadline, "hang guard: the stream never ended"
                time.sleep(0.02)
            assert sched.cancelled_count == 1 and sched.completed == 0
            with pytest.raises(openai.APIError, match="its client read nothing for 0.5 s"):
                for _ in chunks:
                    pass
    finally:
        srv.stop()
