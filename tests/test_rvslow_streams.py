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
