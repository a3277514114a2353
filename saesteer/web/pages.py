"""Server-rendered HTML pages over the same catalog as the API.

Templates are Jinja2 with autoescape on for every template: labels, tokens and examples from the
store are escaped wherever they appear. Charts get their data as JSON in a single-quoted data
attribute (`|tojson` escapes <, >, & and ' there) and only ever numbers: plotly interprets some
HTML-like markup inside strings, so no data-derived string is handed to it. Scripts are static
files (the CSP forbids inline ones).

Escaped is not yet readable: a bidi override in a label or a snippet reorders the rest of its line
(Trojan Source), and control and zero-width characters show as nothing. So every `{{ }}` string is
drawn first (`_drawn_output`, features.drawing.readable: ⟨RLO⟩, ␛) - except the values of form
fields, written `{{ text|field }}`, which must hand the user's text back as it was typed. The
playground's generated text, which steer.js writes, is drawn there by the same rule (readable.js).

Pages that only read the store are plain `def` routes, run in worker threads as the API's reads are
(`api.py`): never on the event loop.
"""

from __future__ import annotations

import math
from typing import Annotated, Optional
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from pydantic import Field

from features.drawing import CONTROL_NAMES, RTL_BLOCKS, readable
from features.tokentext import visible
from saesteer.web import api
from saesteer.web.head import is_head
from saesteer.web.security import ascii_digits
from saesteer.web.schemas import Example
from saesteer.web.sources import FeatureQuery, StoreEntry
from saesteer.web.tokenspans import fire_spans, token_spans

__all__ = ["router", "make_templates", "render_error"]

router = APIRouter(include_in_schema=False)

_TEMPLATE_DIR = __import__("pathlib").Path(__file__).resolve().parent / "templates"


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits or abs(x) < 10 ** -(digits - 1):
        return f"{x:.{digits - 1}e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{x:.{digits}g}"


def _pct(x) -> str:
    if x is None:
        return "–"
    p = 100.0 * x
    if p == 0:
        return "0%"
    if p < 0.01:
        return "<0.01%"
    return f"{p:.2f}%" if p < 10 else f"{p:.1f}%"


def _tokshow(piece: str, following: str | None = "") -> str:
    """A lone token's piece as shown (the logit tables'): line breaks and tabs drawn (features.tokentext.visible),
    the rest as is; `following`: the next piece, so a CRLF cut in two is drawn as one line break. The token
    rows of examples and the fire page draw through `saesteer.web.tokenspans` instead."""
    return visible(piece, following or "")


# What readable.js needs to draw the playground's text as `readable` does (the names of the drawn
# characters, the right-to-left blocks), handed to it by the steer page.
READABLE_RULE = {"names": CONTROL_NAMES, "rtl_blocks": RTL_BLOCKS}


class _FieldValue(str):
    """A form field's value (`|field`): written as typed, control characters and all (still escaped)."""


def _drawn_output(value):
    """What every `{{ }}` writes: a string with its control, bidi and invisible characters drawn;
    form field values and the templates' own markup (a macro's output, drawn inside) as they are."""
    if not isinstance(value, str) or value.isprintable() or isinstance(value, (Markup, _FieldValue)):
        return value  # most strings have nothing to draw: isprintable is the cheap test
    return readable(value)


