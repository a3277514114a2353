"""A build SIGKILLed mid-pass or mid-write resumes to a store identical to an uninterrupted one,
and the half store (built beside the store path, never at it) holds whole blocks only."""

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from features import FeatureStore, build_feature_store
from features.build import building_path, state_path
from helpers.feature_fixtures import WordTokenizer, single_thread


CHILD = Path(__file__).parent / "helpers" / "feature_child.py"
VOLATILE_META = ("built_at", "build_stats")


one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def dump(path: Path) -> dict:
    con = sqlite3.connect(path)
    out = {}
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                                        "AND name NOT LIKE 'feature_fts_%'")]  # the view: examples
    for t in sorted(tables):
        if t == "feature_fts":
            rows = con.execute("SELECT rowid, label, examples FROM feature_fts ORDER BY rowid").fetchall()
        elif t == "meta":
            rows = con.execute("SELECT key, value FROM meta WHERE key NOT IN (?, ?) ORDER BY key", VOLATILE_META).fetchall()
        else:
            rows = con.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall() if t in (
                "examples", "logit_effects", "neighbours") else con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
        out[t] = rows
    con.close()
    return out


def test_killed_builds_resume_to_identical_content(tmp_path):
    sys.path.insert(0, str(CHILD.parent))
    from feature_child import source_sae_cfg

    source, sae, cfg = source_sae_cfg()
    cases = {"pass": ("checkpoint", 2), "write": ("block", 2)}
    procs = {k: subprocess.Popen([sys.executable, str(CHILD), str(tmp_path / f"{k}.db"), ev, str(n)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for k, (ev, n) in cases.items()}
    clean = tmp_path / "clean.db"
    build_feature_store(clean, sae, source, cfg, tokenizer=WordTokenizer(), progress=False)
    want = dump(clean)
    assert len(want["features"]) == sae.cfg.d_sae and want["examples"]
    for k, p in procs.items():
        out = p.communicate(timeout=300)[0].decode()
        assert p.returncode == -signal.SIGKILL, out
        path = tmp_path / f"{k}.db"
        assert not path.exists()  # nothing half built at the store's path: it is built beside it
        assert state_path(building_path(path)).is_file()  # the pass state it will resume from
        # what the half store holds: an intact file, and whole blocks of latents with their examples
        with FeatureStore.open(building_path(path)) as st:
            assert st.integrity_check() == "ok" and not st.complete
            written = st.count_features()
            assert written % cfg.write_block == 0
            assert written == (0 if k == "pass" else 2 * cfg.write_block)
            blocks = st._conn.execute("SELECT COUNT(*) FROM build_progress").fetchone()[0]
            assert blocks * cfg.write_block == written
            n_ex = st._conn.execute("SELECT COUNT(DISTINCT latent) FROM examples").fetchone()[0]
            assert n_ex == sum(1 for r in want["features"][:written] if r[1] > 0)
        res = build_feature_store(path, sae, source, cfg, tokenizer=WordTokenizer(), progress=False)
        assert res.resumed and not res.already_complete
        if k == "pass":
            assert 0 < res.pass_rows < source.n_rows  # continued from the checkpoint, not from the start
        else:
            assert res.pass_rows == 0  # the pass was done; only the remaining blocks were written
        assert not state_path(path).exists() and not building_path(path).exists()
        assert not state_path(building_path(path)).exists()
        with FeatureStore.open(path) as st:
            assert st.complete and st.integrity_check() == "ok"
        assert dump(path) == want, k


def _small_build():
    sys.path.insert(0, str(CHILD.parent))
    from feature_child import source_sae_cfg

    return source_sae_cfg()


def test_a_build_stopped_while_its_file_was_created_starts_over(tmp_path):
    """A stop (or kill) between SQLite creating `<store>.building` and the schema's commit leaves a
    file with no tables: the same build starts over in it instead of failing."""
    from features.store.schema import connect

    source, sae, cfg = _small_build()
    path = tmp_path / "s.db"
    connect(building_path(path), readonly=False).close()  # what `FeatureStore.create` had written when stopped
    res = build_feature_store(path, sae, source, cfg, tokenizer=WordTokenizer(), progress=False)
    assert res.pass_rows == source.n_rows and not building_path(path).exists()
    with FeatureStore.open(path) as st:
        assert st.complete and st.count_features() == sae.cfg.d_sae


def test_a_rebuild_stopped_before_it_replaced_the_store_puts_it_in_place_without_building_it_again(tmp_path,
                                                                                                  monkeypatch):
    """Stopped in `_install` (the old store's -wal and -shm removed, the rename not made): the old
    store is whole at its path, the new one complete beside it; the same command renames it, with no
    second pass over the cache and no block written again."""
    from saesteer.stopsignals import Stopped

    source, sae, cfg = _small_build()
    path = tmp_path / "s.db"
    build_feature_store(path, sae, source, cfg, tokenizer=WordTokenizer(), progress=False)
    old = dump(path)
    new_cfg = dataclasses.replace(cfg, top_k=cfg.top_k + 1)
    replace = os.replace

    def stopped(src, dst):  # a signal just before the rename that puts the new store in place
        if Path(src) == building_path(path):
            raise Stopped(signal.SIGTERM)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", stopped)
    with pytest.raises(Stopped):
        build_feature_store(path, sae, source, new_cfg, tokenizer=WordTokenizer(), progress=False, overwrite=True)
    monkeypatch.setattr(os, "replace", replace)
    assert dump(path) == old  # the old store, whole, where readers look
    with FeatureStore.open(building_path(path)) as st:
        assert st.complete
    built = dump(building_path(path))

    events = []
    res = build_feature_store(path, sae, source, new_cfg, tokenizer=WordTokenizer(), progress=False, overwrite=True,
                              on_event=lambda name, info: events.append(name))
    assert res.pass_rows == 0 and events == [] and res.path == path and res.n_rows == source.n_rows
    assert not building_path(path).exists() and not state_path(building_path(path)).exists()
    assert dump(path) == built
    with FeatureStore.open(path) as st:
        assert st.complete and st.meta["build_config"]["top_k"] == new_cfg.top_k


def test_a_refused_build_leaves_a_stopped_rebuild_of_the_store_to_resume(tmp_path):
    """A rebuild (overwrite) stopped mid-pass, then by mistake a build of other settings without
    overwrite: that one is refused, and touches nothing; the stopped rebuild still resumes."""
    from features.store.errors import StoreMismatchError
    from saesteer.stopsignals import Stopped

    source, sae, cfg = _small_build()
    path = tmp_path / "s.db"
    build_feature_store(path, sae, source, cfg, tokenizer=WordTokenizer(), progress=False)
    rebuild = dataclasses.replace(cfg, top_k=cfg.top_k + 1)

    def stop_at_first_checkpoint(name, info):
        if name == "checkpoint":
            raise Stopped(signal.SIGTERM)

    with pytest.raises(Stopped):
        build_feature_store(path, sae, source, rebuild, tokenizer=WordTokenizer(), progress=False, overwrite=True,
                            on_event=stop_at_first_checkpoint)
    assert state_path(building_path(path)).is_file()
    with pytest.raises(StoreMismatchError, match="overwrite"):
        build_feature_store(path, sae, source, dataclasses.replace(cfg, top_k=cfg.top_k + 2),
                            tokenizer=WordTokenizer(), progress=False)
    assert state_path(building_path(path)).is_file()
    res = build_feature_store(path, sae, source, rebuild, tokenizer=WordTokenizer(), progress=False, overwrite=True)
    assert res.resumed and 0 < res.pass_rows < source.n_rows
    with FeatureStore.open(path) as st:
        assert st.complete and st.meta["build_config"]["top_k"] == rebuild.top_k
