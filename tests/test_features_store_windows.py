"""Schema version 3 keeps each example window once (`features.store.windows`): what a user sees of a
store is byte for byte what version 2 showed, a version-2 store still reads (and upgrades) the same,
and a saesteer of version 2 refuses a version-3 store naming the version.

The "old" store is the same build with its examples as version 2's writer inserted them (the build's
`ExampleRow`s, each with its window's bytes, into the table `examples`); the "new" one is the store as
built now. Both are a real small store (`helpers.web_store`: a tiny model, a word tokenizer with BOS,
a Matryoshka SAE, logit effects, labels and scores, a script-injection label)."""

from __future__ import annotations

import gzip
import re
import sqlite3
from pathlib import Path

import pytest

from features import FeatureStore, StoreError
from helpers.feature_fixtures import version_2_store
from helpers.real_cli import saesteer


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from features.store.buildwrites import StoreBuildWrites
    from helpers.web_store import build_web_store

    d = tmp_path_factory.mktemp("windows")
    written: list = []
    original = StoreBuildWrites.write_feature_block

    def recording(self, block, first, end, features, histograms, examples, *rest):
        written.extend(examples)
        return original(self, block, first, end, features, histograms, examples, *rest)

    StoreBuildWrites.write_feature_block = recording
    try:
        ws = build_web_store(d / "new")
    finally:
        StoreBuildWrites.write_feature_block = original
    (d / "old").mkdir()
    old = d / "old" / ws.path.name
    version_2_store(ws.path, old, examples=written)
    return ws, old, written


def _shown(path: Path, ws, tmp: Path) -> dict[str, bytes]:
    """Everything a user reads of the store at `path`: `features show` of every latent, `features
    list` and `search`, the web app's pages and API JSON, and the HTML, Neuronpedia and delphi exports."""
    from helpers.web_app import client
    from saesteer.web import Limits, ServeConfig, StoreEntry, create_app
    from saesteer.web.store_source import StoreCatalog

    out: dict[str, bytes] = {}
    def printed(*argv) -> bytes:  # the store's path (centred in a title) aside
        text = saesteer("features", *argv).ok().out
        return "\n".join(line.strip() if str(path) in line else line for line in text.splitlines()) \
            .replace(str(path), "STORE").encode()

    for i in _some_latents(ws):
        out[f"show {i}"] = printed("show", path, i)
    out["list"] = printed("list", path, "--limit", ws.d_sae)
    out["search"] = printed("search", path, "ocean")
    for fmt in ("html", "neuronpedia"):
        dest = tmp / fmt
        saesteer("features", "export", path, dest, "--format", fmt, "--model-id", "tiny", "--no-progress").ok()
        for f in sorted(p for p in dest.rglob("*") if p.is_file()):
            out[f"{fmt} {f.relative_to(dest)}"] = _stable(f)
    saesteer("label", "--store", path, "--export-delphi", tmp / "delphi").ok()
    for f in sorted(p for p in (tmp / "delphi").rglob("*") if p.is_file()):
        out[f"delphi {f.relative_to(tmp / 'delphi')}"] = f.read_bytes()
    with FeatureStore.open(path) as st:
        app = create_app([StoreEntry("tiny", StoreCatalog(st, name="tiny"))], config=ServeConfig(port=8000),
                         limits=Limits())
        with client(app) as c:
            urls = ["/s/tiny", "/s/tiny/search?q=ocean", "/api/stores/tiny/features?limit=100",
                    "/api/stores/tiny/search?q=the&limit=50"]
            for i in range(ws.d_sae):
                urls += [f"/s/tiny/f/{i}", f"/api/stores/tiny/features/{i}"]
            for url in urls:
                r = c.get(url)
                assert r.status_code == 200, (url, r.text[:300])
                out[url] = r.content
    return out


def _stable(f: Path) -> bytes:
    """An exported file without what changes from one export to the next: gzip's header time and
    Neuronpedia's createdAt / updatedAt, the hashes of the files that hold them."""
    data = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
    data = re.sub(rb'"(createdAt|updatedAt)": "[^"]*"', rb'"\1": "T"', data)
    return re.sub(rb'"[0-9a-f]{64}"', b'"HASH"', data) if f.name == "saesteer_export.json" else data


def _some_latents(ws) -> list[int]:
    """A dozen latents: the labelled ones (the script-injection label among them) and some of the rest
    (dead ones included); the whole command per latent is what takes the time here."""
    return sorted({*ws.labels, 0, ws.d_sae - 1, ws.d_sae - 2})


