"""The ASGI app: `create_app(stores, ...)` returns a FastAPI app serving pages, the JSON API and assets.

    from saesteer.web import create_app, ServeConfig
    app = create_app([entry], config=ServeConfig(port=8000))
    uvicorn.run(app, host="127.0.0.1", port=8000)

The OpenAI-compatible steering API (`saesteer.api`, under /v1) is part of the same app whenever
a store has a model (the steering playground calls it too); `pages=False` leaves out the HTML
pages and their assets (`saesteer api`).

Every request passes `SecurityMiddleware` (outermost, see `security.py`). Interactive API docs
(Swagger UI) are off: they load scripts from a CDN, which neither works offline nor fits the CSP;
the schema itself is at /openapi.json.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import saesteer
from saesteer.web.assets import STATIC_DIR, StaticAssets
from saesteer.web.config import Limits, ServeConfig, is_loopback
from saesteer.web.head import head_as_get
from saesteer.web.jobs import ModelQueue, QueueFull
from saesteer.web.security import (API_PREFIXES, OPENAI_PREFIX, SecurityMiddleware, error_json, new_token,
                                   openai_error_json)
from saesteer.web.sources import StoreEntry

if TYPE_CHECKING:
    from saesteer.api.config import BatchConfig

__all__ = ["create_app", "WebState", "allowed_host_names"]

log = logging.getLogger("saesteer.web")


class WebState:
    """What routes need: the stores by id, the limits, the config."""

    def __init__(self, stores: Sequence[StoreEntry], config: ServeConfig, limits: Limits, token: str | None) -> None:
        if not stores:
            raise ValueError("the web app needs at least one feature store; pass --store FILE")
        ids = [s.id for s in stores]
        if len(set(ids)) != len(ids):
            raise ValueError(f"store ids must be unique, got {ids}")
        self.stores: dict[str, StoreEntry] = {s.id: s for s in stores}
        self.config = config
        self.limits = limits
        self.token = token
        self.queues: list[ModelQueue] = []
        for s in stores:
            if s.queue is not None and all(q is not s.queue for q in self.queues):
                self.queues.append(s.queue)


class ServedHooks:
    """The TransformerLens opt-in hook points (hook_mlp_in, ...) that the served SAEs read or write,
    switched on for as long as the app serves, each model pinned meanwhile: requests share one model,
    so none may switch a flag (another forward path, other rounding, hook points that exclude each
    other) for the others (`saes.hookpoints.OptInPin`; two stores needing flags that exclude each other
    are refused). `hold` at start, `release` at shutdown: the models are then as they were."""

    def __init__(self, stores: Sequence[StoreEntry]) -> None:
        from saes.hookpoints import OptInPin, transcoder_target
        from steering.resolve import sae_hook_name

        by_model: dict[int, tuple[object, dict[str, list[str]]]] = {}
        for s in stores:
            model, sae = getattr(s.engine, "model", None), getattr(s.engine, "sae", None)
            if model is None or sae is None:
                continue
            hooks = [sae_hook_name(sae, s.id)] + ([transcoder_target(sae, f"transcoder of store {s.id!r}")]
                                                  if sae.is_transcoder else [])
            by_model.setdefault(id(model), (model, {}))[1][f"store {s.id!r}"] = hooks
        self.pins = [OptInPin(model, needs) for model, needs in by_model.values()]

    def hold(self) -> None:
        try:
            for pin in self.pins:
                pin.hold()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        for pin in reversed(self.pins):
            pin.release()


def pin_served_hooks(stores: Sequence[StoreEntry]) -> ServedHooks:
    """`ServedHooks` of `stores`, held (release them when the app stops)."""
    served = ServedHooks(stores)
    served.hold()
    return served


def allowed_host_names(config: ServeConfig) -> set[str]:
    """Host names the Host header may carry: loopback names, the bound address, --allowed-host
    names, and for a wildcard bind (0.0.0.0, ::) this machine's own names."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    host = config.host.strip().lower()
    wildcard = host in ("0.0.0.0", "::", "[::]")
    if not wildcard:
        names.add(f"[{host.strip('[]')}]" if ":" in host else host)
    else:
        for n in (socket.gethostname(), socket.getfqdn()):
            if n:
                names.add(n.lower().rstrip("."))
    names.update(config.allowed_hosts)
    return names


class _App(FastAPI):
    """FastAPI whose whole middleware stack (error pages included) sits behind the guard."""

    def build_middleware_stack(self):
        inner = super().build_middleware_stack()
        g = self.state.guard
        return _with_request_id(SecurityMiddleware(head_as_get(inner), **g))  # refusals carry the id too


def _with_request_id(app):
    """Every answer of the OpenAI-compatible API (/v1/) carries `x-request-id`, as OpenAI's do: the
    `openai` client shows it on errors (`APIStatusError.request_id`) and responses (`_request_id`),
    and the server log names it beside a failure."""

    async def asgi(scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await app(scope, receive, send)
            return
        rid = "req_" + secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), (b"x-request-id", rid.encode())])
            await send(message)

        await app(scope, receive, send_with_id)

    return asgi


