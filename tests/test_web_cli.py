"""`saesteer serve` as a user runs it (a real uvicorn process), and the browser tests' CI guard."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from helpers.web_app import free_port, shared_store

ROOT = Path(__file__).resolve().parents[1]


def _serve(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "saesteer", "serve", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )


def _wait_for_url(proc: subprocess.Popen, timeout: float = 120.0) -> tuple[str, list[str]]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line.rstrip())
        if "serving on " in line:
            return line.split("serving on ", 1)[1].strip(), lines
    raise AssertionError("server did not start:\n" + "\n".join(lines))


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_serve_a_store_browse_only():
    ws = shared_store()
    port = free_port()
    proc = _serve("--store", str(ws.path), "--port", str(port), "--require-token", env={"SAESTEER_TOKEN": "z" * 24})
    try:
        url, lines = _wait_for_url(proc)
        assert url == f"http://127.0.0.1:{port}/?token={'z' * 24}"
        assert any("store tiny" in ln and "browse only" in ln for ln in lines)
        base = f"http://127.0.0.1:{port}"
        auth = {"authorization": "Bearer " + "z" * 24}
        assert httpx.get(base + "/api/stores").status_code == 401
        stores = httpx.get(base + "/api/stores", headers=auth).json()
        assert stores[0]["id"] == "tiny" and stores[0]["can_steer"] is False
        assert httpx.get(base + "/api/stores", headers={**auth, "host": f"evil.example:{port}"}).status_code == 400
        r = httpx.post(base + "/api/stores/tiny/steer", headers=auth,
                       json={"prompt": "a", "edits": [{"latent": 1, "op": "add", "value": 1}]})
        assert r.status_code == 409
        assert "server" not in r.headers  # no server banner
    finally:
        _stop(proc)


# `saesteer serve` with uvicorn's start slowed down: the URL line must still only come once a client
# can connect (it used to be printed before uvicorn bound the port: "connection refused" for a
# client that reacts to it)
SLOW_START = """
import asyncio, sys
import uvicorn
real_startup = uvicorn.Server.startup
async def slow_startup(self, sockets=None):
    await asyncio.sleep(1.5)
    await real_startup(self, sockets=sockets)
uvicorn.Server.startup = slow_startup
from saesteer.cli import main
sys.exit(main(["serve", *sys.argv[1:]]))
"""


def test_the_url_is_printed_once_the_server_answers():
    ws = shared_store()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_START, "--store", str(ws.path), "--model", "none",
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        url, lines = _wait_for_url(proc)
        assert url == f"http://127.0.0.1:{port}/"
        r = httpx.get(url + "api/stores", timeout=10)  # at once, and once
        assert r.status_code == 200 and r.json()[0]["id"] == "tiny", "\n".join(lines)
    finally:
        _stop(proc)


def test_a_busy_port_is_a_clear_error(capsys):
    import socket

    from saesteer.cli import main

    ws = shared_store()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        assert main(["serve", "--store", str(ws.path), "--model", "none", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port 0" in err, err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--host", "0.0.0.0"], "--allow-remote"),
        (["--host", "10.0.0.1"], "--allow-remote"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be"),
        (["--port", "99999"], "port"),
    ],
)
def test_serve_refuses_bad_settings(args, message, capsys):
    from saesteer.cli import main

    ws = shared_store()
    assert main(["serve", "--store", str(ws.path), *args]) == 2
    assert message in capsys.readouterr().err


def test_serve_refuses_a_missing_store(tmp_path, capsys):
    from saesteer.cli import main

    assert main(["serve", "--store", str(tmp_path / "nope.db")]) == 2
    assert "no feature store" in capsys.readouterr().err
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    assert main(["serve", "--store", str(tmp_path / "junk.db")]) == 2
    assert "not a saesteer feature store" in capsys.readouterr().err


def test_browser_tests_fail_without_chromium_under_ci():
    """SAESTEER_CI=1 turns a missing Chromium into failures, so CI cannot silently skip them
    (without it they skip: run the browser module with SAESTEER_CHROMIUM=/nonexistent to see)."""
    env = {**os.environ, "SAESTEER_CHROMIUM": "/nonexistent/chromium", "SAESTEER_CI": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_web_browser.py",
                        "-k", "filters_and_pagination", "-rfE"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1, r.stdout
    assert "cannot run under SAESTEER_CI=1" in r.stdout and "1 error" in r.stdout


def test_open_entries_loads_and_checks_each_store_sae(tmp_path):
    from saes import save_sae
    from saes.registry import create_sae
    from saesteer.web.launch import open_entries

    ws = shared_store()
    save_sae(ws.sae, tmp_path / "sae")
    entries = open_entries([ws.path, ws.path], model=ws.model, sae_dirs=[tmp_path / "sae", tmp_path / "sae"])
    assert [e.id for e in entries] == ["tiny", "tiny-2"]
    assert all(e.engine is not None for e in entries) and entries[0].queue is entries[1].queue  # one model, one queue
    bare = open_entries([ws.path])[0]  # no model: browse only, and it says why
    assert bare.engine is None and bare.info.browse_only_reason == "the server was started without a model (pass --model)"
    nosae = open_entries([ws.path], model=ws.model)[0]  # no SAE folder recorded
    assert nosae.engine is None and not nosae.info.can_steer
    assert nosae.info.browse_only_reason == "the store does not record its SAE folder (pass --sae DIR)"
    with pytest.raises(ValueError, match="one --sae per --store"):
        open_entries([ws.path, ws.path], model=ws.model, sae_dirs=[tmp_path / "sae"])
    other = create_sae("topk", ws.sae.cfg.d_in, ws.d_sae, k=4, metadata=dict(ws.sae.cfg.metadata))
    save_sae(other, tmp_path / "other")
    with pytest.raises(ValueError, match="another SAE"):
        open_entries([ws.path], model=ws.model, sae_dirs=[tmp_path / "other"])
