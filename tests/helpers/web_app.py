"""The web app over a real small feature store, shared by the web tests of one pytest process.

    from helpers.web_app import shared_store, make_app, client
    ws = shared_store()                       # built once per process (cached), see web_store.py
    app = make_app()                          # fresh app (fresh queue) over that store
    c = client(app)                           # TestClient speaking to it as http://127.0.0.1:8000

`serve_in_thread(app)` runs uvicorn on a free loopback port in a daemon thread (browser tests).
`record_server(monkeypatch)` stops `saesteer serve` / `demo` where they would start uvicorn: it
records (app, {"host", "port", uvicorn options}), frees the port and says the server is ready.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from helpers.web_store import WebStore, build_web_store

PORT = 8000
BASE = f"http://127.0.0.1:{PORT}"


@functools.lru_cache(maxsize=None)
def shared_store() -> WebStore:
    d = Path(tempfile.mkdtemp(prefix="saesteer-web-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return build_web_store(d)


def make_entry(ws: WebStore, sid: str = "tiny", *, limits=None, with_model: bool = True, queue=None,
               name: str | None = None, model=None):
    """The shared store served as `sid` (shown as `name`, default `sid`), over the shared model or `model`."""
    from features import FeatureStore
    from saesteer.web import Limits, ModelQueue, StoreEntry
    from saesteer.web.model_source import ModelEngine
    from saesteer.web.store_source import StoreCatalog

    limits = limits or Limits()
    cat = StoreCatalog(FeatureStore.open(ws.path), name=name or sid)
    if not with_model:
        return StoreEntry(sid, cat)
    eng = ModelEngine(ws.model if model is None else model, ws.sae, cat, limits)
    return StoreEntry(sid, cat, eng, queue or ModelQueue("tiny-test-model" if model is None else f"{sid}-model",
                                                         limits.max_pending))


def make_app(*, limits=None, config=None, token=None, second_store: bool = False):
    """The app over the shared store ('tiny'); with second_store, also 'nomodel' (same file, no model)."""
    from saesteer.web import Limits, ServeConfig, create_app

    ws = shared_store()
    limits = limits or Limits()
    entries = [make_entry(ws, "tiny", limits=limits)]
    if second_store:
        entries.append(make_entry(ws, "nomodel", limits=limits, with_model=False))
    return create_app(entries, config=config or ServeConfig(port=PORT), limits=limits, token=token)


def client(app, base_url: str = BASE, **kw):
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=base_url, raise_server_exceptions=False, **kw)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1:port in a daemon thread; `stop()` shuts it down.
    `uvicorn_kw` go to uvicorn.Config (e.g. http=saesteer.web.listen.guarded_http_protocol(...))."""

    def __init__(self, app, port: int, **uvicorn_kw) -> None:
        import uvicorn

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="on", **uvicorn_kw))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def record_server(monkeypatch) -> list:
    """Replace `saesteer.web.listen.run_server` by a recorder (see the module docstring)."""
    import saesteer.web.listen as listen

    calls: list = []

    def fake_run_server(app, sock, *, on_ready=lambda: None, **kw):
        host, port = sock.getsockname()[:2]
        sock.close()
        calls.append((app, {"host": host, "port": port, **kw}))
        on_ready()

    monkeypatch.setattr(listen, "run_server", fake_run_server)
    return calls