def create_app(
    stores: Sequence[StoreEntry],
    *,
    config: ServeConfig | None = None,
    limits: Limits | None = None,
    token: str | None = None,
    extra_hosts: Iterable[str] = (),
    pages: bool = True,
    batch: "BatchConfig | None" = None,
) -> FastAPI:
    """The app over `stores`. A token is made when the config needs one and none is given
    (read it back from `app.state.web.token`). `config.port` is the port clients must name in
    Host (0 disables the port check: use it only when the real port is not known)."""
    config = config or ServeConfig()
    limits = limits or Limits()
    if token is None and config.needs_token:
        token = new_token()
    if token is not None and len(token) < 16:
        raise ValueError("the access token must be at least 16 characters; leave it unset to get a random one")
    state = WebState(stores, config, limits, token)
    # on from here, so that stores whose hook points exclude each other are refused before serving
    served = pin_served_hooks(stores)
    try:
        app = _build_app(state, served, extra_hosts, pages, batch)
    except BaseException:
        served.release()
        raise
    # an app dropped without ever being served gives its models back too
    weakref.finalize(app, served.release)
    return app


def _build_app(state: WebState, served: ServedHooks, extra_hosts: Iterable[str], pages: bool,
               batch: "BatchConfig | None") -> FastAPI:
    """`create_app`'s app once the stores' hook points are held (`served`)."""
    stores = list(state.stores.values())
    openai_service = None
    if any(s.engine is not None for s in stores):
        from saesteer.api.service import ApiService

        openai_service = ApiService(stores, batch)

    app = _App(
        lifespan=_lifespan(state, openai_service, served),
        title="saesteer",
        version=saesteer.__version__,
        description="Browse SAE features and steer generation by feature id. All list endpoints are paginated "
        "(offset/limit, with `total` and `next_offset`).",
        docs_url=None,
        redoc_url=None,
    )
    app.state.web = state
    app.state.openai = openai_service
    app.state.guard = dict(
        allowed_hosts=allowed_host_names(state.config) | {h.lower() for h in extra_hosts},
        port=state.config.port or None,
        token=state.token,
        max_body_bytes=state.limits.max_body_bytes,
    )

    _add_routes(app, pages)
    _add_error_handlers(app)
    return app


def _lifespan(state: WebState, openai_service, served: ServedHooks):
    """Start the OpenAI-compatible service's worker with the app; on shutdown close it and the
    steering queues, then give the models' opt-in hook points back. Each serve opens them again,
    so one app can be served twice (two uvicorn runs, two TestClient blocks)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        served.hold()
        try:
            for q in state.queues:
                q.open()
            if openai_service is not None:
                openai_service.start()
            yield
        finally:
            try:
                if openai_service is not None:
                    openai_service.close()
                for q in state.queues:
                    q.close()
            finally:
                served.release()

    return lifespan


def _add_routes(app: FastAPI, pages: bool) -> None:
    """The JSON API, the OpenAI-compatible API and (with `pages`) the HTML pages and their assets."""
    from saesteer.api import routes as openai_routes
    from saesteer.web import api
    from saesteer.web import pages as page_routes

    app.include_router(api.router)
    app.include_router(openai_routes.router)
    if pages:
        app.include_router(page_routes.router)
        assets = StaticAssets()
        app.state.assets = assets
        app.state.templates = page_routes.make_templates()
        app.add_api_route("/static/{name:path}", assets.endpoint, methods=["GET", "HEAD"], include_in_schema=False)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answered by `error_response`: a short message, never a traceback."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        msg = describe_validation_error(exc)
        return error_response(request, 422, msg)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        headers = getattr(exc, "headers", None)
        message, path = str(exc.detail), request.url.path
        if exc.status_code == 404 and message == "Not Found":
            if path.startswith(OPENAI_PREFIX):  # e.g. /v1/embeddings, /v1/responses: say what there is
                message = f"this server has no {path}; it serves {OPENAI_ENDPOINTS}"
            elif path.split("/")[1:2] in (["chat"], ["completions"], ["models"], ["embeddings"], ["responses"]):
                # an OpenAI client whose base_url lacks /v1: answer in its shape, saying so
                host = request.headers.get("host", "HOST:PORT")
                return JSONResponse(openai_error_json(404, f"the OpenAI-compatible API is under /v1: set the client's "
                                                           f"base_url to http://{host}/v1 (this server serves "
                                                           f"{OPENAI_ENDPOINTS})"), status_code=404, headers=headers)
        return error_response(request, exc.status_code, message, headers=headers)

    @app.exception_handler(QueueFull)
    async def _busy(request: Request, exc: QueueFull):
        return error_response(request, 503, str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        rid = request.scope.get("state", {}).get("request_id")
        log.exception("internal error on %s %s%s", request.method, request.url.path, f" ({rid})" if rid else "")
        return error_response(request, 500, "internal error; the server log has the details")


OPENAI_ENDPOINTS = "/v1/models, /v1/completions and /v1/chat/completions"


def describe_validation_error(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",)) or "request"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def wants_html(request: Request) -> bool:
    return not request.url.path.startswith(API_PREFIXES) and "text/html" in request.headers.get("accept", "")


def error_response(request: Request, status: int, message: str, headers=None) -> Response:
    if wants_html(request):
        from saesteer.web.pages import render_error

        return render_error(request, status, message, headers=headers)
    return JSONResponse(error_json(request.url.path, status, message), status_code=status, headers=headers)


def static_dir() -> Path:
    return STATIC_DIR


def is_local(config: ServeConfig) -> bool:
    return is_loopback(config.host)
