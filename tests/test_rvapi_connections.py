"""`saesteer serve`'s HTTP protocol (listen.guarded_http_protocol) under clients that open and close
connections as real ones do: a closed connection leaves nothing behind until its header deadline.

Served over the shared web store (helpers.web_app) in uvicorn on a loopback port (helpers.api_server).
"""

from __future__ import annotations

import gc
import socket
import time
import weakref

import httpx
import pytest

from helpers.api_server import serve_entries
from helpers.web_app import make_entry, shared_store

pytestmark = [pytest.mark.usefixtures("one_thread")]


def test_a_closed_connection_is_not_kept_until_its_header_deadline():
    """The protocol armed a timer (30 s) for the next request's headers when a connection opened
    and after each answer, and never disarmed it: a connection closed at once stayed in memory (its
    buffers, its last request) until the timer ran, one per connection and per answer, so a client
    opening many short connections (a load test, a health check without keep-alive) piled them up.
    Closing disarms it: the connection's protocol is freed as soon as it closes."""
    from saesteer.web.listen import guarded_http_protocol

    made: list[weakref.ref] = []

    class Recording(guarded_http_protocol(600)):  # a deadline no test waits for
        def connection_made(self, transport) -> None:
            made.append(weakref.ref(self))
            super().connection_made(transport)

    srv, _ = serve_entries([make_entry(shared_store(), "tiny", with_model=False)], uvicorn_kw={"http": Recording})
    try:
        for _ in range(3):  # answered, then closed by the client
            with httpx.Client(base_url=srv.url, timeout=30) as h:
                assert h.get("/api/stores").status_code == 200
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30):
            pass  # opened and closed without a request

        def all_freed() -> bool:
            gc.collect()  # a protocol and its request cycle refer to each other
            return len(made) == 4 and all(r() is None for r in made)

        deadline = time.monotonic() + 20  # only so that a leak fails instead of waiting 600 s
        while not all_freed():
            assert time.monotonic() < deadline, f"{sum(r() is not None for r in made)} of {len(made)} closed connections kept"
            time.sleep(0.05)
    finally:
        srv.stop()


def test_saesteer_serve_serves_with_the_guarded_protocol(monkeypatch):
    """The deadline lives in the protocol class `run_server` hands uvicorn: `saesteer serve` (and
    `saesteer api`, through the same commands code) must serve with it; the other tests
    (test_apiload_clients, the one above) hand it to uvicorn themselves."""
    import uvicorn

    from helpers.real_cli import saesteer

    served: list = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append(self.config.http))
    saesteer("serve", "--store", shared_store().path, "--port", 0).ok()
    assert [getattr(p, "__name__", p) for p in served] == ["GuardedHTTPProtocol"], served
