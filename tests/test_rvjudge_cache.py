"""A cached judge reply is read as the fresh one was: whether the server sent reasoning beside the
answer (vLLM's `reasoning_content`, OpenAI's counted `reasoning_tokens`) decides how a reply cut at the
output limit is read (`Judge.complete`), so the cache keeps it. A cache file written before it was kept
still reads (its entries as they were judged then) and gets the new table when opened.
"""

from __future__ import annotations

import json
import sqlite3

from autointerp.cache import CachedResponse, ResponseCache
from autointerp.config import JudgeConfig, make_judge
from helpers.judge_server import JudgeServer, chat_completion, fake_llm_answer

LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
ASK = [{"role": "system", "content": "Label the latent."},
       {"role": "user", "content": "<examples>la mer, the sea, 海, the café by the shore</examples>"}]
# a reasoning model whose thinking came apart (vLLM's reasoning parser, OpenAI's counted reasoning tokens),
# its answer then a note the output limit cut: the content is the answer, not a draft inside thinking
CUT_AFTER_REASONING = chat_completion(
    'Label: {"label": "the sea, in English, French and Chinese"} — note: the examples also incl',
    finish="length", message_extra={"reasoning_content": "The marked tokens name the sea in three languages."},
    usage={"prompt_tokens": 40, "completion_tokens": 64, "total_tokens": 104,
           "completion_tokens_details": {"reasoning_tokens": 41}})


def judge(url, cache_path):
    return make_judge(JudgeConfig(model="qwen3-8b", base_url=url, api_key="k", max_reasks=0), cache_path=cache_path)


def test_a_cached_reply_after_sent_reasoning_is_judged_as_the_fresh_one(tmp_path):
    cache = tmp_path / "judge.sqlite"
    with JudgeServer(fake_llm_answer, reply=lambda ex: CUT_AFTER_REASONING) as srv:
        fresh = judge(srv.url, cache).complete_sync(ASK, schema=LABEL)
        again = judge(srv.url, cache).complete_sync(ASK, schema=LABEL)  # a re-run: from the file
        assert len(srv.exchanges) == 1
    assert fresh.value == {"label": "the sea, in English, French and Chinese"} and fresh.requests == 1
    assert again.value == fresh.value and again.cached == 1 and again.requests == 0


def _old_cache(path, key):
    """A cache file as saesteer wrote it before the reasoning was kept: no `reasoning` table."""
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, text TEXT, refusal TEXT,
            finish_reason TEXT, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, created REAL NOT NULL);
        CREATE TABLE settings_sent (key TEXT PRIMARY KEY, settings TEXT NOT NULL);
        CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
        INSERT INTO meta VALUES ('format', 'saesteer-judge-cache-1');""")
    db.execute("INSERT INTO responses VALUES (?,?,?,?,?,?,?,?)", (key, "m", '{"label": "sea"}', None, "stop", 9, 5, 0.0))
    db.execute("INSERT INTO settings_sent VALUES (?,?)", (key, json.dumps({"max_tokens_param": "max_tokens"})))
    db.commit()
    db.close()


def test_a_cache_written_before_reads_on_and_keeps_reasoning_from_then_on(tmp_path):
    path = tmp_path / "old.sqlite"
    _old_cache(path, "k-old")
    cache = ResponseCache(path)
    old = cache.get("k-old")
    assert old == CachedResponse('{"label": "sea"}', None, "stop", 9, 5, {"max_tokens_param": "max_tokens"})
    assert (old.reasoned, old.reasoning_tokens) == (False, 0)
    cache.put("k-new", "m", CachedResponse("x", None, "length", 1, 2, None, reasoned=True, reasoning_tokens=7))
    cache.put("k-plain", "m", CachedResponse("y", None, "stop", 1, 2))
    cache.close()
    reopened = ResponseCache(path)
    assert (reopened.get("k-new").reasoned, reopened.get("k-new").reasoning_tokens) == (True, 7)
    assert (reopened.get("k-plain").reasoned, reopened.get("k-plain").reasoning_tokens) == (False, 0)
    # a reply stored again under its key (a retried write) keeps no stale reasoning
    reopened.put("k-new", "m", CachedResponse("x", None, "stop", 1, 2))
    assert (reopened.get("k-new").reasoned, reopened.get("k-new").reasoning_tokens) == (False, 0)
    reopened.close()
    # what an older saesteer reads of this file: its own query still answers, in the format it knows
    db = sqlite3.connect(path)
    assert db.execute("SELECT v FROM meta WHERE k='format'").fetchone() == ("saesteer-judge-cache-1",)
    assert db.execute("SELECT text, refusal, finish_reason, prompt_tokens, completion_tokens, s.settings FROM responses "
                      "LEFT JOIN settings_sent AS s USING (key) WHERE key='k-old'").fetchone()[0] == '{"label": "sea"}'
    db.close()
