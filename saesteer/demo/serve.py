"""`serve_demo`: the web app over the demo's feature store (browse + steer)."""

from __future__ import annotations

import os
from typing import Any

from saesteer.demo.config import AUTO
from saesteer.demo.console import make_console
from saesteer.demo.results import DemoResult


def serve_demo(result: DemoResult, *, host: str = "127.0.0.1", port: int = 8000, console: Any = None,
               model: Any = None) -> None:
    """Serve the demo's feature store (browse + steer) with `saesteer serve`'s machinery; blocks
    until interrupted. A busy `port` is replaced by a free one."""
    from saesteer.web import create_app
    from saesteer.web.config import Limits, ServeConfig
    from saesteer.web.launch import open_entries
    from saesteer.web.listen import listening_socket, run_server

    con = console or make_console()
    model = model if model is not None else result.model
    if model is None:
        from saesteer.models import load_model

        model = load_model("toy", device="cpu")
    model.eval()
    limits = Limits()
    entries = open_entries([result.paths.store], model=model, sae_dirs=[result.sae_dir], limits=limits)
    try:
        sock = listening_socket(host, port)
    except OSError:
        if not port:
            raise
        con.print(f"port {port} is busy; using a free one")
        sock = listening_socket(host, 0)
    config = ServeConfig(host=host, port=int(sock.getsockname()[1]))
    try:
        app = create_app(entries, config=config, limits=limits, token=os.environ.get("SAESTEER_TOKEN") or None)
    except BaseException:
        sock.close()
        raise
    token = app.state.web.token
    base = f"http://{host}:{config.port}"
    url = f"{base}/" + (f"?token={token}" if token else "")
    con.rule("[bold]web app", align="left")
    s = result.steering
    sid = entries[0].id
    query = s.topic if s is not None else ("ocean" if result.config.steer_topic == AUTO else result.config.steer_topic)

    def ready() -> None:  # once uvicorn accepts connections (saesteer.web.listen)
        con.print(f"[bold green]saesteer serving on {url}[/]  (Ctrl-C stops it)")
        con.print(f"  features: {base}/s/{sid}   search: {base}/s/{sid}/search?q={query}"
                  + (f"   steering playground: {base}/s/{sid}/steer?latent={s.latent}" if s else ""))

    run_server(app, sock, on_ready=ready, log_level="warning", proxy_headers=False, server_header=False,
               date_header=False)

