"""HEAD as real clients send it (link checkers, chat apps unfurling a pasted link, `curl -I`):
answered as GET without the body, and never running the model for an answer nobody reads.

The app runs in uvicorn on a loopback port (helpers.api_server) over the shared web store and
its model (helpers.web_app).
"""

from __future__ import annotations

import httpx
import pytest

from helpers.api_server import serve_entries
from helpers.web_app import make_entry, shared_store

pytestmark = [pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def server():
    srv, app = serve_entries([make_entry(shared_store(), "tiny")])
    yield srv, app
    srv.stop()


def test_head_of_a_fire_page_address_does_not_run_the_model(server):
    """/s/<store>/fire?text=... runs the model on the text when opened (GET). A HEAD of the same
    address, which a link checker or a chat app unfurling the pasted link sends before (or instead
    of) a GET, ran it too, for an answer without a body; the POST-only model endpoints stay 405."""
    srv, app = server
    queue = app.state.web.queues[0]
    url = "/s/tiny/fire?text=the+sea+and+the+whale"
    with httpx.Client(base_url=srv.url, timeout=60) as h:
        before = queue.completed
        head = h.head(url)
        assert head.status_code == 200 and head.content == b"", head.status_code
        assert head.headers["content-type"].startswith("text/html")
        for path in ("/api/stores/tiny/fire", "/api/stores/tiny/steer", "/v1/completions", "/v1/chat/completions"):
            assert h.head(path).status_code == 405, path
        assert queue.completed == before, "a HEAD ran the model"
        got = h.get(url)  # the address opened in a tab runs it, as ever
        assert got.status_code == 200 and "the sea and the whale" in got.text
        assert queue.completed == before + 1