def _same(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, differ[:5]


def test_a_new_store_shows_what_version_2_showed_byte_for_byte(stores, tmp_path):
    ws, old, written = stores
    with FeatureStore.open(ws.path) as new, FeatureStore.open(old) as v2:
        assert (new.schema_version, v2.schema_version) == (3, 2)
        n_windows = new._conn.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
        null_acts = new._conn.execute("SELECT kind, COUNT(*) FROM example_refs WHERE acts IS NULL GROUP BY kind").fetchall()
        assert len(written) == new._conn.execute("SELECT COUNT(*) FROM example_refs").fetchone()[0]
        assert n_windows <= len({(e.seq_index, e.position) for e in written}) < len(written)  # windows are shared
        assert [k for k, _ in null_acts] == ["negative"]  # zero activations: not stored
        # the view reads every column of every example as version 2's table holds it
        assert new._conn.execute("SELECT * FROM examples ORDER BY id").fetchall() == \
            v2._conn.execute("SELECT * FROM examples ORDER BY id").fetchall()
        assert [new.feature(i) for i in range(ws.d_sae)] == [v2.feature(i) for i in range(ws.d_sae)]
    _same(_shown(ws.path, ws, tmp_path / "new"), _shown(old, ws, tmp_path / "old"))


def test_a_version_2_store_upgrades_to_shared_windows_smaller_and_showing_the_same(stores, tmp_path):
    ws, old, _ = stores
    copy = ws.path.parent.parent / "upg" / ws.path.name  # a path as long as the others: tables as wide
    copy.parent.mkdir()
    with sqlite3.connect(old) as a, sqlite3.connect(copy) as b:  # the file and what its WAL holds
        a.backup(b)
    before = copy.stat().st_size
    r = saesteer("features", "upgrade", copy).ok()
    assert f"{copy}: feature-store schema version 3 (upgraded from version 2)" in r.out
    assert copy.stat().st_size < before
    with sqlite3.connect(copy) as a, sqlite3.connect(ws.path) as b:
        for table in ("windows", "example_refs", "examples"):
            assert a.execute(f"SELECT * FROM {table} ORDER BY id").fetchall() == \
                b.execute(f"SELECT * FROM {table} ORDER BY id").fetchall(), table
    # the rest of the file is version 2's as it was: what it shows is the new store's (the test above)
    with FeatureStore.open(copy) as up, FeatureStore.open(ws.path) as new:
        assert [up.feature(i) for i in range(ws.d_sae)] == [new.feature(i) for i in range(ws.d_sae)]
    for i in _some_latents(ws)[:3]:
        assert saesteer("features", "show", copy, i).ok().out == saesteer("features", "show", ws.path, i).ok().out
    assert "already current" in saesteer("features", "upgrade", copy).ok().out


def test_a_saesteer_of_version_2_refuses_a_version_3_store_naming_it(stores, monkeypatch):
    import features.store.base as base

    ws, *_ = stores
    monkeypatch.setattr(base, "SCHEMA_VERSION", 2)  # how saesteer of version 2 opens a store
    monkeypatch.setattr(base, "READABLE_VERSIONS", (2,))
    with pytest.raises(StoreError, match="has feature-store schema version 3, this saesteer reads version 2; upgrade saesteer"):
        FeatureStore.open(ws.path)


@pytest.mark.parametrize("where", ["path", "building"])
def test_a_build_begun_by_version_2_resumes_into_shared_windows(tmp_path, where):
    """A store whose build a saesteer of version 2 began (its first block written, then stopped) is
    finished by this one: converted first, then the remaining blocks; the result is the store an
    uninterrupted build makes. Older saesteers built at the path itself, later ones of version 2 at
    `<store>.building` (renamed over the store when complete)."""
    from features import build_feature_store
    from features.build import building_path
    from helpers.feature_fixtures import WordTokenizer, make_sae, random_source, small_config
    from test_features_resume import dump

    src = random_source(seed=3, n_contexts=20, context_length=12)
    sae = make_sae("topk", d_in=8, d_sae=24, seed=3)

    def build(path):
        return build_feature_store(path, sae, src, small_config(), tokenizer=WordTokenizer(), progress=False)

    build(tmp_path / "clean.db")
    out = tmp_path / "out.db"
    old = out if where == "path" else building_path(out)
    version_2_store(tmp_path / "clean.db", old)
    with sqlite3.connect(old) as db:  # as if stopped after the first block of 8 latents
        for table in ("features", "histograms", "examples", "logit_effects", "neighbours", "correlations"):
            db.execute(f"DELETE FROM {table} WHERE latent >= 8")
        db.execute("DELETE FROM feature_fts WHERE rowid >= 8")
        db.execute("DELETE FROM build_progress WHERE block >= 1")
        db.execute("UPDATE meta SET value = '\"building\"' WHERE key = 'build_state'")
    res = build(out)
    assert res.resumed and not res.already_complete and not building_path(out).exists()
    with FeatureStore.open(out) as st:
        assert st.schema_version == 3 and st.complete and st.integrity_check() == "ok"
    assert dump(out) == dump(tmp_path / "clean.db")


def test_an_upgrade_stopped_in_its_vacuum_shrinks_the_file_when_run_again(stores, tmp_path):
    """The conversion commits before the VACUUM (minutes on a 1.2 GB store): an upgrade killed in
    between leaves a version-3 store of the old size, mostly free pages; upgrading it again shrinks it."""
    ws, old, _ = stores
    copy = tmp_path / ws.path.name
    with sqlite3.connect(old) as a, sqlite3.connect(copy) as b:
        a.backup(b)
    with FeatureStore.open(copy, readonly=False) as st:  # what the killed upgrade committed
        assert st.share_windows() is not None and st.schema_version == 3
    stopped = copy.stat().st_size
    r = saesteer("features", "upgrade", copy).ok()
    assert f"{copy}: feature-store schema version 3 (already current)" in r.out
    assert copy.stat().st_size < stopped * 2 / 3
    with FeatureStore.open(copy) as up, FeatureStore.open(ws.path) as new:
        assert up.integrity_check() == "ok"
        assert [up.feature(i) for i in range(ws.d_sae)] == [new.feature(i) for i in range(ws.d_sae)]
    with FeatureStore.open(ws.path) as st:  # a store built as version 3: nothing to shrink
        assert not st._mostly_free()
