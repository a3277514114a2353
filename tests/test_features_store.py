"""The feature store: identity checks, errors, search, labels/scores/provenance, listing."""

import os
import sqlite3
from dataclasses import replace

import pytest
import torch

from features import (


    FeatureIndexError,
    FeatureStore,
    LabelProvenance,
    ScoreInput,
    StoreError,
    StoreMismatchError,
    StoreReadOnlyError,
    build_feature_store,
)
from helpers.feature_fixtures import (single_thread, WordTokenizer, identity_sae, make_sae, random_source, small_config,
                                     version_2_store)


one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("store")
    src = random_source(seed=5, n_contexts=24, context_length=12)
    sae = make_sae("matryoshka_batchtopk", d_in=8, d_sae=24, seed=5)
    path = d / "s.db"
    res = build_feature_store(path, sae, src, small_config(), tokenizer=WordTokenizer(), progress=False)
    return path, sae, src, res


def prov(**kw):
    base = dict(judge_model="gpt-test", judge_kind="openai", prompt_version="v1", examples_used=[1, 2, 3],
                params={"temperature": 0})
    base.update(kw)
    return LabelProvenance(**base)


def test_build_summary_and_metadata(built):
    path, sae, src, res = built
    assert not res.already_complete and res.n_rows == src.n_rows and res.pass_rows == src.n_rows
    with FeatureStore.open(path, sae=sae, cache=src) as st:
        assert st.complete and st.d_sae == 24 and st.integrity_check() == "ok"
        assert st.meta["schema_version"] == 3 and st.meta["n_rows"] == src.n_rows
        assert st.meta["sae"]["architecture"] == "matryoshka_batchtopk" and st.meta["window_before"] == 3
        assert st.count_features() == 24
        assert st._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rec = st.feature(20)
        assert rec.level == 1 and st.feature(2).level == 0
        assert len(rec.decoder_neighbours) == 3 and all(n.latent != 20 for n in rec.decoder_neighbours)
        assert [n.score for n in rec.decoder_neighbours] == sorted([n.score for n in rec.decoder_neighbours], reverse=True)
    # a second build with the same inputs is a no-op
    again = build_feature_store(path, sae, src, small_config(), tokenizer=WordTokenizer(), progress=False)
    assert again.already_complete


def test_another_sae_or_cache_is_refused(built, tmp_path):
    path, sae, src, _ = built
    other_sae = make_sae("matryoshka_batchtopk", d_in=8, d_sae=24, seed=6)
    with pytest.raises(StoreMismatchError, match="another SAE"):
        FeatureStore.open(path, sae=other_sae)
    with pytest.raises(StoreMismatchError, match="another activation cache"):
        FeatureStore.open(path, cache=random_source(seed=99, n_contexts=24, context_length=12))
    with FeatureStore.open(path) as st:
        with pytest.raises(StoreMismatchError):
            st.check_sae(other_sae)
        st.check_sae(sae)  # the right one passes
    # building into a store of another SAE is refused; overwrite=True rebuilds it
    copy = tmp_path / "copy.db"
    copy.write_bytes(path.read_bytes())
    with pytest.raises(StoreMismatchError, match="sae_fingerprint"):
        build_feature_store(copy, other_sae, src, small_config(), progress=False)
    build_feature_store(copy, other_sae, src, small_config(), overwrite=True, progress=False)
    with FeatureStore.open(copy, sae=other_sae) as st:
        assert st.complete


def test_feature_id_out_of_range_names_the_valid_range(built):
    path, *_ = built
    with FeatureStore.open(path) as st:
        for bad in (-1, 24, 10_000):
            with pytest.raises(FeatureIndexError, match=r"0\.\.23 \(d_sae=24\)"):
                st.feature(bad)
        with pytest.raises(IndexError):
            st.examples(24)
        with pytest.raises(FeatureIndexError):
            st.list_features(filter={"latents": [3, 99]})


def test_readonly_store_refuses_writes_and_missing_store_says_how_to_build(built, tmp_path):
    path, *_ = built
    with FeatureStore.open(path) as st:
        with pytest.raises(StoreReadOnlyError, match="readonly=False"):
            st.write_label(0, "x", provenance=prov())
    with pytest.raises(FileNotFoundError, match="features build"):
        FeatureStore.open(tmp_path / "nope.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError):
        FeatureStore.open(junk)


def test_newer_schema_is_refused(built, tmp_path):
    path, *_ = built
    copy = tmp_path / "v2.db"
    copy.write_bytes(path.read_bytes())
    con = sqlite3.connect(copy)
    con.execute("UPDATE schema_version SET version = 99")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="upgrade saesteer"):
        FeatureStore.open(copy)


