"""Kill -9 in the middle of a cache build, re-run it, and get the bytes of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers.tiny_model import make_model, make_tokenizer, write_corpus

pytestmark = [pytest.mark.usefixtures("one_thread")]

REPO = Path(__file__).resolve().parents[1]

# The child builds the same cache, slowed down per forward pass so the parent can kill it mid-run.
CHILD = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)  # as in the parent test (tiny ops; shared CI cores)
    from helpers.tiny_model import make_model, make_tokenizer
    from training.cache import build_cache
    from training.cache_config import CacheConfig
    from training.runner import ActivationRunner
    from training.text import TextConfig

    real_run = ActivationRunner.run
    def slow_run(self, tokens):
        time.sleep(0.03)
        return real_run(self, tokens)
    ActivationRunner.run = slow_run

    corpus, out = sys.argv[1], sys.argv[2]
    model = make_model(make_tokenizer(), d_model=64, n_layers=2, n_ctx=64, seed=0)
    print("ready", flush=True)
    build_cache(model, TextConfig(dataset=corpus, context_length=16),
                CacheConfig(out=out, hooks=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
                            shard_contexts=6, batch_size=3, dtype="bf16"),
                progress=False, log=None)
    print("finished", flush=True)
""")


def tree(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def run_config(corpus, out):
    from training.cache_config import CacheConfig
    from training.text import TextConfig

    return (TextConfig(dataset=str(corpus), context_length=16),
            CacheConfig(out=str(out), hooks=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
                        shard_contexts=6, batch_size=3, dtype="bf16"))


def test_sigkill_mid_build_then_rerun_is_byte_identical(tmp_path):
    from training.cache import build_cache
    from training.manifest import read_manifest

    corpus = tmp_path / "corpus"
    write_corpus(corpus, n_docs=80, seed=7, n_files=3)
    model = make_model(make_tokenizer(), d_model=64, n_layers=2, n_ctx=64, seed=0)

    ref = tmp_path / "ref"
    build_cache(model, *run_config(corpus, ref), progress=False, log=None)
    n_shards = len(read_manifest(ref).shards)
    assert n_shards >= 8

    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(corpus), str(out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        log = out / "progress.jsonl"
        while time.monotonic() < deadline:
            if log.exists() and log.read_text().count("\n") >= 3:
                break
            if child.poll() is not None:
                pytest.fail(f"child ended early: {child.communicate()}")
            time.sleep(0.01)
        else:
            pytest.fail("child made no progress")
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    done_before = log.read_text().count("\n")
    assert 3 <= done_before < n_shards
    assert not read_manifest(out).complete

    res = build_cache(model, *run_config(corpus, out), progress=False, log=None)  # the same command again
    assert res.shards_resumed >= 3 and res.shards_resumed + res.shards_written == n_shards
    assert tree(out) == tree(ref)