def make_templates() -> jinja2.Environment:
    env = jinja2.Environment(
        finalize=_drawn_output,
        loader=jinja2.FileSystemLoader(str(_TEMPLATE_DIR)),
        autoescape=True,  # every template, whatever its extension
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    env.filters["tokshow"] = _tokshow
    env.filters["field"] = _FieldValue
    env.globals["token_spans"] = lambda *a: token_spans(*a, num=_num)
    env.globals["fire_spans"] = lambda *a: fire_spans(*a, num=_num)
    return env


def _qs(**params) -> str:
    items = [(k, v) for k, v in params.items() if v is not None and v != "" and v is not False]
    items = [(k, "1" if v is True else v) for k, v in items]
    return ("?" + urlencode(items, doseq=True)) if items else ""


def render(request: Request, template: str, status: int = 200, headers=None, **ctx) -> HTMLResponse:
    state = request.app.state.web
    env: jinja2.Environment = request.app.state.templates
    assets = request.app.state.assets
    ctx.setdefault("store", None)
    ctx.setdefault("nav", "")
    html = env.get_template(template).render(
        stores=list(state.stores.values()),
        asset=assets.url,
        plotly_url=assets.url(assets.plotly_name),
        limits=state.limits,
        qs=_qs,
        **ctx,
    )
    return HTMLResponse(html, status_code=status, headers=headers)


def render_error(request: Request, status: int, message: str, headers=None) -> HTMLResponse:
    store = None
    parts = request.url.path.split("/")
    if len(parts) > 2 and parts[1] == "s":
        store = request.app.state.web.stores.get(parts[2])
    try:
        return render(request, "error.html", status=status, headers=headers, status_code=status, message=message, store=store)
    except Exception:  # never let the error page itself fail
        import html

        return HTMLResponse(f"<!doctype html><title>error {status}</title><p>{html.escape(readable(message))}</p>", status_code=status, headers=headers)


# -- pages -----------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> Response:
    stores = request.app.state.web.stores
    if len(stores) == 1:
        return RedirectResponse(f"/s/{next(iter(stores))}", status_code=303)
    return render(request, "index.html")


@router.get("/s/{sid}", response_class=HTMLResponse)
def feature_list(request: Request, entry: StoreEntry = Depends(api.get_store), q: FeatureQuery = Depends(api.feature_query)) -> Response:
    page = entry.catalog.list_features(q)
    keys = ("sort", "desc", "label", "min_score", "min_freq", "max_freq", "health", "level", "labelled", "limit")
    params = {k: v for k in keys if (v := request.query_params.get(k, "").strip())}
    filtered = any(params.get(k) for k in ("label", "min_score", "min_freq", "max_freq", "health", "level", "labelled"))
    # read once for the page: a store scored or replaced after start shows its method and note now
    return render(request, "features.html", store=entry, page=page, q=q, params=params, filtered=filtered, nav="features",
                  live=entry.live_info())


@router.get("/s/{sid}/search", response_class=HTMLResponse)
def search(
    request: Request,
    entry: StoreEntry = Depends(api.get_store),
    q: Annotated[str, Query(max_length=1000)] = "",
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    limits = request.app.state.web.limits
    q = q.strip()
    api.check_text("q", q, limits.max_query_chars)
    try:
        page = entry.catalog.search(q, offset, min(20, limits.max_page_size)) if q else None
    except ValueError as e:  # a query the store refuses (too many parts past the word index): as the API says it
        raise HTTPException(422, f"q: {e}") from e
    exact = None
    if ascii_digits(q.lstrip("#")):  # "#123" or "123": offer that feature directly
        i = int(q.lstrip("#"))
        if i < entry.info.d_sae:
            exact = i
    return render(request, "search.html", store=entry, query=q, page=page, exact=exact, nav="search")


@router.get("/s/{sid}/f/{latent}", response_class=HTMLResponse)
def feature_page(request: Request, latent: api.Latent, entry: StoreEntry = Depends(api.get_store)) -> Response:
    detail = entry.catalog.feature(latent)
    if detail is None:
        raise HTTPException(404, f"latent {latent} is not in store {entry.id!r} (its latents are 0..{entry.info.d_sae - 1})")
    hist = None
    if detail.histogram is not None and detail.histogram.counts:
        hist = {"edges": detail.histogram.edges, "counts": detail.histogram.counts, "log": detail.histogram.log_scale}
    return render(
        request, "feature.html", store=entry, f=detail, s=detail.summary, hist=hist,
        quantile_groups=quantile_bands(detail.quantile_examples), nav="features",
    )


_BANDS = ((0.9, "top 10% of firings"), (0.6, "60th–90th percentile"), (0.3, "30th–60th percentile"), (0.0, "weakest 30%"))


def quantile_bands(examples: list[Example]) -> list[tuple[str, list[Example]]]:
    """Quantile examples grouped into a few bands of their quantile, strongest first."""
    groups: dict[str, list[Example]] = {name: [] for _, name in _BANDS}
    for ex in sorted(examples, key=lambda e: -e.activation):
        q = ex.quantile if ex.quantile is not None else 0.0
        name = next(n for lo, n in _BANDS if q >= lo)
        groups[name].append(ex)
    return [(name, exs) for name, exs in groups.items() if exs]


@router.get("/s/{sid}/map", response_class=HTMLResponse)
def map_page(
    request: Request,
    entry: StoreEntry = Depends(api.get_store),
    layout: Annotated[Optional[str], Query(max_length=64, pattern=r"^[a-z0-9-]+$")] = None,
) -> Response:
    layouts = entry.catalog.map_layouts() if hasattr(entry.catalog, "map_layouts") else []
    if layout is not None and layout not in layouts:
        raise HTTPException(404, f"no layout {layout!r} in this store; it has: {', '.join(layouts) or 'none'}")
    chosen = layout or (layouts[0] if layouts else None)
    return render(request, "map.html", store=entry, layouts=layouts, layout=chosen, nav="map")


@router.get("/s/{sid}/fire", response_class=HTMLResponse)
async def fire_page(
    request: Request,
    entry: StoreEntry = Depends(api.get_store),
    text: Annotated[str, Query(max_length=20000)] = "",
) -> Response:
    limits = request.app.state.web.limits
    api.check_text("text", text, limits.max_text_chars)
    result, note = None, None
    if text.strip():
        if entry.engine is None:
            note = f"This store is browse-only, so nothing can be run: {entry.info.browse_only_reason}"
        elif request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            note = "Opened from another site: press Run to run the model on this text."
        elif not is_head(request):  # a HEAD's answer has no body to show the result in
            result = await api._run(entry.queue, entry.engine.fire, text, 5)
    return render(request, "fire.html", store=entry, text=text, result=result, note=note, nav="fire")


@router.get("/s/{sid}/steer", response_class=HTMLResponse)
def steer_page(
    request: Request,
    entry: StoreEntry = Depends(api.get_store),
    latent: Annotated[Optional[list[Annotated[int, Field(ge=0, le=2**31 - 1)]]], Query(description="latents to preselect")] = None,
) -> Response:
    limits = request.app.state.web.limits
    if latent is not None and len(latent) > 64:
        raise HTTPException(422, "latent: at most 64 latents")
    chosen = [i for i in dict.fromkeys(latent or []) if i < entry.info.d_sae][: limits.max_edits]
    known = entry.catalog.summaries(chosen, with_scores=False)
    picks = [{"latent": i, "label": known[i].label if i in known else None,
              "strength": known[i].recommended_strength if i in known else None} for i in chosen]
    prefill = getattr(entry.engine, "example_prompt", "")  # the toy prompt only for the toy model
    return render(request, "steer.html", store=entry, picks=picks, prefill=prefill, nav="steer",
                  readable_rule=READABLE_RULE, steerable=steerable_stores(request, entry))


def steerable_stores(request: Request, entry: StoreEntry) -> list[dict]:
    """The stores whose SAEs one playground request may edit: the page's own first, then those the
    API serves over the same transformer (`ServedModel.peers`, the rule /v1 requests follow: an edit
    of another names it as `"sae"`). Only the page's own without the API (a browse-only store)."""
    svc = request.app.state.openai
    served = svc.models.get(entry.id) if svc is not None else None
    ids = [entry.id] + [p for p in (served.peers if served is not None else {}) if p != entry.id]
    stores = request.app.state.web.stores
    return [{"id": s.id, "name": s.info.name, "hook": s.info.hook, "d_sae": s.info.d_sae}
            for s in (stores[i] for i in ids)]
