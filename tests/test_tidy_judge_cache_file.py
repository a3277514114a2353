"""--judge-cache-path given another tool's SQLite file that happens to have a `responses` table (but no
`meta` table, which every saesteer judge cache has) is refused naming the file and what it lacks, and
nothing is written into it."""

import sqlite3

import pytest

from autointerp.cache import ResponseCache, check_cache_file
from features import build_feature_store
from helpers.feature_fixtures import WordTokenizer, make_sae, random_source, single_thread, small_config
from helpers.real_cli import saesteer

one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def foreign_file(path):
    """A chat app's history: a `responses` table of its own, rows with prose and CJK."""
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE responses (id INTEGER PRIMARY KEY, prompt TEXT, reply TEXT)")
        db.execute("CREATE TABLE sessions (id INTEGER PRIMARY KEY, title TEXT)")
        db.execute("INSERT INTO responses(prompt, reply) VALUES (?, ?)", ("Où est la gare ?", "駅は北口です。"))
    db.close()
    return path


def snapshot(path):
    db = sqlite3.connect(path)
    try:
        return (sorted(db.execute("SELECT type, name, sql FROM sqlite_master")), db.execute("PRAGMA journal_mode").fetchone(),
                db.execute("SELECT * FROM responses").fetchall())
    finally:
        db.close()


def test_a_file_with_responses_but_no_meta_table_is_refused_and_left_alone(tmp_path):
    other = foreign_file(tmp_path / "chat-history.sqlite")
    before = snapshot(other)
    for refuse in (check_cache_file, ResponseCache):
        with pytest.raises(ValueError) as e:
            refuse(other)
        assert str(other) in str(e.value) and "no meta table" in str(e.value), e.value
        assert "--judge-cache-path" in str(e.value)
    assert snapshot(other) == before
    cache = ResponseCache(tmp_path / "judge-cache.sqlite")  # its own file, new and again, is taken
    cache.close()
    ResponseCache(tmp_path / "judge-cache.sqlite").close()


def test_label_refuses_it_in_one_line(tmp_path):
    store = tmp_path / "s.db"
    build_feature_store(store, make_sae("topk", d_in=8, d_sae=16, seed=4), random_source(seed=4, n_contexts=16,
                        context_length=10), small_config(), tokenizer=WordTokenizer(), progress=False)
    other = foreign_file(tmp_path / "chat-history.sqlite")
    before = snapshot(other)
    r = saesteer("label", "--store", str(store), "--judge-model", "gpt-judge", "--judge-base-url", "http://127.0.0.1:9/v1",
                 "--judge-cache-path", str(other), "--no-progress")
    assert r.rc == 2, r.text[-2000:]
    r.no_traceback()
    assert f"{other} is not a saesteer judge cache" in r.err and "no meta table" in r.err, r.err
    assert snapshot(other) == before
