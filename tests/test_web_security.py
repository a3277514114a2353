"""The web app's guard: Host (DNS rebinding), Origin (cross-site), token (remote), CSP and bounds."""

from __future__ import annotations

import pytest

from helpers.web_app import BASE, client, make_app
from saesteer.web import Limits, ServeConfig
from saesteer.web.app import allowed_host_names
from saesteer.web.config import is_loopback
from saesteer.web.security import CSP, _split_host

STEER = {"prompt": "the", "max_new_tokens": 2, "edits": [{"latent": 1, "op": "add", "value": 1}]}


@pytest.fixture(scope="module")
def c():
    with client(make_app()) as cl:
        yield cl


# -- configuration ------------------------------------------------------------------------------------


def test_binding_beyond_loopback_needs_the_flag():
    with pytest.raises(ValueError, match="--allow-remote"):
        ServeConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="--allow-remote"):
        ServeConfig(host="192.168.1.5")
    assert ServeConfig(host="0.0.0.0", allow_remote=True).needs_token
    assert not ServeConfig(host="127.0.0.1").needs_token
    assert ServeConfig(host="localhost").host == "localhost"
    assert ServeConfig(require_token=True).needs_token
    for bad in ({"port": 70000}, {"port": -1}, {"host": ""}, {"host": "a b"}):
        with pytest.raises(ValueError):
            ServeConfig(**bad)


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.1") and is_loopback("::1") and is_loopback("[::1]")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.com")


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_new_tokens"):
        Limits(max_new_tokens=0)
    with pytest.raises(ValueError, match="ceiling"):
        Limits(max_page_size=10**6)
    with pytest.raises(ValueError, match="finite"):
        Limits(max_abs_strength=float("nan"))


def test_remote_app_gets_a_token_automatically():
    app = make_app(config=ServeConfig(host="0.0.0.0", allow_remote=True, port=8000))
    assert app.state.web.token and len(app.state.web.token) >= 32
    with pytest.raises(ValueError, match="16 characters"):
        make_app(token="short")


