"""Model jobs are queued: one at a time per model, in order, bounded, never concurrent."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from helpers.web_app import BASE, make_entry, shared_store
from saesteer.web import Limits, ModelQueue, QueueFull, ServeConfig, create_app
from saesteer.web.model_source import ModelEngine


class Probe:
    """Counts how many calls are inside at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.max_inside = 0
        self.order: list[int] = []

    def enter(self, tag) -> None:
        with self.lock:
            self.inside += 1
            self.max_inside = max(self.max_inside, self.inside)
            self.order.append(tag)

    def leave(self) -> None:
        with self.lock:
            self.inside -= 1


def test_queue_runs_one_job_at_a_time_in_order():
    q = ModelQueue("m", max_pending=16)
    probe = Probe()

    def job(i):
        probe.enter(i)
        time.sleep(0.02)
        probe.leave()
        return i * i

    async def main():
        return await asyncio.gather(*(q.run(job, i) for i in range(8)))

    try:
        assert asyncio.run(main()) == [i * i for i in range(8)]
    finally:
        q.close()
    assert probe.max_inside == 1 and probe.order == list(range(8))
    assert q.pending == 0 and q.completed == 8


def test_queue_refuses_beyond_max_pending_and_recovers():
    q = ModelQueue("m", max_pending=2)
    release = threading.Event()

    async def main():
        first = asyncio.ensure_future(q.run(release.wait, 10))
        second = asyncio.ensure_future(q.run(lambda: "second"))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="already waiting"):
            await q.run(lambda: "third")
        release.set()
        assert await first is True and await second == "second"
        return await q.run(lambda: "after")

    try:
        assert asyncio.run(main()) == "after"
    finally:
        q.close()


def test_job_errors_propagate_and_free_the_slot():
    q = ModelQueue("m", max_pending=1)

    def boom():
        raise ValueError("bad prompt")

    async def main():
        with pytest.raises(ValueError, match="bad prompt"):
            await q.run(boom)
        return await q.run(lambda: 1)

    try:
        assert asyncio.run(main()) == 1 and q.pending == 0
    finally:
        q.close()


class ProbedEngine(ModelEngine):
    def __init__(self, *a, probe: Probe, gate: threading.Event | None = None, **kw):
        super().__init__(*a, **kw)
        self.probe = probe
        self.gate = gate

    def steer(self, req):
        self.probe.enter(req.seed)
        try:
            if self.gate is not None:
                self.gate.wait(10)
            return super().steer(req)
        finally:
            self.probe.leave()


def _app_with(probe, limits, gate=None, two_stores=False):
    ws = shared_store()
    queue = ModelQueue("tiny-test-model", limits.max_pending)
    entries = []
    for sid in (["a", "b"] if two_stores else ["a"]):
        e = make_entry(ws, sid, limits=limits, queue=queue)
        e.engine = ProbedEngine(e.engine.model, e.engine.sae, e.catalog, limits, probe=probe, gate=gate)
        entries.append(e)
    return create_app(entries, config=ServeConfig(port=8000), limits=limits)


def _body(seed):
    return {"prompt": "the ship", "max_new_tokens": 3, "seed": seed, "temperature": 1.0,
            "edits": [{"latent": 2, "op": "add", "value": 2}]}


def test_concurrent_steer_requests_never_overlap_on_one_model():
    probe = Probe()
    app = _app_with(probe, Limits(), two_stores=True)  # two stores, one model, one queue

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as ac:
            reqs = [ac.post(f"/api/stores/{'ab'[i % 2]}/steer", json=_body(i)) for i in range(6)]
            return await asyncio.gather(*reqs)

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 6
    assert probe.max_inside == 1 and sorted(probe.order) == list(range(6))


def test_full_queue_answers_503_with_retry_after():
    probe = Probe()
    gate = threading.Event()
    app = _app_with(probe, Limits(max_pending=1), gate=gate)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as ac:
            first = asyncio.ensure_future(ac.post("/api/stores/a/steer", json=_body(1)))
            for _ in range(200):
                await asyncio.sleep(0.01)
                if probe.inside:
                    break
            busy = await ac.post("/api/stores/a/steer", json=_body(2))
            gate.set()
            return await first, busy

    first, busy = asyncio.run(main())
    assert first.status_code == 200
    assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
    assert "waiting" in busy.json()["detail"]
