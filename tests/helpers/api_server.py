"""The steering API served for real (uvicorn on a loopback port) and the `openai` client that speaks to it.

    srv, app = serve_entries([make_entry(ws, "chat", limits=limits)], limits=limits)   # a free port
    client = openai_client(srv)                # sync; async_openai_client(srv) for asyncio tests
    ...
    srv.stop()

    with api_served(app, port) as (srv, client):   # an app already built for `port` (e.g. by
        ...                                        # `saesteer api --port 0` under record_server)

    ws = build_chat_store(tmp_path)            # the small chat store the API tests serve, as model "chat"
    srv, app = serve_chat(ws, batch=...)       # it served (create_app's keywords)

The clients never retry (max_retries=0): a test sees the server's first answer, unless it asks
for retries (`openai_client(srv, max_retries=3)`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from helpers.web_app import ServerThread, free_port

__all__ = ["serve_entries", "openai_client", "async_openai_client", "api_served", "build_chat_store", "serve_chat"]


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


def small_send_buffer_protocol():
    """`saesteer serve`'s protocol with a 16 KiB send buffer on each connection and 8 KiB of output
    buffered before a send waits: the machine's TCP autotuning (up to 4 MiB or more) would otherwise
    decide how much output a stalled stream takes, and a client with a small receive window (as the
    stall tests' are) reads the rest slowly, a window per TCP persist timer."""
    import socket

    from saesteer.web.listen import guarded_http_protocol

    class SmallSendBuffer(guarded_http_protocol()):
        def connection_made(self, transport) -> None:
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            transport.set_write_buffer_limits(high=8192)
            super().connection_made(transport)

    return SmallSendBuffer


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


def build_chat_store(folder):
    """The small real store the API tests serve: two layers, the SAE on the first (an edit on a prompt
    token reaches later tokens through the second layer's attention; with one layer only the edited
    position's own logits would change), a tokenizer with a chat template (the word-level toy tokenizers
    have none). Its model knows who it is, as `saesteer.models.load_model` makes it (presets check it)."""
    from helpers.tiny_model import make_chat_tokenizer
    from helpers.web_store import build_web_store
    from saesteer.models import model_identity

    ws = build_web_store(folder, tokenizer=make_chat_tokenizer(), name="chat", n_layers=2)
    model_identity(ws.model)
    return ws


def serve_chat(ws, *, limits=None, **kw) -> tuple[ServerThread, Any]:
    """`build_chat_store`'s store served as model "chat" (`serve_entries`; `limits` default: 48 new
    tokens at most); (the started server, the app)."""
    from helpers.web_app import make_entry
    from saesteer.web import Limits

    limits = limits or Limits(max_new_tokens=48)
    return serve_entries([make_entry(ws, "chat", limits=limits)], limits=limits, **kw)


def assert_steering_changes_the_completion(client, prompt: str, latent: int) -> None:
    """Through the served model (the only one): `latent:add=8x` is applied, named back, and changes the
    greedy completion of `prompt`."""
    served, = [m.id for m in client.models.list().data]
    out = client.completions.create(model=served, prompt=prompt, max_tokens=6, temperature=0,
                                    extra_body={"steering": {"edits": [f"{latent}:add=8x"]}})
    plain = client.completions.create(model=served, prompt=prompt, max_tokens=6, temperature=0)
    edit, = out.model_extra["steering"]["edits"]
    assert edit.startswith(f"{latent}:add=") and out.choices[0].text != plain.choices[0].text