def test_labels_scores_provenance_round_trip(built, tmp_path):
    path, *_ = built
    copy = tmp_path / "labels.db"
    copy.write_bytes(path.read_bytes())
    with FeatureStore.open(copy, readonly=False) as st:
        l1 = st.write_label(4, "first idea", provenance=prov())
        l2 = st.write_label(4, "ocean waves", explanation="fires on sea words",
                            provenance=prov(judge_model="heuristic", judge_kind="offline", examples_used=[7]))
        assert l2 > l1
        ids = st.write_scores(4, {"detection": 0.8, "fuzzing": 0.7},
                              provenance=prov(judge_model="heuristic", judge_kind="offline"))
        st.write_scores(4, [ScoreInput("simulation", 0.3, n_examples=40, details={"r": 0.3})], label_id=None)
        assert len(ids) == 2
        with pytest.raises(ValueError, match="does not belong"):
            st.write_scores(5, {"detection": 0.1}, label_id=l2)
        with pytest.raises(ValueError, match="judge_kind"):
            prov(judge_kind="psychic")
        st.set_recommended_strength(4, 2.5, source="sweep", details={"unit": "max_act"})
    with FeatureStore.open(copy) as st:
        rec = st.feature(4)
        assert rec.label.text == "ocean waves" and rec.label.explanation == "fires on sea words"
        p = rec.label.provenance
        assert (p.judge_model, p.judge_kind, p.offline, p.examples_used) == ("heuristic", "offline", True, [7])
        assert {s.method: s.value for s in rec.scores} == {"detection": 0.8, "fuzzing": 0.7, "simulation": 0.3}
        assert {s.method: s.offline for s in rec.scores} == {"detection": True, "fuzzing": True, "simulation": None}
        assert rec.recommended_strength == 2.5 and rec.strength_source == "sweep"
        assert st.labels([4, 5]) == {4: "ocean waves"}
        n_hist = st._conn.execute("SELECT COUNT(*) FROM labels WHERE latent = 4").fetchone()[0]
        assert n_hist == 2  # history kept, newest is current


def test_full_text_search_over_labels_and_examples(built, tmp_path):
    path, *_ = built
    copy = tmp_path / "fts.db"
    copy.write_bytes(path.read_bytes())
    with FeatureStore.open(copy, readonly=False) as st:
        # example text is searchable: a word from a top example of latent 3
        word = st.feature(3).top_examples[0].tokens[st.feature(3).top_examples[0].centre].strip()
        hits = st.search(word, limit=50)
        assert 3 in [h.latent for h in hits] and all(word in h.text for h in hits)
        assert all((word, True) in h.parts for h in hits)  # the match is marked, the rest is not
        st.write_label(7, "whales and dolphins", provenance=prov())
        st.write_label(8, "dolphins", provenance=prov())
        hits = st.search("dolphins")
        assert {h.latent for h in hits} == {7, 8}
        assert hits[0].label in ("dolphins", "whales and dolphins")
        assert st.search("whales dolphins")[0].latent == 7  # all words first
        assert [h.latent for h in st.search("whales zebra")] == [7]  # else any word
        assert st.search("zebra") == [] and st.search("   ") == []
        st.write_label(7, "sharks", provenance=prov())  # relabel: the old label leaves the index
        assert [h.latent for h in st.search("dolphins")] == [8]
        assert st.search('"; DROP TABLE features; --') == []  # quoted as words, never SQL


def test_list_features_sorts_filters_and_pages(built):
    path, *_ = built
    with FeatureStore.open(path) as st:
        by_freq = st.list_features(sort="freq", limit=24)
        freqs = [s.freq for s in by_freq]
        assert freqs == sorted(freqs, reverse=True)
        assert [s.latent for s in st.list_features(sort="latent", offset=5, limit=3)] == [5, 6, 7]
        assert [s.latent for s in st.list_features(sort="latent", descending=True, limit=2)] == [23, 22]
        lvl1 = st.list_features(filter={"level": 1}, limit=100)
        assert lvl1 and all(s.level == 1 for s in lvl1) and st.count_features({"level": 1}) == len(lvl1)
        alive = st.count_features({"alive_only": True})
        assert alive + st.count_features({"flags": ["dead"]}) == 24
        mid = st.list_features(filter={"min_freq": freqs[10], "max_freq": freqs[3]}, limit=100)
        assert all(freqs[10] <= s.freq <= freqs[3] for s in mid)
        with pytest.raises(ValueError, match="unknown sort"):
            st.list_features(sort="freq; DROP TABLE features")
        with pytest.raises(ValueError, match="unknown filter key"):
            st.list_features(filter={"nope": 1})


