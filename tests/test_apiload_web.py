"""The web app with many browser tabs open on it while the API generates and `saesteer label` writes
into the store it shows.

The app runs in uvicorn on a loopback port (helpers.api_server) over a copy of the shared web
store (helpers.web_app), so that a real `saesteer label` run may write into it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import threading

import httpx
import pytest

openai = pytest.importorskip("openai")

from helpers.api_server import openai_client, serve_entries  # noqa: E402
from helpers.web_app import make_entry, shared_store  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]


@pytest.fixture
def served(tmp_path):
    """(server, app, the store's path) over a private copy of the shared store."""
    from saesteer.web import Limits

    ws = shared_store()
    path = tmp_path / "tiny.db"
    shutil.copy(ws.path, path)
    limits = Limits(max_new_tokens=8)
    srv, app = serve_entries([make_entry(dataclasses.replace(ws, path=path), "tiny", limits=limits)], limits=limits)
    yield srv, app, path
    srv.stop()


class _SignallingLock:
    """The store's lock, saying when a reader first waits for it."""

    def __init__(self, lock) -> None:
        self.lock, self.waited = lock, threading.Event()

    def __enter__(self):
        self.waited.set()
        return self.lock.__enter__()

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)


def test_a_tab_waiting_on_the_store_does_not_stop_the_api_generating(served):
    """The store's pages and JSON were read on the server's event loop: a read that waits (on the
    store's lock, on SQLite's busy timeout while another process writes it, on a big store's sort)
    stopped every other request: streams, the API's generations, the other tabs. They are read in
    worker threads now: with one tab's read held, a generation through the API is still served."""
    srv, app, _ = served
    store = app.state.web.stores["tiny"].catalog.store
    held = _SignallingLock(store._lock)
    answers: list = []
    with store._lock:
        store._lock = held
        try:
            tab = threading.Thread(target=lambda: answers.append(
                httpx.get(f"{srv.url}/api/stores/tiny/features?limit=5", timeout=60)))
            tab.start()
            assert held.waited.wait(30), "the tab's request never reached the store"
            client = openai_client(srv, timeout=20)
            out = client.completions.create(model="tiny", prompt="the sea", max_tokens=2, temperature=0,
                                            extra_body={"ignore_eos": True})
            assert out.usage.completion_tokens == 2
            page = httpx.get(f"{srv.url}/static/app.js", timeout=20)  # another tab's asset: not the store's either
            assert page.status_code in (200, 404)
        finally:
            store._lock = held.lock
    tab.join(60)
    assert answers and answers[0].status_code == 200 and answers[0].json()["items"]


def test_tabs_polling_while_label_writes_see_only_whole_answers_and_then_the_new_labels(served):
    """Eight tabs poll the store list, the status, a label-filtered list, a search and the pages while
    `saesteer label` (offline judge) relabels every latent of the store in another process: every
    answer is whole (200, valid JSON or a page), and a page loaded after the run shows its labels."""
    srv, _, path = served
    errors: list = []
    stop = threading.Event()
    polled = [0]

    def tab() -> None:
        with httpx.Client(base_url=srv.url, timeout=60) as h:
            while not stop.is_set():
                for url in ("/api/stores", "/api/status", "/api/stores/tiny/features?labelled=true&limit=50",
                            "/api/stores/tiny/search?q=sea", "/s/tiny", "/s/tiny/f/3"):
                    r = h.get(url)
                    if r.status_code != 200 or (url.startswith("/api/") and r.json() is None):
                        errors.append((url, r.status_code, r.text[:200]))
                    polled[0] += 1

    tabs = [threading.Thread(target=tab) for _ in range(8)]
    for t in tabs:
        t.start()
    try:
        run = subprocess.run([sys.executable, "-m", "saesteer", "label", "--store", str(path), "--overwrite", "true",
                              "--embed-backend", "none", "--no-progress"], capture_output=True, text=True,
                             timeout=300, env=dict(os.environ))
    finally:
        stop.set()
        for t in tabs:
            t.join(60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not errors, errors[:5]
    assert polled[0] >= 8
    detail = httpx.get(f"{srv.url}/api/stores/tiny/features/3", timeout=30).json()
    assert detail["label"]["judge_kind"] == "offline", detail["label"]  # the shared store's were 'human'


def test_tabs_searching_at_once_on_a_fresh_server_load_the_query_embedder_once(served, monkeypatch):
    """Searches now run in worker threads: two tabs searching before the store's query embedder (a
    sentence-embedding model, hundreds of MB) was looked for would each load it. The second waits
    for the first's instead."""
    import autointerp.semantic

    srv, app, _ = served
    catalog = app.state.web.stores["tiny"].catalog
    loads, loading, go_on = [], threading.Event(), threading.Event()

    def slow_store_embedder(store):
        loads.append(store)
        loading.set()
        assert go_on.wait(60)
        return None  # no vectors: full-text search

    monkeypatch.setattr(autointerp.semantic, "store_embedder", slow_store_embedder)
    waiting = _SignallingLock(getattr(catalog, "_embedder_lock", threading.Lock()))
    catalog._embedder_lock = waiting
    answers: list = []

    def search() -> None:
        answers.append(httpx.get(f"{srv.url}/api/stores/tiny/search?q=sea", timeout=60))

    first = threading.Thread(target=search)
    first.start()
    assert loading.wait(30), "the first search never looked for the embedder"
    waiting.waited.clear()  # the first search took the lock: from here, a wait is the second's
    second = threading.Thread(target=search)
    second.start()
    try:
        assert waiting.waited.wait(30), "the second search did not wait for the first's embedder"
    finally:
        go_on.set()
        first.join(60)
        second.join(60)
    assert len(loads) == 1 and [r.status_code for r in answers] == [200, 200]