def test_split_host():
    assert _split_host("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert _split_host("LocalHost") == ("localhost", None)
    assert _split_host("[::1]:80") == ("[::1]", 80)
    assert _split_host("example.com.:8000") == ("example.com", 8000)
    for bad in ("", "a b", "host:port", "host:80:90", "[::1", "user@host", "a/b", "h:123456", "h:\u00b9", "h:\u0663"):
        assert _split_host(bad) is None, bad


def test_allowed_host_names():
    names = allowed_host_names(ServeConfig(port=8000))
    assert names == {"127.0.0.1", "localhost", "[::1]"}
    names = allowed_host_names(ServeConfig(host="10.1.2.3", allow_remote=True, allowed_hosts=("Box.Lan",)))
    assert {"10.1.2.3", "box.lan", "localhost"} <= names


# -- Host: DNS rebinding -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example:8000", "127.0.0.1:8001", "127.0.0.1", "localhost.evil.com:8000", "", "a b"])
def test_foreign_host_header_is_refused(c, host):
    r = c.get("/api/status", headers={"host": host})
    assert r.status_code == 400 and "Host" in r.json()["detail"]
    r = c.get("/s/tiny", headers={"host": host, "accept": "text/html"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST:8000", "[::1]:8000"])
def test_own_host_names_pass(c, host):
    assert c.get("/api/status", headers={"host": host}).status_code == 200


# -- Origin: cross-site requests ------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:8001", "https://127.0.0.1:8000", "null",
                                    "http://127.0.0.1:8000/path", "file://", "http://localhost.evil:8000"])
def test_cross_origin_requests_are_refused(c, origin):
    r = c.post("/api/stores/tiny/steer", json=STEER, headers={"origin": origin})
    assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
    assert c.get("/api/stores", headers={"origin": origin}).status_code == 403


def test_same_origin_and_originless_posts_pass(c):
    assert c.post("/api/stores/tiny/steer", json=STEER, headers={"origin": BASE}).status_code == 200
    assert c.post("/api/stores/tiny/steer", json=STEER, headers={"origin": "http://localhost:8000", "host": "localhost:8000"}).status_code == 200
    assert c.post("/api/stores/tiny/steer", json=STEER).status_code == 200  # curl, scripts


def test_cross_site_fetch_metadata_is_refused(c):
    r = c.post("/api/stores/tiny/steer", json=STEER, headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 403
    assert c.post("/api/stores/tiny/steer", json=STEER, headers={"sec-fetch-site": "same-origin"}).status_code == 200


def test_form_posts_are_refused(c):
    r = c.post("/api/stores/tiny/steer", data={"prompt": "x"})  # application/x-www-form-urlencoded
    assert r.status_code == 415
    r = c.post("/api/stores/tiny/steer", content=b'{"prompt":"x"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_repeated_host_header_is_refused(c):
    r = c.get("/api/status", headers=[("host", "127.0.0.1:8000"), ("host", "evil.example")])
    assert r.status_code == 400


# -- token ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote():
    token = "t0k3n-" + "x" * 40
    app = make_app(config=ServeConfig(host="0.0.0.0", allow_remote=True, port=8000), token=token)
    with client(app) as cl:
        yield cl, token


def test_remote_requires_token_on_every_route(remote):
    c, token = remote
    c.cookies.clear()
    for url in ("/api/status", "/api/stores/tiny/features", "/s/tiny", "/static/app.css", "/openapi.json", "/"):
        r = c.get(url)
        assert r.status_code == 401, url
        assert "token" in r.text
    assert c.post("/api/stores/tiny/steer", json=STEER).status_code == 401
    assert c.get("/api/status", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/status", headers={"authorization": "Bearer " + token[:-1]}).status_code == 401
    assert c.get("/api/status", headers={"authorization": "Bearer " + token + "x"}).status_code == 401
    assert c.get("/api/status", params={"token": ""}).status_code == 401


def test_remote_accepts_bearer_cookie_and_query_token(remote):
    c, token = remote
    c.cookies.clear()
    assert c.get("/api/status", headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert c.post("/api/stores/tiny/steer", json=STEER, headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert c.get("/api/status", params={"token": token}).status_code == 200
    # a page opened with ?token= sets an HttpOnly SameSite cookie and drops the token from the URL
    r = c.get("/s/tiny", params={"token": token, "sort": "label"}, headers={"accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/s/tiny?sort=label"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("saesteer_token_8000=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    c.cookies.clear()
    r = c.get("/s/tiny", headers={"accept": "text/html", "cookie": f"saesteer_token_8000={token}"})
    assert r.status_code == 200
    c.cookies.clear()
    assert c.get("/api/status", headers={"cookie": "saesteer_token_8000=nope"}).status_code == 401


def test_token_redirect_never_leaves_the_site(remote):
    c, token = remote
    c.cookies.clear()
    r = c.get(BASE + "//evil.example/x", params={"token": token}, headers={"accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/") and not r.headers["location"].startswith("//")


def test_loopback_with_require_token(c):
    app = make_app(config=ServeConfig(port=8000, require_token=True), token="y" * 32)
    with client(app) as cl:
        assert cl.get("/api/status").status_code == 401
        assert cl.get("/api/status", headers={"authorization": "Bearer " + "y" * 32}).status_code == 200


# -- headers and bounds -------------------------------------------------------------------------------


def test_security_headers_on_every_kind_of_response(c):
    for method, url, kw in [
        ("get", "/s/tiny", {"headers": {"accept": "text/html"}}),
        ("get", "/api/stores", {}),
        ("get", "/static/app.css", {}),
        ("get", "/api/stores/tiny/features/999", {}),
        ("get", "/no/such/page", {"headers": {"accept": "text/html"}}),
        ("get", "/api/status", {"headers": {"host": "evil"}}),
        ("post", "/api/stores/tiny/steer", {"json": {}}),
    ]:
        r = getattr(c, method)(url, **kw)
        assert r.headers["content-security-policy"] == CSP, url
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"


def test_csp_is_strict():
    d = dict(part.strip().split(" ", 1) for part in CSP.split(";"))
    assert d["default-src"] == "'none'"
    assert d["script-src"] == "'self'"  # no inline scripts, no eval
    assert "unsafe" not in CSP and "*" not in CSP and "http:" not in CSP
    assert d["frame-ancestors"] == "'none'"
    # the one allowance: empty <style> elements (the hash of ""), which plotly fills via the CSSOM
    assert d["style-src"] == "'self' 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"


def test_request_body_is_bounded(c):
    big = {"prompt": "a" * 70000, "edits": []}
    r = c.post("/api/stores/tiny/steer", json=big)
    assert r.status_code == 413 and "too large" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(20):
            yield b" " * 8192

    r = c.post("/api/stores/tiny/steer", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_static_files_come_from_a_fixed_table(c):
    assert c.get("/static/app.css").headers["content-type"].startswith("text/css")
    assert c.get("/static/steer.js").headers["content-type"].startswith("text/javascript")
    for bad in ("/static/../app.py", "/static/..%2Fapp.py", "/static/%2e%2e/pages.py", "/static//etc/passwd",
                "/static/templates/base.html", "/static/app.css.bak", "/static/"):
        r = c.get(bad)
        assert r.status_code == 404, bad


def test_plotly_is_served_locally(c):
    assets = c.app.state.assets
    url = assets.url(assets.plotly_name)
    assert url.startswith("/static/vendor/plotly-")
    r = c.get(url)
    assert r.status_code == 200 and len(r.content) > 1_000_000
    assert b"plotly.js" in r.content[:200]
    assert "immutable" in r.headers["cache-control"]


def test_websockets_are_refused(c):
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect):
        with c.websocket_connect("/api/status") as ws:
            ws.receive_text()
