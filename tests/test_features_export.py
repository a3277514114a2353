"""Static HTML export: pages for every latent, plotly beside them, and untrusted text escaped."""

import re

import pytest

from features import FeatureStore, LabelProvenance, build_feature_store
from features.export import export_html, script_json
from helpers.feature_fixtures import WordTokenizer, make_sae, random_source, small_config, single_thread


EVIL_LABEL = "<script>alert(1)</script>"
EVIL_WORDS = ["<pad>", "<bos>", "</script><script>alert(2)</script>", "<img src=x onerror=alert(3)>", "a&b"] + [
    f"w{i}" for i in range(5, 64)]


one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def test_export_escapes_untrusted_text_and_works_offline(tmp_path):
    src = random_source(seed=4, n_contexts=16, context_length=10, vocab=8)  # tokens 2..7: the evil words appear
    sae = make_sae("topk", d_in=8, d_sae=12, seed=4)
    path = tmp_path / "x.db"
    build_feature_store(path, sae, src, small_config(), tokenizer=WordTokenizer(EVIL_WORDS), progress=False)
    with FeatureStore.open(path, readonly=False) as st:
        alive = st.list_features(sort="freq", limit=1)[0].latent
        st.write_label(alive, EVIL_LABEL, explanation="<b onmouseover=alert(4)>x</b>",
                       provenance=LabelProvenance("<judge>", "offline", "v<1>"))
        index = export_html(st, tmp_path / "dash").index
    out = tmp_path / "dash"
    assert (out / "plotly.min.js").stat().st_size > 1_000_000  # shipped once beside the pages
    pages = sorted((out / "f").glob("*.html"))
    assert len(pages) == 12
    for page in [index] + pages:
        html = page.read_text()
        # every <script> in the page is ours: the plotly include, the chart data, the table script
        tags = re.findall(r"<script[^>]*>", html)
        assert all(t in ("<script>", '<script src="../plotly.min.js">') for t in tags), tags
        assert "alert(" not in html.replace("&lt;script&gt;alert(1)&lt;/script&gt;", "").replace(
            "&lt;/script&gt;&lt;script&gt;alert(2)&lt;/script&gt;", "").replace(
            "&lt;img src=x onerror=alert(3)&gt;", "").replace("&lt;b onmouseover=alert(4)&gt;", "").replace(
            "\\u003c/script\\u003e\\u003cscript\\u003ealert(2)\\u003c/script\\u003e", "").replace(
            "&amp;lt;/script&amp;gt;&amp;lt;script&amp;gt;alert(2)&amp;lt;/script&amp;gt;", "").replace(
            "&amp;lt;img src=x onerror=alert(3)&amp;gt;", ""), page
        assert "<img" not in html and "<b " not in html
    labelled = (out / "f" / f"{alive:05d}.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in labelled and "(offline judge)" in labelled
    assert "Plotly.newPlot('hist'" in labelled and "Top activations" in labelled
    assert EVIL_LABEL not in index.read_text() and "&lt;script&gt;alert(1)" in index.read_text()


def test_script_json_cannot_close_the_script_element():
    s = script_json({"t": "</script><script>alert(1)</script>", "u": "a\u2028b&c"})
    assert "<" not in s and ">" not in s and "&" not in s and "\u2028" not in s


def test_a_page_says_what_each_number_is(tmp_path, capsys):
    """The recommended strength is stored in multiples of the typical max (steering.store): the page
    and `features show` say so (they showed a bare number, read as an activation); the co-activation
    table names its score (an estimated Jaccard index) and its count (co-firings among the latent's
    sampled firings, not over all tokens); correlated activations show Pearson and cosine."""
    from saesteer.cli import main

    src = random_source(seed=5, n_contexts=16, context_length=10)
    sae = make_sae("topk", d_in=8, d_sae=12, seed=5)
    path = tmp_path / "x.db"
    cfg = small_config()
    build_feature_store(path, sae, src, cfg, tokenizer=WordTokenizer(), progress=False)
    with FeatureStore.open(path, readonly=False) as st:
        f = next(s.latent for s in st.list_features(sort="freq", limit=12)
                 if st.feature(s.latent).coact_neighbours and st.feature(s.latent).correlated)
        st.set_recommended_strength(f, 2.5, source="sweep")
        rec = st.feature(f)
        export_html(st, tmp_path / "dash", [f])
    page = (tmp_path / "dash" / "f" / f"{f:05d}.html").read_text()
    assert "2.5x typical max (sweep)" in page
    n_sampled = min(rec.stats.n_fires, cfg.n_quantile)
    assert f"<th>Jaccard (est.)</th><th>co-fired in (of {n_sampled} sampled firings)</th>" in page
    assert "<th>Pearson</th><th>cosine</th>" in page and f"{rec.correlated[0].pearson:.3f}" in page
    assert main(["features", "show", str(path), str(f)]) == 0
    assert "2.5x typical max" in capsys.readouterr().out


def test_an_imported_label_says_where_it_came_from(tmp_path):
    """As `features show` and the web page do (features.imported_labels.label_source): the exported
    page of a Neuronpedia label names its source and links its page there, a delphi label names its
    run; an address off neuronpedia.org is not linked."""
    src = random_source(seed=5, n_contexts=16, context_length=10, vocab=8)
    path = tmp_path / "x.db"
    build_feature_store(path, make_sae("topk", d_in=8, d_sae=6, seed=5), src, small_config(),
                        tokenizer=WordTokenizer(EVIL_WORDS), progress=False)
    site = "https://www.neuronpedia.org/gpt2-small/6-res-jb"
    with FeatureStore.open(path, readonly=False) as st:
        st.write_label(0, "closing brackets", provenance=LabelProvenance(
            "gpt-4o-mini", "neuronpedia", "oai_token-act-pair",
            extra={"neuronpedia_id": "gpt2-small/6-res-jb", "url": f"{site}/0"}))
        st.write_label(1, "numbers", provenance=LabelProvenance(
            "claude", "neuronpedia", "np", extra={"neuronpedia_id": "x/y", "url": "https://evil.example/1"}))
        st.write_label(2, "ships", provenance=LabelProvenance(
            "llama", "delphi", "delphi default explainer", extra={"delphi": {"run": "/r/run9", "module": "layers.2"}}))
        st.write_label(3, "ours", provenance=LabelProvenance("gpt-4o-mini", "openai", "v1"))
        export_html(st, tmp_path / "dash", latents=range(4))
    page = [(tmp_path / "dash" / "f" / f"{i:05d}.html").read_text() for i in range(4)]
    assert f'imported from <a href="{site}/0" rel="noopener noreferrer">Neuronpedia gpt2-small/6-res-jb</a>' in page[0]
    assert "imported from Neuronpedia x/y</p>" in page[1] and "evil.example" not in page[1]
    assert "imported from delphi run run9, module layers.2</p>" in page[2]
    assert "imported from" not in page[3]


def test_a_smaller_export_into_the_same_folder_removes_the_pages_it_no_longer_writes(tmp_path, capsys):
    """An export of latents 0-3 into the folder of an earlier export of all 12 left pages of the
    other 8 there, linked from nowhere but served as current; the pages an export wrote go
    (saes.export_folder), a file the user put there or a page edited since stays."""
    from saesteer.cli import main

    src = random_source(seed=6, n_contexts=16, context_length=10)
    path = tmp_path / "x.db"
    build_feature_store(path, make_sae("topk", d_in=8, d_sae=12, seed=6), src, small_config(),
                        tokenizer=WordTokenizer(), progress=False)
    out = tmp_path / "dash"
    assert main(["features", "export", str(path), str(out), "--no-progress"]) == 0
    assert len(list((out / "f").glob("*.html"))) == 12
    (out / "notes.md").write_text("my notes on these latents, café ☕\n", encoding="utf-8")
    (out / "f" / "mine.html").write_text("<p>my own page</p>")
    edited = out / "f" / "00011.html"
    edited.write_text(edited.read_text() + "<!-- my note -->")
    capsys.readouterr()
    assert main(["features", "export", str(path), str(out), "--latents", "0-3", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert sorted(p.name for p in (out / "f").iterdir()) == ["00000.html", "00001.html", "00002.html", "00003.html",
                                                            "00011.html", "mine.html"]
    assert (out / "notes.md").is_file() and (out / "plotly.min.js").is_file() and (out / "index.html").is_file()
    assert "removed 7 pages an earlier export wrote there for latents not exported now" in said
    # the same export again removes nothing more
    assert main(["features", "export", str(path), str(out), "--latents", "0-3", "--no-progress"]) == 0
    assert "removed" not in capsys.readouterr().out and len(list((out / "f").iterdir())) == 6
