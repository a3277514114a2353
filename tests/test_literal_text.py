"""Labels, examples and user text are data: every command prints them literally, never as rich
markup (a label "[/x]" used to crash `features show/list/top-on-text`; "[bold]" vanished)."""

from __future__ import annotations

import pytest
import torch

from saesteer.cli import main

HOOK = "blocks.2.hook_resid_post"
LABELS = ("[/x] closing tag", "[bold]loud[/bold] words", "arr[0] and :fire: emoji")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A toy store whose every alive latent has one of LABELS (judge kind "human")."""
    import saes
    from features import FeatureStore, LabelProvenance

    d = tmp_path_factory.mktemp("literal")
    assert main(["cache", "--model", "toy", "--dataset", "toy", "--max-tokens", "2048", "--shard-contexts", "8",
                 "--hooks", HOOK, "--out", str(d / "cache"), "--no-progress"]) == 0
    sae = saes.create_sae("topk", 128, 32, k=6, generator=torch.Generator().manual_seed(0),
                          metadata={"hook_name": HOOK, "model_name": "toyworld-tiny"})
    saes.save_sae(sae, d / "sae")
    path = d / "f.db"
    assert main(["features", "build", "--sae", str(d / "sae"), "--cache", str(d / "cache"), "--out", str(path),
                 "--no-progress", "--top-k", "4", "--n-quantile", "4", "--window-before", "4", "--window-after", "2",
                 "--write-block", "16"]) == 0
    with FeatureStore.open(path, readonly=False) as st:
        alive = [r.latent for r in st.list_features(sort="latent", filter={"alive_only": True}, limit=32)]
        for k, i in enumerate(alive):
            st.write_label(i, LABELS[k % len(LABELS)], provenance=LabelProvenance("someone", "human", "manual"))
    return path, alive


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # tables on one line per row: labels are not wrapped


def _run(capsys, *argv) -> str:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_show_list_search_print_labels_literally(store, capsys, wide):
    path, alive = store
    for k, i in enumerate(alive[:3]):
        out = _run(capsys, "features", "show", str(path), str(i))
        assert f"feature {i}: {LABELS[k]}" in out
    out = _run(capsys, "features", "list", str(path), "--labelled", "--limit", "32")
    for label in LABELS:
        assert label in out
    out = _run(capsys, "features", "search", str(path), "loud")
    assert "[bold]loud[/bold] words" in out
    out = _run(capsys, "features", "search", str(path), "[/x]")  # the query is printed back too
    assert "'[/x]'" in out and "[/x] closing tag" in out


def test_top_on_text_prints_labels_and_text_literally(store, capsys, wide):
    path, _ = store
    out = _run(capsys, "features", "top-on-text", str(path), "the sailor [bold] sees a whale .", "--top", "6")
    assert "the sailor [bold] sees a whale ." in out  # the title
    assert any(label in out for label in LABELS)


def test_web_search_snippet_keeps_brackets(store):
    from features import FeatureStore
    from helpers.web_app import client
    from saesteer.web import Limits, ServeConfig, StoreEntry, create_app
    from saesteer.web.store_source import StoreCatalog

    path, _ = store
    app = create_app([StoreEntry("lit", StoreCatalog(FeatureStore.open(path), name="lit"))],
                     config=ServeConfig(port=8000), limits=Limits())
    with client(app) as c:
        hits = c.get("/api/stores/lit/search", params={"q": "loud"}).json()["items"]
        assert hits and hits[0]["snippet"] == "[bold]loud[/bold] words"
        page = c.get("/s/lit/search?q=loud", headers={"accept": "text/html"}).text
    assert "[bold]loud[/bold] words" in page and "<mark>bold</mark>" not in page
