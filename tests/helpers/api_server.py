"""The steering API served for real (uvicorn on a loopback port) and the `openai` client that speaks to it.

    srv, app = serve_entries([make_entry(ws, "chat", limits=limits)], limits=limits)   # a free port
    client = openai_client(srv)                # sync; async_openai_client(srv) for asyncio tests
    ...
    srv.stop()

    with api_served(app, port) as (srv, client):   # an app already built for `port` (e.g. by
        ...                                        # `saesteer api --port 0` under record_server)

The clients never retry (max_retries=0): a test sees the server's first answer, unless it asks
for retries (`openai_client(srv, max_retries=3)`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from helpers.web_app import ServerThread, free_port

__all__ = ["serve_entries", "openai_client", "async_openai_client", "api_served"]


def serve_entries(entries: Sequence[Any], *, limits=None, config_kw: dict | None = None, guard: dict | None = None,
                  uvicorn_kw: dict | None = None, **app_kw) -> tuple[ServerThread, Any]:
    """`create_app(entries, ...)` served on a free loopback port (its Host check names that port);
    (the started server, the app). `config_kw` go to ServeConfig, `app_kw` to create_app, `guard`
    to the security middleware (`saesteer.web.security.SecurityMiddleware`: read when serving starts),
    `uvicorn_kw` to uvicorn.Config."""
    from saesteer.web import ServeConfig, create_app

    port = free_port()
    app = create_app(list(entries), config=ServeConfig(port=port, **(config_kw or {})), limits=limits, **app_kw)
    app.state.guard.update(guard or {})
    return ServerThread(app, port, **(uvicorn_kw or {})).start(), app


def _client_kw(srv, api_key: str, kw: dict) -> dict:
    url = srv if isinstance(srv, str) else srv.url
    return {"base_url": f"{url}/v1", "api_key": api_key, "max_retries": 0, "timeout": 120, **kw}


def openai_client(srv, *, api_key: str = "loopback", **kw):
    """The real `openai.OpenAI` client of the API at `srv` (a ServerThread or its URL)."""
    import openai

    return openai.OpenAI(**_client_kw(srv, api_key, kw))


def async_openai_client(srv, *, api_key: str = "loopback", **kw):
    """The real `openai.AsyncOpenAI` client of the API at `srv`."""
    import openai

    return openai.AsyncOpenAI(**_client_kw(srv, api_key, kw))


@contextlib.contextmanager
def api_served(app, port: int, **client_kw) -> Iterator[tuple[ServerThread, Any]]:
    """`app` (built for `port`) served while the block runs; (server, openai client)."""
    srv = ServerThread(app, port).start()
    try:
        yield srv, openai_client(srv, **client_kw)
    finally:
        srv.stop()
