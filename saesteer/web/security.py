"""The web app's guard: one ASGI middleware in front of every request.

In order, for each HTTP request:

1. Host: the `Host` header must name this server (the bound address, loopback names, or names
   given with `--allowed-host`) and its port. This defeats DNS rebinding, where a hostile page
   makes its own domain resolve to 127.0.0.1 and then talks to us as "same origin".
2. Origin: a request carrying an `Origin` header must come from this very origin (scheme, host
   and port); a state-changing request (anything but GET/HEAD/OPTIONS) without `Origin` is
   refused if `Sec-Fetch-Site` says it is cross-site. Non-browser clients send neither and pass.
3. Token (when configured: always for a non-loopback bind): `Authorization: Bearer <token>`, the
   cookie set after a first visit with `?token=<token>`, or that query parameter itself; compared
   in constant time (`hmac.compare_digest`).
4. Body: at most `max_body_bytes` (read and counted here before the app sees it), arriving within
   `body_timeout_s` (a client trickling its body, byte by byte, holds a connection no longer); POSTs to the
   APIs (/api/, and the OpenAI-compatible /v1/) must be `application/json` (a cross-site
   HTML form cannot send that without a CORS preflight, which we never answer).
5. Response headers: a strict Content-Security-Policy (see `CSP`), no sniffing, no framing,
   no referrer, and `Cache-Control: no-store` on the API.

Websocket connections are refused (the app has none).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from typing import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["CSP", "SecurityMiddleware", "new_token", "EMPTY_STYLE_HASH", "token_cookie_name", "API_PREFIXES"]

# how long a request's body may take to arrive, all of it (a 64 KiB body takes milliseconds)
BODY_TIMEOUT_S = 30.0

# JSON APIs: the app's own (/api/) and the OpenAI-compatible one (/v1/, `saesteer.api`)
API_PREFIXES = ("/api/", "/v1/")

# plotly.js adds its own CSS at run time by appending an *empty* <style> element and filling it
# through the CSSOM (sheet.insertRule), which CSP does not govern. Only creating the empty element
# needs an allowance: the hash of the empty string. It admits no CSS text at all (an inline
# <style> with any content has another hash), so it is far narrower than 'unsafe-inline'.
EMPTY_STYLE_HASH = "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",  # no inline scripts, no eval
        f"style-src 'self' {EMPTY_STYLE_HASH}",
        "img-src 'self' data:",  # data: for plotly's "download as PNG" button
        "font-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    ]
)

_SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), interest-cohort=()"),
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def new_token() -> str:
    """A fresh random access token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def token_cookie_name(port: int | None) -> str:
    # Cookies are shared across ports of one host; the port in the name keeps two servers apart.
    return f"saesteer_token_{port}" if port else "saesteer_token"


def ascii_digits(s: str) -> bool:
    """Whether s is a non-empty run of 0-9 (str.isdigit also accepts '¹' and other digits int() refuses)."""
    return s.isascii() and s.isdigit()


