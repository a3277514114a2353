"""Static HTML dashboards of a feature store: an index page and one page per latent, with plotly
charts (activation histogram, logit effects) and examples highlighted token by token.

    export_html(store, "out/dash")          # out/dash/index.html, out/dash/f/00042.html, out/dash/plotly.min.js

Opens offline: plotly.js (from the installed plotly package) is written once beside the pages.
An export into a folder an earlier one wrote removes the pages it no longer writes
(`saes.export_folder`), so the folder never serves a stale latent's page.
All text from the store (labels, explanations, tokens, example text) is untrusted: its control
and bidi characters are drawn (features.drawing), it is HTML-escaped, and data handed to plotly
is JSON with <, > and & escaped, so nothing from the store can open a tag or leave a <script>.
"""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from features.imported_labels import label_source
from features.records import Example, FeatureRecord, without_start_bos
from features.store import FeatureStore
from features.drawing import readable
from features.tokentext import character_spans, visible
from saes.fileio import atomic_open

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem;color:#222;max-width:1200px}
table{border-collapse:collapse}td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left}
th{cursor:pointer;background:#f5f5f5}.num{text-align:right;font-variant-numeric:tabular-nums}
.ex{font-family:ui-monospace,Menlo,monospace;font-size:.85rem;line-height:1.9;margin:.25rem 0;padding:.2rem .4rem;
background:#fafafa;border-left:3px solid #ddd;white-space:pre-wrap;word-break:break-word}
.tok{border-radius:2px}.centre{outline:1px solid #c33}.flag{background:#fee;color:#a00;padding:0 .3rem;
border-radius:3px;margin-right:.3rem;font-size:.8rem}.meta{color:#666;font-size:.85rem}.grid{display:flex;gap:1rem;flex-wrap:wrap}
.chart{width:560px;height:320px}h2{margin-top:1.6rem}a{color:#1a5fb4}.off{color:#a60}
"""

_SORT_JS = """
document.querySelectorAll('th[data-k]').forEach(function(th,i){th.addEventListener('click',function(){
var tb=th.closest('table').tBodies[0],rows=Array.from(tb.rows),num=th.dataset.k==='n',d=th.dataset.d=th.dataset.d==='1'?'0':'1';
rows.sort(function(a,b){var x=a.cells[i].dataset.v||a.cells[i].textContent,y=b.cells[i].dataset.v||b.cells[i].textContent;
if(num){x=parseFloat(x);y=parseFloat(y);if(isNaN(x))x=-Infinity;if(isNaN(y))y=-Infinity;}
return (x<y?-1:x>y?1:0)*(d==='1'?-1:1);});rows.forEach(function(r){tb.appendChild(r);});});});
var q=document.getElementById('q');if(q){q.addEventListener('input',function(){var s=q.value.toLowerCase();
document.querySelectorAll('tbody tr').forEach(function(r){r.style.display=r.textContent.toLowerCase().indexOf(s)>=0?'':'none';});});}
"""


def esc(text) -> str:
    """Any value as page text (None -> empty): its control, bidi and invisible characters drawn
    (features.drawing.readable: a U+202E in a label would reorder the rest of its line), HTML-escaped."""
    return html.escape(readable("" if text is None else str(text)), quote=True)


def script_json(obj) -> str:
    """JSON that is safe inside a <script> element (no <, >, & or line separators can close it)."""
    s = json.dumps(obj, allow_nan=False, default=str)
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _num(x, fmt: str = "{:.4g}") -> str:
    return "" if x is None or x != x else fmt.format(x)


def _page(title: str, body: str, plotly_src: str | None) -> str:
    head = f'<script src="{esc(plotly_src)}"></script>' if plotly_src else ""
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style>{head}</head><body>{body}"
        f"<script>{_SORT_JS}</script></body></html>"
    )


def _example_html(e: Example, scale: float) -> str:
    """One window: a span per piece of text, a character split over tokens being one span with the
    strongest of its tokens' activations (`character_spans`, as the web app draws it: a span per
    empty piece put gaps inside CJK text and cut accents off their letters)."""
    spans = []
    toks = (e.tokens or [str(t) for t in e.token_ids])[:len(e.acts)]
    for g, shown in character_spans(toks):
        act = max(e.acts[i] for i in g)
        alpha = 0.0 if scale <= 0 else max(0.0, min(1.0, act / scale))
        cls = "tok centre" if e.centre in g else "tok"
        style = f' style="background:rgba(255,140,0,{alpha:.3f})"' if alpha > 0 else ""
        title = " · ".join(f"{e.acts[i]:.4g}" for i in g)
        spans.append(f'<span class="{cls}"{style} title="{esc(title)}">{esc(shown)}</span>')
    info = f"act {e.activation:.4g}" + (f", quantile {e.quantile:.2f}" if e.quantile is not None else "")
    return f'<div class="ex" title="{esc(info)}">{"".join(spans)}</div>'


def _feature_link(i: int, label: str | None = None) -> str:
    text = f"#{i}" + (f" {label}" if label else "")
    return f'<a href="{i:05d}.html">{esc(text)}</a>'


def feature_page(store: FeatureStore, rec: FeatureRecord, plotly_src: str | None = "../plotly.min.js") -> str:
    parts = [f'<p><a href="../index.html">&larr; all features</a></p><h1>Feature {rec.latent}</h1>']
    parts += _label_html(rec)
    parts += _stats_html(rec)
    parts += _charts_html(rec)
    parts += _examples_html(store, rec)
    title = f"Feature {rec.latent}" + (f": {rec.label.text}" if rec.label else "")
    return _page(title, "".join(parts), plotly_src)


def _label_html(rec: FeatureRecord) -> list[str]:
    """A feature page's label (with its provenance), scores and flags."""
    st = rec.stats
    parts = []
    if rec.label is not None:
        parts.append(f"<h2 style=\"margin-top:.3rem\">{esc(rec.label.text)}</h2>")
        if rec.label.explanation:
            parts.append(f"<p>{esc(rec.label.explanation)}</p>")
        p = rec.label.provenance
        if p is not None:
            off = ' <span class="off">(offline judge)</span>' if p.offline else ""
            parts.append(f'<p class="meta">label by {esc(p.judge_model)} ({esc(p.judge_kind)}){off}, prompt '
                         f'{esc(p.prompt_version)}, {len(p.examples_used)} examples, {esc(rec.label.created_at)}'
                         f'{_source_html(p)}</p>')
    if rec.scores:
        parts.append("<p class=\"meta\">scores: " + ", ".join(
            f"{esc(s.method)} {s.value:.3f}" + (" (offline)" if s.offline else "") for s in rec.scores) + "</p>")
    if st.flags:
        parts.append("<p>" + "".join(f'<span class="flag">{esc(f)}</span>' for f in st.flags) + "</p>")
    return parts


def _source_html(p) -> str:
    """Where an imported label came from, as `features show` and the web page say it (its
    Neuronpedia page linked); "" for a label made here."""
    source = label_source(p)
    if source is None:
        return ""
    text, url = source
    where = f'<a href="{esc(url)}" rel="noopener noreferrer">{esc(text)}</a>' if url else esc(text)
    return f", imported from {where}"


def _stats_html(rec: FeatureRecord) -> list[str]:
    """A feature page's statistics table and its Matryoshka parent / children links."""
    st = rec.stats
    parts = []
    rows = [("firing frequency", _num(st.freq)), ("firings", str(st.n_fires)), ("mean act (when firing)", _num(st.mean_act)),
            ("max act", _num(st.max_act)), ("typical max (median of top)", _num(st.typical_max_act)),
            ("p50 / p90 / p99", " / ".join(_num(q) for q in (st.q50, st.q90, st.q99))),
            ("positions", f"{st.min_pos}..{st.max_pos}" if st.min_pos is not None else ""),
            ("decoder norm", _num(st.decoder_norm))]
    if rec.recommended_strength is not None:  # stored in multiples of the typical max (steering.store)
        rows.append(("recommended strength", f"{_num(rec.recommended_strength)}x typical max ({rec.strength_source})"))
    if rec.level is not None:
        rows.append(("Matryoshka level", str(rec.level)))
    parts.append("<table>" + "".join(f"<tr><td>{esc(k)}</td><td class=\"num\">{esc(v)}</td></tr>" for k, v in rows) + "</table>")
    links = []
    if rec.parent is not None:
        links.append("parent: " + _feature_link(rec.parent.parent_latent))
    if rec.children:
        links.append("children: " + ", ".join(_feature_link(c.child_latent) for c in rec.children[:50]))
    if links:
        parts.append("<p>" + " &middot; ".join(links) + "</p>")
    return parts


def _charts_html(rec: FeatureRecord) -> list[str]:
    """A feature page's activation histogram and logit effects (plotly), if it has either."""
    parts = []
    charts = []
    data = {}
    if rec.histogram.counts and any(rec.histogram.counts):
        w = rec.histogram.bin_width
        data["hist"] = {"x": [(i + 0.5) * w for i in range(len(rec.histogram.counts))], "y": rec.histogram.counts, "w": w}
        charts.append('<div id="hist" class="chart"></div>')
    if rec.logits is not None and (rec.logits.promoted or rec.logits.suppressed):
        # each token drawn as the web app's logit lists draw it (a "\n" token as ↵, not a blank label)
        toks = [esc(visible(t.token)) for t in rec.logits.suppressed][::-1] + [esc(visible(t.token)) for t in rec.logits.promoted][::-1]
        vals = [t.value for t in rec.logits.suppressed][::-1] + [t.value for t in rec.logits.promoted][::-1]
        # unique category labels (plotly merges equal ones): suffix the token id invisibly
        ids = [t.token_id for t in rec.logits.suppressed][::-1] + [t.token_id for t in rec.logits.promoted][::-1]
        data["logits"] = {"y": [f"{t} ({i})" for t, i in zip(toks, ids)], "x": vals}
        charts.append('<div id="logits" class="chart"></div>')
    if charts:
        parts.append('<div class="grid">' + "".join(charts) + "</div>")
        parts.append(
            "<script>var D=" + script_json(data) + ";"
            "if(window.Plotly){if(D.hist)Plotly.newPlot('hist',[{type:'bar',x:D.hist.x,y:D.hist.y,width:D.hist.w,"
            "marker:{color:'#e8871e'}}],{title:'activation histogram (firings)',margin:{t:40,r:10},"
            "xaxis:{title:'activation'},yaxis:{title:'count'}},{displaylogo:false,responsive:true});"
            "if(D.logits)Plotly.newPlot('logits',[{type:'bar',orientation:'h',x:D.logits.x,y:D.logits.y,"
            "marker:{color:D.logits.x.map(function(v){return v>=0?'#2a7':'#c44';})}}],{title:'logit effects "
            "(direct path)',margin:{t:40,l:140,r:10}},{displaylogo:false,responsive:true});}</script>"
        )
    return parts


def _examples_html(store: FeatureStore, rec: FeatureRecord) -> list[str]:
    """A feature page's example contexts (top, quantiles, negatives) and neighbour tables."""
    st = rec.stats
    parts = []
    for title, exs in (("Top activations", rec.top_examples), ("Across the activation distribution", rec.quantile_examples),
                       ("Random non-activating contexts", rec.negative_examples)):
        if exs:
            scale = st.max_act or 1.0
            parts.append(f"<h2>{esc(title)}</h2>" + "".join(
                _example_html(without_start_bos(e, store.meta.get("bos_id")), scale) for e in exs))
    q = (store.meta.get("build_config") or {}).get("n_quantile")
    n_sampled = min(st.n_fires, int(q)) if q is not None else None  # the co-activation sample's size
    for title, score, count, nbs in (
            ("Decoder-cosine neighbours", "cosine", "", rec.decoder_neighbours),
            ("Co-activation neighbours", "Jaccard (est.)",
             f"co-fired in (of {n_sampled} sampled firings)" if n_sampled is not None else "co-fired in (sampled firings)",
             rec.coact_neighbours)):
        if nbs:
            parts.append(f"<h2>{esc(title)}</h2><table><tr><th>feature</th><th>{esc(score)}</th><th>{esc(count)}</th></tr>"
                         + "".join(f"<tr><td>{_feature_link(n.latent, n.label)}</td><td class=\"num\">{n.score:.3f}</td>"
                                   f"<td class=\"num\">{'' if n.count is None else n.count}</td></tr>" for n in nbs)
                         + "</table>")
    if rec.correlated:
        parts.append("<h2>Correlated activations</h2><table><tr><th>feature</th><th>Pearson</th><th>cosine</th></tr>"
                     + "".join(f"<tr><td>{_feature_link(c.latent, c.label)}</td><td class=\"num\">{c.pearson:.3f}</td>"
                               f"<td class=\"num\">{c.cossim:.3f}</td></tr>" for c in rec.correlated) + "</table>")
    return parts


@dataclass
class HtmlExport:
    index: Path  # the index page
    pages: int  # latent pages written
    removed: list[Path]  # pages an earlier export into the folder wrote that this one does not


def export_html(
    store: FeatureStore,
    out_dir: str | Path,
    latents: Iterable[int] | None = None,
    *,
    limit: int | None = None,
    title: str | None = None,
    progress: bool = False,
) -> HtmlExport:
    """Write the dashboards for `latents` (default: every written latent, or the `limit`
    most frequent) to `out_dir`, and remove the pages an earlier export there wrote that this one
    does not (unchanged since)."""
    from tqdm.auto import tqdm

    from saes.export_folder import ExportFolder

    out = Path(out_dir)
    folder = ExportFolder(out, "html")
    (out / "f").mkdir(parents=True, exist_ok=True)
    import plotly

    js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not js.is_file():
        raise FileNotFoundError(f"plotly.min.js not found in the plotly package ({js}); reinstall plotly")
    if not (out / "plotly.min.js").is_file() or (out / "plotly.min.js").stat().st_size != js.stat().st_size:
        # atomically: a full disk leaves no half script (every page would load it) and names the file
        # written, not the package's (shutil.copyfile's error leads with its source)
        with open(js, "rb") as src, atomic_open(out / "plotly.min.js") as dst:
            shutil.copyfileobj(src, dst)
    folder.wrote(out / "plotly.min.js")
    if latents is None:
        summaries = store.list_features(sort="freq" if limit else "latent", limit=limit or store.d_sae)
    else:
        ids = list(dict.fromkeys(int(i) for i in latents))
        for i in ids:
            store._check_latent(i)
        found = {s.latent: s for s in store.list_features(filter={"latents": ids}, limit=len(ids))}
        summaries = [found[i] for i in ids if i in found]
    for s in tqdm(summaries, desc="exporting", disable=not progress):
        page = feature_page(store, store.feature(s.latent)).encode("utf-8")
        _write_page(out / "f" / f"{s.latent:05d}.html", page)
        folder.wrote(out / "f" / f"{s.latent:05d}.html", page)
    meta = store.meta
    sae = meta.get("sae") or {}
    head = title or f"Features of {sae.get('architecture', 'SAE')} d_sae={store.d_sae} ({sae.get('hook_name') or ''})"
    rows = []
    for s in summaries:
        flags = "".join(f'<span class="flag">{esc(f)}</span>' for f in s.flags)
        rows.append(
            f'<tr><td data-v="{s.latent}"><a href="f/{s.latent:05d}.html">{s.latent}</a></td><td>{esc(s.label)}</td>'
            f'<td class="num" data-v="{s.freq}">{_num(s.freq)}</td><td class="num" data-v="{s.max_act}">{_num(s.max_act)}</td>'
            f'<td class="num" data-v="{s.typical_max_act if s.typical_max_act is not None else ""}">{_num(s.typical_max_act)}</td>'
            f"<td>{flags}</td></tr>"
        )
    body = (
        f"<h1>{esc(head)}</h1><p class=\"meta\">{len(summaries)} of {store.d_sae} latents; "
        f"{esc(meta.get('n_rows'))} tokens; store {esc(Path(store.path).name)}</p>"
        '<p><input id="q" placeholder="filter..." size="40"></p>'
        '<table><thead><tr><th data-k="n">id</th><th data-k="s">label</th><th data-k="n">freq</th><th data-k="n">max act</th>'
        '<th data-k="n">typical max</th><th data-k="s">flags</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>"
    )
    index = out / "index.html"
    page = _page(head, body, None).encode("utf-8")
    _write_page(index, page)
    folder.wrote(index, page)
    return HtmlExport(index, len(summaries), folder.finish())


def _write_page(path: Path, data: bytes) -> None:
    """Write one page (not fsynced: thousands of pages, and the export is re-run after a crash). A failed
    write (a full disk) removes the partial page, which a browser would show cut off, and names it: a
    write error names no file."""
    try:
        path.write_bytes(data)
    except OSError as e:
        path.unlink(missing_ok=True)
        if e.filename is None:
            e.filename = str(path)
        raise