def test_matryoshka_parent_links_from_co_firing_and_decoder(tmp_path):
    """Latents 0, 1 are level 0; 2, 3 level 1. Latent 2 fires only together with latent 0 (its
    parent by co-firing). Latent 1 fires on nearly every token: it is nobody's parent by co-firing,
    though latent 3 fires only with it; latent 3's decoder is latent 1's (parent by cosine)."""
    from features import TensorSource

    g = torch.Generator().manual_seed(0)
    n = 200
    x = torch.zeros(n, 4)
    x[:, 0] = (torch.rand(n, generator=g) < 0.3).float() * (1 + torch.rand(n, generator=g))
    x[:, 1] = (torch.rand(n, generator=g) < 0.95).float() * (1 + torch.rand(n, generator=g))  # dense: co-fires with all
    x[:, 2] = (x[:, 0] > 0).float() * (torch.rand(n, generator=g) < 0.4).float() * 2.0
    x[x[:, 2] > 0, 1] = 1.5  # the dense latent fires on every firing of latent 2 too ...
    x[:, 3] = (x[:, 1] > 0).float() * (torch.rand(n, generator=g) < 0.3).float()  # latent 3 fires only with it
    sae = identity_sae(4, arch="matryoshka_batchtopk")
    with torch.no_grad():
        sae.W_dec[3] = torch.tensor([0.05, 1.0, 0.0, 0.0])
        sae.W_dec[2] = torch.tensor([0.0, 0.1, 1.0, 0.0])  # ... and has the closer decoder: only its lift rules it out
    src = TensorSource(x, torch.full((n // 10, 10), 7))
    path = tmp_path / "m.db"
    build_feature_store(path, sae, src, small_config(n_quantile=16, flag_min_fires=4), progress=False)
    with FeatureStore.open(path) as st:
        f2, f3 = st.feature(2), st.feature(3)
        assert (f2.level, f2.parent.parent_latent, f2.parent.method, f2.parent.coact) == (1, 0, "coact", 1.0)
        assert (f3.parent.parent_latent, f3.parent.method) == (1, "decoder") and f3.parent.cosine > 0.99
        assert [c.child_latent for c in st.feature(0).children] == [2]
        assert st.feature(0).parent is None
        assert 0 in [n.latent for n in f2.coact_neighbours]
        assert "dense" in st.feature(1).stats.flags
        assert [c.child_latent for c in st.feature(1).children] == [3]  # by decoder only, not by co-firing


def test_a_second_concurrent_build_is_refused(tmp_path):
    from features.store import writer_lock

    path = tmp_path / "busy.db"
    with writer_lock(path):
        with pytest.raises(StoreError, match=f"busy.db is being written by process {os.getpid()} on "):
            build_feature_store(path, make_sae(), random_source(), small_config(), progress=False)
    build_feature_store(path, make_sae(), random_source(), small_config(), progress=False)


def test_current_scores_match_the_feature_records_in_one_query(built, tmp_path):
    """`current_scores` (the web list's scores) agrees with `feature(i).scores` for every case: scores of
    the current label, of a replaced label (hidden), label-free ones, the latest of several, none."""
    path, *_ = built
    copy = tmp_path / "scores.db"
    copy.write_bytes(path.read_bytes())
    with FeatureStore.open(copy, readonly=False) as st:
        st.write_label(1, "old idea", provenance=prov())
        st.write_scores(1, {"detection": 0.9})  # belongs to the old label: hidden once relabelled
        st.write_label(1, "new idea", provenance=prov())
        st.write_scores(1, {"fuzzing": 0.4})
        st.write_label(2, "two", provenance=prov())
        st.write_scores(2, {"detection": 0.2})
        st.write_scores(2, {"detection": 0.6})  # the latest wins
        st.write_scores(3, {"detection": 0.5}, label_id=None)  # label-free, no label at all
        st.write_label(5, "unscored", provenance=prov())
        ids = [1, 2, 3, 5, 6]
        for method in ("detection", "fuzzing"):
            expected = {}
            for i in ids:
                first = next((s.value for s in st.feature(i).scores if s.method == method), None)
                if first is not None:
                    expected[i] = first
            assert st.current_scores(ids, method) == expected
        assert st.current_scores(ids, "detection") == {2: 0.6, 3: 0.5}
        assert st.current_scores([], "detection") == {}


def test_every_sort_and_direction_orders_as_specified_with_nulls_last_and_pages_that_tile(built, tmp_path):
    """The list query reads the page's ids through the sort column's index where it can; the order
    must stay: by the value (NULLs last, whatever the direction), then by id; pages tile the list."""
    path, *_ = built
    copy = tmp_path / "sorts.db"
    copy.write_bytes(path.read_bytes())
    with FeatureStore.open(copy, readonly=False) as st:
        for i, text in [(3, "b"), (1, "a"), (7, "b"), (9, "c")]:
            st.write_label(i, text, provenance=prov())
        for i, v in [(3, 0.5), (7, 0.5), (2, 0.9)]:
            st.write_scores(i, {"detection": v}, label_id=None)
        st.set_recommended_strength(4, 2.0, source="t")
        st.set_recommended_strength(6, 2.0, source="t")
        n = st.count_features()
        recs = {i: st.feature(i) for i in range(n)}
        value = {
            "latent": lambda i: i, "freq": lambda i: recs[i].stats.freq, "n_fires": lambda i: recs[i].stats.n_fires,
            "mean_act": lambda i: recs[i].stats.mean_act, "max_act": lambda i: recs[i].stats.max_act,
            "typical_max_act": lambda i: recs[i].stats.typical_max_act, "level": lambda i: recs[i].level,
            "label": lambda i: recs[i].label.text if recs[i].label else None,
            "recommended_strength": lambda i: recs[i].recommended_strength,
            "score:detection": lambda i: next((s.value for s in recs[i].scores if s.method == "detection"), None),
        }
        for sort, get in value.items():
            for desc in (False, True):
                have = [i for i in range(n) if get(i) is not None]
                expected = sorted(have, key=lambda i: (-get(i) if desc else get(i), i)) if sort != "label" else \
                    sorted(have, key=lambda i: i)
                if sort == "label":  # strings: sort by text, then id, reversed text order when descending
                    expected = sorted(have, key=lambda i: i)
                    expected.sort(key=lambda i: get(i), reverse=desc)
                expected += sorted(i for i in range(n) if get(i) is None)
                got = [s.latent for s in st.list_features(sort=sort, descending=desc, limit=n)]
                assert got == expected, (sort, desc)
                pages = [s.latent for off in range(0, n, 5) for s in st.list_features(sort=sort, descending=desc, offset=off, limit=5)]
                assert pages == expected, (sort, desc)
        assert [s.latent for s in st.list_features(sort="freq", filter={"alive_only": True}, limit=3)] == \
            [i for i in sorted(range(n), key=lambda i: (-recs[i].stats.freq, i)) if recs[i].stats.n_fires > 0][:3]


def test_label_and_score_orders_follow_new_writes_from_this_and_other_connections(built, tmp_path):
    """Label / score sorts and filters read per-connection tables of current labels and latest
    scores; they must be rebuilt after a write through this connection and after a commit by
    another process's connection (a labelling run while the web app serves the store)."""
    path, *_ = built
    copy = tmp_path / "fresh.db"
    copy.write_bytes(path.read_bytes())
    with FeatureStore.open(copy, readonly=False) as writer, FeatureStore.open(copy) as reader:
        writer.write_label(5, "kelp", provenance=prov())
        writer.write_scores(5, {"detection": 0.3}, label_id=None)
        for st in (writer, reader):
            assert [s.latent for s in st.list_features(sort="label", limit=1)] == [5]
            assert [s.latent for s in st.list_features(sort="score:detection", limit=1)] == [5]
            assert st.count_features({"label_contains": "kelp"}) == 1
        writer.write_label(2, "anchor", provenance=prov())  # sorts before "kelp"
        writer.write_label(5, "zebra", provenance=prov())  # relabelled: "kelp" is no longer current
        writer.write_scores(9, {"detection": 0.8}, label_id=None)
        for st in (writer, reader):
            assert [s.latent for s in st.list_features(sort="label", limit=2)] == [2, 5]
            assert [s.label for s in st.list_features(sort="label", limit=2)] == ["anchor", "zebra"]
            assert [s.latent for s in st.list_features(sort="score:detection", limit=2)] == [9, 5]
            assert st.count_features({"label_contains": "kelp"}) == 0
            assert [s.latent for s in st.list_features(filter={"score_method": "detection", "min_score": 0.5})] == [9]


def test_build_rows_are_the_tables_columns_in_order(built):
    """The build's typed rows (features.store.rows) name their table's columns in the table's order:
    the store's INSERTs are made from the fields, and a row read back by those columns is the row."""
    from features.store.rows import CorrelationRow, ExampleRow, FeatureRow, HistogramRow, LogitRow, NeighbourRow

    path, *_ = built
    with FeatureStore.open(path) as st:
        def columns(table):
            return tuple(r[1] for r in st._conn.execute(f"PRAGMA table_info({table})"))

        assert FeatureRow._fields == columns("features")[:len(FeatureRow._fields)]
        assert columns("features")[len(FeatureRow._fields):] == (  # written by steering, not by the build
            "recommended_strength", "strength_source", "strength_details", "strength_updated_at")
        assert ExampleRow._fields == columns("examples")[1:]  # after the id SQLite assigns
        for row_type, table in ((HistogramRow, "histograms"), (LogitRow, "logit_effects"), (NeighbourRow, "neighbours"),
                                (CorrelationRow, "correlations")):
            assert row_type._fields == columns(table), table
        row = FeatureRow(*st._conn.execute(f"SELECT {', '.join(FeatureRow._fields)} FROM features WHERE latent = 20").fetchone())
        rec = st.feature(20)
        assert (row.latent, row.n_fires, row.max_act, row.level) == (20, rec.stats.n_fires, rec.stats.max_act, rec.level)
        assert row.flags.split() == list(rec.stats.flags) and row.parent_latent == (rec.parent.parent_latent if rec.parent else None)


def _columns(path) -> dict[str, list[str]]:
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE "
                                            "'CREATE VIRTUAL%' AND name NOT LIKE 'feature_fts_%' ORDER BY name")]
        return {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in tables}


def _version_1_store(built, path):
    """A copy of the built store as schema version 1 wrote it: a latent's columns under their old names
    (and, as in version 2, every example's window in its own row)."""
    version_2_store(built[0], path)
    old_names = {("features", "latent"): "id", ("features", "parent_latent"): "parent_id",
                 ("neighbours", "other_latent"): "other_id", ("build_progress", "first_latent"): "first_id",
                 ("build_progress", "end_latent"): "end_id"}
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE correlations")  # added after version 2 shipped: a version-1 store has none
    with sqlite3.connect(path) as db:
        for table, cols in _columns(path).items():
            for col in cols:
                if col == "latent" or col.endswith("_latent"):
                    old = old_names.get((table, col), "feature_id")
                    db.execute(f"ALTER TABLE {table} RENAME COLUMN {col} TO {old}")
        db.execute("UPDATE schema_version SET version = 1")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    cols = _columns(path)
    assert "id" in cols["features"] and "feature_id" in cols["examples"] and "other_id" in cols["neighbours"]
    assert not any(c == "latent" or c.endswith("_latent") for cs in cols.values() for c in cs)


def test_a_version_1_store_is_refused_read_only_naming_the_upgrade_and_upgraded_when_opened_for_writing(built, tmp_path,
                                                                                                      capsys):
    from saesteer.cli import main

    old = tmp_path / "old.db"
    _version_1_store(built, old)
    with pytest.raises(StoreError, match=f"saesteer features upgrade {old}"):
        FeatureStore.open(old)
    capsys.readouterr()
    assert main(["features", "upgrade", str(old)]) == 0
    assert f"{old}: feature-store schema version 3 (upgraded from version 1)" in capsys.readouterr().out
    assert _columns(old) == _columns(built[0])  # every column as a store made now has it
    with FeatureStore.open(old) as up, FeatureStore.open(built[0]) as new:
        assert up.meta["schema_version"] == 3 and up.integrity_check() == "ok"
        # everything but the correlations, which the upgrade cannot make (an empty table: rebuild to get them)
        assert all(not up.feature(i).correlated for i in range(up.d_sae))
        assert [up.feature(i) for i in range(up.d_sae)] == [replace(new.feature(i), correlated=[]) for i in range(new.d_sae)]
        assert up.list_features(sort="latent", limit=up.d_sae) == new.list_features(sort="latent", limit=new.d_sae)
        word = new.feature(3).top_examples[0].tokens[new.feature(3).top_examples[0].centre].strip()
        assert 3 in [h.latent for h in up.search(word)] and up.search(word) == new.search(word)


def test_a_failed_upgrade_leaves_the_version_1_store_as_it_was(built, tmp_path, monkeypatch):
    import features.store.base as base

    old = tmp_path / "old.db"
    _version_1_store(built, old)
    before = _columns(old)
    monkeypatch.setattr(base, "RENAMED_COLUMNS", base.RENAMED_COLUMNS[:3] + (("features", "n_fires", "freq"),))
    with pytest.raises(sqlite3.OperationalError):
        FeatureStore.open(old, readonly=False)  # renaming n_fires onto an existing column fails half-way
    assert _columns(old) == before
    with sqlite3.connect(old) as db:
        assert db.execute("SELECT version FROM schema_version").fetchone()[0] == 1
