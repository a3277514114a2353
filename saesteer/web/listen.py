"""Listen, then say so: the socket `saesteer serve` (and the demo) serve on, and uvicorn run on it.

    sock = listening_socket("127.0.0.1", 0)          # bound and listening now; port 0: a free one
    port = sock.getsockname()[1]                     # the app's Host check needs the real number
    run_server(app, sock, on_ready=lambda: print(f"serving on http://127.0.0.1:{port}/"))

The socket is bound before the app is built, so the port printed is the port served (no window in
which another process can take a port we picked), and it listens from then on: a client that
connects early waits in the backlog instead of being refused. `on_ready` runs once uvicorn has
started (the app's startup done, connections accepted), so a line printed there is true when a
client reads it. `run_server` blocks until the server is stopped (Ctrl-C, SIGTERM, SIGHUP): it
stops taking connections, lets the requests in flight finish, and the CLI then exits with 128 +
the signal's number (`saesteer.stopsignals`). A connection whose request headers have not all
arrived `HEADER_TIMEOUT_S` after it opened (or after its last answer) is closed, and so is one that
goes on sending more than `DISCARD_AFTER_ANSWER_BYTES` of a body already answered (a 413 sent
before the body was read) (`guarded_http_protocol`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from typing import Any, Callable

__all__ = ["listening_socket", "run_server", "guarded_http_protocol", "HEADER_TIMEOUT_S", "DISCARD_AFTER_ANSWER_BYTES"]

BACKLOG = 2048  # uvicorn's default
HEADER_TIMEOUT_S = 30.0  # a request's headers take milliseconds; an idle connection waits this long at most
# how much of a request body the server reads and discards after answering it (a 413 sent from the
# Content-Length, before the body came): past this, the connection is closed
DISCARD_AFTER_ANSWER_BYTES = 8 << 20


def guarded_http_protocol(timeout_s: float | None = None, discard_bytes: int | None = None):
    """uvicorn's HTTP protocol class, closing a connection whose next request's headers have not all
    arrived within `timeout_s` (default HEADER_TIMEOUT_S) of the connection opening or of its last
    answer. uvicorn waits for them forever, so a client opening connections and sending nothing, or
    its headers a byte now and then (slowloris), held a socket each until the server ran out of them.
    A request whose headers came is never cut, however long it runs.

    A body the app answered before reading it (the guard's 413 for a Content-Length over the limit)
    still arrives: uvicorn reads it on and discards it, so that the client, which sends its whole body
    before it reads the answer, finishes sending and reads the 413 (a close under a client still sending
    resets the connection, which may lose the answer: RFC 9112 9.6 asks servers to linger). That
    reading was unbounded: a client could send gigabytes after its 413. Past `discard_bytes` (default
    DISCARD_AFTER_ANSWER_BYTES) discarded, the connection is closed."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    limit = HEADER_TIMEOUT_S if timeout_s is None else float(timeout_s)
    discard_limit = DISCARD_AFTER_ANSWER_BYTES if discard_bytes is None else int(discard_bytes)

    class GuardedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _headers_timer: asyncio.TimerHandle | None = None
        _after_answer = 0  # bytes received since the last answer, while no next request has begun

        def data_received(self, data: bytes) -> None:
            answered = self.cycle if self.cycle is not None and self.cycle.response_complete else None
            super().data_received(data)
            if answered is None or self.cycle is not answered:
                self._after_answer = 0  # a new request has begun (its own body is the app's to bound)
                return
            # the answered request's body (or the next request's headers, a few KiB at most)
            self._after_answer += len(data)
            if self._after_answer > discard_limit and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._headers_due()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._after_answer = 0
            self._headers_due()

        def connection_lost(self, exc) -> None:
            super().connection_lost(exc)
            self._disarm()  # the timer held the closed connection (buffers, last request) until it ran

        def _disarm(self) -> None:
            if self._headers_timer is not None:
                self._headers_timer.cancel()
                self._headers_timer = None

        def _headers_due(self) -> None:
            last = self.cycle  # the request answered last (None: none yet); a new request replaces it

            def check() -> None:
                idle = self.cycle is last and (last is None or last.response_complete)
                if idle and not self.transport.is_closing():
                    self.transport.close()

            self._disarm()  # one timer per connection: the one for its latest answer
            self._headers_timer = self.loop.call_later(limit, check)

    return GuardedHTTPProtocol


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` (an IPv6 address may come in brackets; port 0: a free
    port) and listening. OSError when the address cannot be bound (e.g. the port is in use)."""
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: rebind after a restart
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def run_server(app: Any, sock: socket.socket, *, on_ready: Callable[[], None] = lambda: None, **uvicorn_kw: Any) -> None:
    """Serve `app` with uvicorn on `sock` (from `listening_socket`) until stopped; `on_ready()` runs
    once the server has started. `uvicorn_kw` go to `uvicorn.Config` (log_level, headers, ...)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                on_ready()

        @contextlib.contextmanager
        def capture_signals(self):
            """uvicorn's graceful shutdown for SIGINT and SIGTERM, and for SIGHUP (a closed terminal)
            too: uvicorn leaves that one to the CLI's handler, which would stop the event loop in
            the middle of requests (and print asyncio's traceback)."""
            hup = getattr(signal, "SIGHUP", None)
            if hup is None or threading.current_thread() is not threading.main_thread() \
                    or signal.getsignal(hup) is signal.SIG_IGN:
                with super().capture_signals():
                    yield
                return
            before = signal.signal(hup, self.handle_exit)
            try:
                # re-raises the captured signals once the server has stopped: SIGINT / SIGTERM reach the CLI's
                # handlers, SIGHUP only handle_exit again (a no-op), so it is raised again below
                with super().capture_signals():
                    yield
            finally:
                signal.signal(hup, before)
            if hup in self._captured_signals:
                signal.raise_signal(hup)  # as uvicorn does for the others: the CLI says how it stopped

    host, port = sock.getsockname()[:2]
    uvicorn_kw.setdefault("http", guarded_http_protocol())
    config = uvicorn.Config(app, host=host, port=port, backlog=BACKLOG, **uvicorn_kw)
    try:
        Server(config).run(sockets=[sock])
    finally:
        sock.close()
