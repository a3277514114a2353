"""Run `saesteer` commands in this process (one import of torch / transformers for the whole
suite instead of one per command) and capture what they print.

    r = saesteer("features", "show", store, "3")
    assert r.rc == 0, r.err
    r.out, r.err

argparse errors (SystemExit) become rc 2 as in a real process. The subprocess path of the real
`saesteer` script is covered by the serve test and a refusal test of tests/test_real_chain.py.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass


@dataclass
class CliResult:
    argv: tuple[str, ...]
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    def ok(self) -> "CliResult":
        assert self.rc == 0, f"saesteer {' '.join(self.argv)} -> {self.rc}\n{self.text[-3000:]}"
        return self

    def no_traceback(self) -> "CliResult":
        """A refusal is a message, not a traceback (those are for --debug)."""
        assert [line for line in self.text.splitlines() if line.startswith("Traceback")] == [], self.text[-2000:]
        return self


# what a user-path module runs its commands under (the `offline_env` fixture of conftest.py):
# nothing from the hub or wandb's servers, and rich tables wide enough to read whole
OFFLINE_ENV = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}


def saesteer(*argv) -> CliResult:
    from saesteer.cli import main

    argv = tuple(str(a) for a in argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
    return CliResult(argv, int(rc), out.getvalue(), err.getvalue())


def flags_named(text: str) -> set[str]:
    """The --flags a message names."""
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


def known_flags(*command: str) -> set[str]:
    """Every --flag the (sub)command's parser accepts."""
    from saesteer.cli import build_parser

    parser = build_parser()
    for name in command:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def captured_serve(monkeypatch, *argv):
    """`saesteer serve ...` in this process, stopped where it would start uvicorn:
    (CliResult, a fastapi TestClient on the app it would serve, or None)."""
    from fastapi.testclient import TestClient

    from helpers.web_app import record_server

    calls = record_server(monkeypatch)
    r = saesteer("serve", *argv, "--port", 0)
    if not calls:
        return r, None
    (app, kw), = calls
    return r, TestClient(app, base_url=f"http://{kw['host']}:{kw['port']}")


def cache_train_store(model, text, work, store_name: str, *cache_flags) -> None:
    """The chain most user-path tests start from, with the CLI: a cache of `text` (32-token
    contexts, no BOS) at `work/cache`, a small TopK SAE named `sae` at `work/run/saes/sae`, and its
    feature store at `work/store_name`."""
    saesteer("cache", "--model", model, "--dataset", text, "--context-length", 32, "--bos-policy", "none",
             *cache_flags, "--out", work / "cache", "--no-progress").ok()
    saesteer("train", "--cache", work / "cache", "--out", work / "run", "--architecture", "topk", "--d-sae", 128,
             "--k", 4, "--total-tokens", 4096, "--batch-size", 256, "--holdout-tokens", 512,
             "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--model-eval", "false",
             "--no-progress", "--sae-name", "sae").ok()
    saesteer("features", "build", "--sae", work / "run/saes/sae", "--cache", work / "cache",
             "--out", work / store_name, "--no-progress").ok()