def _split_host(value: str) -> tuple[str, int | None] | None:
    """'name:port' / '[v6]:port' / 'name' -> (lower-case name, port or None); None if malformed."""
    v = value.strip().lower()
    if not v or any(c.isspace() or c in "/\\@?#" for c in v):
        return None
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            return None
        name, rest = v[: end + 1], v[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_s = rest[1:] if rest else None
    else:
        name, sep, port_s = v.partition(":")
        if not sep:
            port_s = None
        if ":" in (port_s or ""):
            return None
    name = name.rstrip(".")
    if not name:
        return None
    if port_s is None:
        return name, None
    if not ascii_digits(port_s) or len(port_s) > 5:
        return None
    return name, int(port_s)


class SecurityMiddleware:
    """See the module docstring. `allowed_hosts`: host names accepted in `Host` (lower case, IPv6
    in brackets); `port`: the port clients must name (None accepts any, e.g. in-process tests);
    `token`: required on every request when not None."""

    def __init__(
        self,
        app,
        *,
        allowed_hosts: Iterable[str],
        port: int | None,
        token: str | None,
        max_body_bytes: int,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.body_timeout_s = float(body_timeout_s)
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.port = port
        self.token = token
        self.max_body_bytes = int(max_body_bytes)
        self.cookie = token_cookie_name(port)

    # -- checks -------------------------------------------------------------------------------

    def _host_ok(self, host: str | None, scheme: str) -> bool:
        if host is None:
            return False
        parsed = _split_host(host)
        if parsed is None:
            return False
        name, port = parsed
        if name not in self.allowed_hosts:
            return False
        if self.port is not None:
            default = 443 if scheme == "https" else 80
            if (port if port is not None else default) != self.port:
                return False
        return True

    @staticmethod
    def _origin_ok(origin: str, host: str, scheme: str) -> bool:
        if origin == "null":
            return False
        try:
            u = urlsplit(origin)
        except ValueError:
            return False
        if u.scheme not in ("http", "https") or u.scheme != scheme or u.path or u.query or u.fragment:
            return False
        o = _split_host(u.netloc)
        h = _split_host(host)
        if o is None or h is None:
            return False
        default = 443 if scheme == "https" else 80
        return o[0] == h[0] and (o[1] or default) == (h[1] or default)

    def _token_from(self, headers: dict[str, str], query: list[tuple[str, str]]) -> tuple[str | None, bool]:
        """(presented token, came from the query string)."""
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip(), False
        for k, v in query:
            if k == "token":
                return v, True
        for part in headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == self.cookie:
                return v, False
        return None, False

    def _token_ok(self, presented: str | None) -> bool:
        assert self.token is not None
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), self.token.encode())

    # -- ASGI ---------------------------------------------------------------------------------

    def _origin_refusal(self, headers: dict[str, str], host: str | None, scheme: str,
                        method: str) -> tuple[int, str] | None:
        """Steps 1 and 2: (status, message) when Host, Origin or Sec-Fetch-Site refuses the request."""
        if not self._host_ok(host, scheme):
            return 400, "unrecognised Host header; open the app by the address it prints at start-up"
        origin = headers.get("origin")
        if origin is not None and not self._origin_ok(origin, host, scheme):
            return 403, "cross-origin request refused"
        if origin is None and method not in SAFE_METHODS:
            if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                return 403, "cross-site request refused"
        return None

    async def _authenticate(self, scope, send, headers: dict[str, str], scheme: str, method: str,
                            path: str) -> tuple[bool, bytes | None]:
        """Step 3: (answered, the token cookie to set). `answered` when a refusal or a redirect
        that drops the token from the address was sent; the request goes no further."""
        if self.token is None:
            return False, None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        presented, from_query = self._token_from(headers, query)
        if not self._token_ok(presented):
            await _deny(scope, send, 401, "a valid access token is required: open the URL with ?token=... printed at start-up, or send 'Authorization: Bearer <token>'")
            return True, None
        if not from_query:
            return False, None
        cookie = f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        if scheme == "https":
            cookie += "; Secure"
        set_cookie = cookie.encode()
        if method in ("GET", "HEAD") and not path.startswith(API_PREFIXES):
            # Drop the token from the address bar (and so from history) once it is a cookie.
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            raw = scope.get("raw_path") or path.encode()
            target = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
            if not target.startswith("/") or target.startswith(("//", "/\\")):
                target = "/"  # never an off-site (protocol-relative) redirect
            await _redirect(send, target + (f"?{rest}" if rest else ""), set_cookie)
            return True, set_cookie
        return False, set_cookie

    def _body_refusal(self, headers: dict[str, str], method: str, path: str) -> tuple[int, str] | None:
        """Step 4, from the headers: (status, message) for a non-JSON API body or a bad or too
        large Content-Length."""
        if method not in SAFE_METHODS and path.startswith(API_PREFIXES):
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
            if ctype != "application/json" and (ctype or has_body):
                return 415, "send the request body as JSON with 'Content-Type: application/json'"
        clen = headers.get("content-length")
        if clen is not None:
            if not ascii_digits(clen):
                return 400, "malformed Content-Length"
            if int(clen) > self.max_body_bytes:
                return 413, f"request body too large (limit {self.max_body_bytes} bytes)"
        return None

    async def _buffered_receive(self, scope, receive, send):
        """Step 4, the body itself: read it (small, bounded) before the app sees it, refusing it
        once it is too big; returns a `receive` that replays it, or None when the request was
        answered or the client went away."""
        chunks: list[bytes] = []
        seen = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                await _deny(scope, send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s")
                return None
            if message["type"] != "http.request":
                return None  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body_bytes:
                await _deny(scope, send, 413, f"request body too large (limit {self.max_body_bytes} bytes)")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def app_receive():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return app_receive

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        headers, repeated = _collect_headers(scope)
        if repeated is not None:
            await _deny(scope, send, 400, f"repeated {repeated} header")
            return
        scheme = scope.get("scheme", "http")
        method = scope.get("method", "GET").upper()
        path = scope.get("path", "")
        refusal = self._origin_refusal(headers, headers.get("host"), scheme, method)
        if refusal is not None:
            await _deny(scope, send, *refusal)
            return
        answered, set_cookie = await self._authenticate(scope, send, headers, scheme, method, path)
        if answered:
            return
        refusal = self._body_refusal(headers, method, path)
        if refusal is not None:
            await _deny(scope, send, *refusal)
            return

        is_api = path.startswith(API_PREFIXES) or path == "/openapi.json"
        app_receive = receive
        if headers.get("content-length") not in (None, "0") or "transfer-encoding" in headers:
            app_receive = await self._buffered_receive(scope, receive, send)
            if app_receive is None:
                return
        await self.app(scope, app_receive, _guarded_send(send, is_api, set_cookie))


def _collect_headers(scope) -> tuple[dict[str, str], str | None]:
    """(lower-cased name -> value, repeats joined; the first repeated header that must appear at
    most once, else None)."""
    headers: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        key = k.decode("latin-1").lower()
        val = v.decode("latin-1")
        if key in headers:  # a repeated Host/Origin/Authorization is never legitimate
            if key in ("host", "origin", "authorization", "content-type", "content-length"):
                return headers, key
            headers[key] = headers[key] + ("; " if key == "cookie" else ", ") + val
        else:
            headers[key] = val
    return headers, None


def _guarded_send(send, is_api: bool, set_cookie: bytes | None):
    """Step 5: `send` with our security headers (and the token cookie) on the response start."""

    async def guarded_send(message):
        if message["type"] == "http.response.start":
            hdrs = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OWN_HEADER_NAMES]
            hdrs.extend(_SECURITY_HEADERS)
            if is_api:
                hdrs.append((b"cache-control", b"no-store"))
            if set_cookie is not None:
                hdrs.append((b"set-cookie", set_cookie))
            message = dict(message, headers=hdrs)
        await send(message)

    return guarded_send


