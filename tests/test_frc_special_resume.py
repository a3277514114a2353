"""Resuming a cache with the other --special-tokens reading: refused (mixing readings would pack one
cache two ways), but the refusal said only "literal_special_tokens: cache has True, this run asks
for False", a manifest field no flag is called, with no way to continue but another folder. It now
names the flag the cache was made with, and auto, which continues it as recorded."""

from __future__ import annotations

import json

import pytest

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("offline_env", "one_thread")]


def test_resuming_with_the_other_special_token_reading_names_the_flag_that_continues_it(real_models, real_corpus,
                                                                                          tmp_path):
    rows = [p + " Documents end with <|endoftext|> in this corpus." for p in real_corpus.train_docs[:40]]
    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows), encoding="utf-8")
    cache = ("cache", "--model", real_models.path("gpt2"), "--dataset", tmp_path / "data", "--hooks",
             "blocks.0.hook_resid_post", "--context-length", 32, "--out", tmp_path / "cache", "--no-progress")
    saesteer(*cache, "--max-tokens", 256, "--special-tokens", "text").ok()
    r = saesteer(*cache, "--max-tokens", 256, "--special-tokens", "match").no_traceback()
    assert r.rc != 0 and "--special-tokens text" in r.err and "--special-tokens auto" in r.err, r.err
    saesteer(*cache, "--max-tokens", 256, "--special-tokens", "auto").ok()  # what it names continues the cache
