"""A request body over `--max-body-bytes`: the guard answers 413 from its Content-Length, before the
body is read (`saesteer.web.security`), while the client is still sending it.

uvicorn reads the rest of such a body and discards it, so the client (which sends its whole body
before it reads the answer) finishes sending and reads the 413 (a close under a client still sending
resets the connection, which may lose the answer; on Linux loopback httpx and the openai client read
it anyway, as the second test shows past the bound). That reading had no bound: a client could send
gigabytes after its 413. `saesteer serve`'s protocol (`listen.guarded_http_protocol`) now closes the
connection past `discard_bytes` discarded, and the clients still see the 413, below and past it.
"""

from __future__ import annotations

import socket

import httpx
import pytest

from helpers.api_server import openai_client, serve_entries
from helpers.web_app import make_entry, shared_store

LIMIT = 64 * 1024
DISCARD = 1 << 20  # the protocol's bound on a refused body's discarded bytes (default 8 MiB), small here
HANG_GUARD_BYTES = 256 << 20  # only so that an unbounded reading fails instead of running on


@pytest.fixture(scope="module")
def srv():
    from saesteer.web import Limits
    from saesteer.web.listen import guarded_http_protocol

    limits = Limits(max_body_bytes=LIMIT)
    server, _ = serve_entries([make_entry(shared_store(), "tiny", limits=limits, with_model=False)], limits=limits,
                              uvicorn_kw={"http": guarded_http_protocol(discard_bytes=DISCARD)})
    yield server
    server.stop()


def test_a_refused_body_is_read_on_no_further_than_a_bound(srv):
    """A client claiming a 1 GiB body sends on after its 413: the server stops reading it (closes)
    once it has discarded DISCARD bytes, instead of reading whatever the client sends."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % (srv.port, 1 << 30))
        piece, sent = b" " * 65536, 0
        try:
            while sent < HANG_GUARD_BYTES:
                sent += s.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
    # what was sent past DISCARD sat in the two kernels' buffers (a few MiB on loopback) when it closed
    assert sent < 64 << 20, f"the server read {sent >> 20} MiB of a refused body and was still reading"


@pytest.mark.parametrize("size", [3 * LIMIT, 32 << 20], ids=["read-and-discarded", "past-the-discard-bound"])
def test_clients_see_the_413_of_a_body_over_the_limit(srv, size):
    """The real `openai` client and httpx get the 413 and its message (not "Server disconnected"),
    for a body uvicorn reads and discards and for one past the bound, where the server closes while
    the client is still sending; the connection of the first is kept for the next request."""
    import openai

    prompt = "Ünïcode prose, 中文, and code: def f(x): return x\n" * (size // 48)
    msg = f"request body too large (limit {LIMIT} bytes)"
    with httpx.Client(base_url=srv.url, timeout=60) as h:
        r = h.post("/v1/completions", json={"model": "tiny", "prompt": prompt})
        assert r.status_code == 413 and r.json()["error"]["message"] == msg
        assert h.get("/v1/models").status_code == 200  # the same client goes on (a new connection if closed)
    with pytest.raises(openai.APIStatusError) as e:
        openai_client(srv).completions.create(model="tiny", prompt=prompt, max_tokens=2)
    assert e.value.status_code == 413 and msg in str(e.value)
