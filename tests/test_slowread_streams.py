"""A streaming client that stops reading but keeps its connection open (`saesteer.api.routes._stream`).

Its rows stayed in the batch until max_tokens, generating for nobody while other requests waited:
the server's send only blocks once the connection's buffers are full, and nothing timed that wait.
Now a chunk that waits `BatchConfig.stream_stall_s` for the client cancels the generation (its
rows leave the batch), and a client that reads on later gets an error event, then [DONE].

The stalled client is a raw socket with a small receive buffer (it fills fast); the waits are keyed
to the scheduler's counters, with a hang guard only.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from helpers.api_server import serve_entries, small_send_buffer_protocol
from helpers.web_app import make_entry
from helpers.web_store import build_web_store

pytestmark = [pytest.mark.usefixtures("one_thread")]

HANG_GUARD_S = 120  # only so that a bug fails instead of hanging; nothing is timed


@pytest.fixture(scope="module")
def long_store(tmp_path_factory):
    """The web tests' tiny model with a context long enough for a stream to fill a connection."""
    return build_web_store(tmp_path_factory.mktemp("slowread"), n_ctx=1024)


def _wait_until(pred, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not pred():
        assert time.monotonic() < deadline, f"hang guard: {what} never happened"
        time.sleep(0.02)


def _stalled_stream(srv, body: dict) -> socket.socket:
    """A connection that sends a streaming request and reads nothing (a receive buffer of 4 KiB)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window it advertises
    s.settimeout(HANG_GUARD_S)
    s.connect(("127.0.0.1", srv.port))
    raw = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % (srv.port, len(raw)) + raw)
    return s


def test_a_stream_whose_client_stops_reading_is_cancelled_and_frees_its_rows(long_store):
    from saesteer.api.config import BatchConfig
    from saesteer.web import Limits

    limits = Limits(max_new_tokens=1000, max_choices=8)
    srv, app = serve_entries([make_entry(long_store, "tiny", limits=limits)], limits=limits,
                             batch=BatchConfig(stream_stall_s=0.5), uvicorn_kw={"http": small_send_buffer_protocol()})
    sched = app.state.openai.schedulers[0]
    try:
        eos = app.state.openai.models["tiny"].stop_ids(False)
        # 8 choices x 1000 tokens with 20 alternatives each: ~10 MB of chunks, far past what the
        # connection's buffers hold (~100 KiB here); end-of-text banned so no choice ends early
        s = _stalled_stream(srv, {"model": "tiny", "prompt": "the sailor sang of the sea", "max_tokens": 1000,
                                  "n": 8, "temperature": 1.0, "seed": 1, "stream": True, "logprobs": 20,
                                  "logit_bias": {str(i): -100 for i in eos}})
        try:
            _wait_until(lambda: sched.cancelled_count + sched.completed > 0, "the stream's end")
            # (the client never closes its connection: only the stall can cancel it)
            assert sched.cancelled_count == 1, "a stream nobody read ran to max_tokens in the batch"
            _wait_until(lambda: sched.engine.n_running == 0, "its rows leaving the batch")
            assert sched.completed == 0, "a cancelled job counted as completed in the server's status"
            # the client reads on: the text so far, then the error event and [DONE] (no silent truncation)
            data = b""
            while not data.endswith(b"0\r\n\r\n"):  # the chunked body's end
                got = s.recv(65536)
                if not got:
                    break
                data += got
        finally:
            s.close()
        assert b"HTTP/1.1 200" in data.split(b"\r\n", 1)[0]
        assert b"the stream was cancelled: its client read nothing for 0.5 s" in data
        assert data.rstrip(b"\r\n0").endswith(b"data: [DONE]")
    finally:
        srv.stop()