_OWN_HEADER_NAMES = frozenset(k for k, _ in _SECURITY_HEADERS)


OPENAI_PREFIX = "/v1/"


def openai_error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status: its API answers every refusal (400, 401, 404, 413,
    ...) with `invalid_request_error` and its own failures (500, 503) with `server_error`."""
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error_json(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error body (its clients read `error.message`, `.code`); a 401 has OpenAI's code for
    a missing or wrong key, which some clients test."""
    if code is None and status == 401:
        code = "invalid_api_key"
    return {"error": {"message": message, "type": openai_error_type(status), "param": param, "code": code}}


def error_json(path: str, status: int, message: str) -> dict:
    """An error's JSON body: OpenAI's shape under /v1, `{"detail": message}` elsewhere."""
    is_openai = path.startswith(OPENAI_PREFIX) or path == OPENAI_PREFIX.rstrip("/")
    return openai_error_json(status, message) if is_openai else {"detail": message}


async def _deny(scope, send, status: int, message: str) -> None:
    """A short refusal: JSON for the API (and non-HTML clients), a tiny HTML page otherwise."""
    path = scope.get("path", "")
    accept = ""
    for k, v in scope.get("headers", []):
        if k.lower() == b"accept":
            accept = v.decode("latin-1")
    if path.startswith(API_PREFIXES) or "text/html" not in accept:
        body = json.dumps(error_json(path, status, message)).encode()
        ctype = b"application/json"
    else:
        import html

        body = (
            "<!doctype html><meta charset=utf-8><title>saesteer: refused</title>"
            f"<p>{html.escape(message)}</p>"
        ).encode()
        ctype = b"text/html; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())] + _SECURITY_HEADERS,
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect(send, location: str, set_cookie: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode("latin-1", "replace") or b"/"),
                (b"set-cookie", set_cookie),
                (b"content-length", b"0"),
            ]
            + _SECURITY_HEADERS,
        }
    )
    await send({"type": "http.response.body", "body": b""})
