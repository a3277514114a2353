"""The JSON API (under /api/). Pages read the same catalog through `pages.py`.

Reads (list, feature, search) answer from the store without the model's queue, in FastAPI's worker
threads (plain `def` routes), never on the event loop: a read that waits (the store's lock, SQLite's
busy timeout while `saesteer label` writes, a big store's sort) would stop every other request, the
API's generations and streams included. Model work (fire, steer, sweep) waits its turn on the
model's `ModelQueue` and runs in that queue's worker thread.
Every input is bounded twice: hard ceilings in the schemas (documented in /openapi.json) and
the server's configured `Limits` here, with a 422 naming the limit when exceeded.
"""

from __future__ import annotations

import logging
import math
from typing import Annotated, Optional

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BeforeValidator, Field

import saesteer
from saesteer.web.schemas import (
    Edit,
    ErrorOut,
    FeatureDetail,
    FeatureSummary,
    FireRequest,
    FireResult,
    Health,
    MapData,
    Page,
    SortKey,
    SteerRequest,
    SteerResult,
    StoreInfo,
    SweepRequest,
    SweepResult,
)
from saesteer.web.sources import FeatureQuery, StoreEntry

__all__ = ["router", "get_state", "get_store", "feature_query", "check_edits", "check_generation"]

_ERRORS = {
    404: {"model": ErrorOut, "description": "unknown store or feature"},
    422: {"model": ErrorOut, "description": "invalid or out-of-bounds input (the message says which)"},
}
_MODEL_ERRORS = {
    **_ERRORS,
    409: {"model": ErrorOut, "description": "this store has no model to run (start the server with --model)"},
    503: {"model": ErrorOut, "description": "too many model jobs waiting; retry after a few seconds"},
}

log = logging.getLogger("saesteer.web")

router = APIRouter(prefix="/api", tags=["api"])

# Empty query values ("?min_score=") mean "not given", as HTML forms send them.
_Empty = BeforeValidator(lambda v: None if isinstance(v, str) and v.strip() == "" else v)
OptFloat = Annotated[Optional[Annotated[float, Field(allow_inf_nan=False, ge=-1e12, le=1e12)]], _Empty]
OptFrac = Annotated[Optional[Annotated[float, Field(allow_inf_nan=False, ge=0.0, le=1.0)]], _Empty]
OptLevel = Annotated[Optional[Annotated[int, Field(ge=0, le=64)]], _Empty]
OptStr = Annotated[Optional[str], _Empty]
OptBool = Annotated[Optional[bool], _Empty]
StoreId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="a store id from /api/stores")]
Latent = Annotated[int, Path(ge=0, le=2**31 - 1, description="the latent's index in the SAE")]


def get_state(request: Request):
    return request.app.state.web


def get_store(sid: StoreId, request: Request) -> StoreEntry:
    entry = request.app.state.web.stores.get(sid)
    if entry is None:
        known = ", ".join(sorted(request.app.state.web.stores))
        raise HTTPException(404, f"no store with id {sid!r}; this server has: {known}")
    return entry


def feature_query(
    request: Request,
    sort: Annotated[SortKey, Query(description="column to order by")] = "latent",
    desc: Annotated[Optional[bool], _Empty, Query(description="descending order (default: descending for statistics, ascending for latent/label/level)")] = None,
    label: Annotated[OptStr, Query(description="only features whose label contains this text (case-insensitive)")] = None,
    min_score: Annotated[OptFloat, Query(description="lowest main score (detection balanced accuracy)")] = None,
    min_freq: Annotated[OptFrac, Query(description="lowest firing frequency (fraction of tokens)")] = None,
    max_freq: Annotated[OptFrac, Query(description="highest firing frequency")] = None,
    health: Annotated[Optional[Health], _Empty, Query()] = None,
    level: Annotated[OptLevel, Query(description="Matryoshka level")] = None,
    labelled: Annotated[OptBool, Query(description="true: labelled only; false: unlabelled only")] = None,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> FeatureQuery:
    limits = request.app.state.web.limits
    check_page(limits, limit)
    if label is not None:
        label = label.strip()
        check_text("label", label, limits.max_query_chars)
    if min_freq is not None and max_freq is not None and min_freq > max_freq:
        raise HTTPException(422, f"min_freq ({min_freq}) is above max_freq ({max_freq})")
    return FeatureQuery(
        sort=sort, descending=desc, label=label or None, min_score=min_score,
        min_freq=min_freq, max_freq=max_freq, health=health, level=level, labelled=labelled,
        offset=offset, limit=limit,
    )


def check_page(limits, limit: int) -> None:
    if limit > limits.max_page_size:
        raise HTTPException(422, f"limit: at most {limits.max_page_size} rows per page (got {limit}); page with offset")


def check_text(name: str, text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise HTTPException(422, f"{name}: at most {max_chars} characters (got {len(text)})")
    if "\x00" in text:
        raise HTTPException(422, f"{name}: must not contain NUL characters")


def check_edits(entry: StoreEntry, limits, edits: list[Edit]) -> None:
    if len(edits) > limits.max_edits:
        raise HTTPException(422, f"edits: at most {limits.max_edits} feature edits per request (got {len(edits)})")
    n = entry.info.d_sae
    for i, e in enumerate(edits):
        check_edit(f"edits[{i}]", e, n, limits)


def check_edit(where: str, e: Edit, d_sae: int, limits, value: float | None = None) -> None:
    v = e.value if value is None else value
    if e.latent >= d_sae:
        raise HTTPException(422, f"{where}.latent: {e.latent} is not a latent of this store (0..{d_sae - 1})")
    if not math.isfinite(v):
        raise HTTPException(422, f"{where}.value must be a finite number")
    if e.op in ("scale", "ablate") and e.unit != "raw":
        raise HTTPException(422, f"{where}.unit: {e.op} takes a plain factor; use unit 'raw'")
    if e.op == "scale" or e.unit == "max_act":
        cap, what = limits.max_abs_multiple, ("a scale factor" if e.op == "scale" else "x the feature's typical max")
    else:
        cap, what = limits.max_abs_strength, "raw activation units"
    if abs(v) > cap:
        raise HTTPException(422, f"{where}.value: |{v:g}| is above the limit of {cap:g} ({what})")


def check_generation(limits, req) -> None:
    check_text("prompt", req.prompt, limits.max_text_chars)
    if req.max_new_tokens > limits.max_new_tokens:
        raise HTTPException(422, f"max_new_tokens: at most {limits.max_new_tokens} (got {req.max_new_tokens})")


def _engine(entry: StoreEntry):
    if entry.engine is None or entry.queue is None:
        raise HTTPException(409, f"store {entry.id!r} is browse-only: {entry.info.browse_only_reason}")
    return entry.engine, entry.queue


async def _run(queue, fn, *args):
    try:
        return await queue.run(fn, *args)
    except ValueError as e:
        # By the project's convention a ValueError says what was wrong with the input and how to
        # fix it (e.g. a prompt longer than the model's context): the caller's mistake, a 422.
        log.info("model job refused its input: %s", e)
        raise HTTPException(422, str(e) or type(e).__name__) from e


# -- routes -------------------------------------------------------------------------------------


@router.get("/status", summary="server version, stores, limits and queue lengths")
def status(request: Request, state=Depends(get_state)) -> dict:
    return {
        "version": saesteer.__version__,
        "stores": [s.live_info().model_dump() for s in state.stores.values()],
        "limits": {k: getattr(state.limits, k) for k in state.limits.__dataclass_fields__},
        "queues": [{"model": q.name, "pending": q.pending} for q in state.queues],
        "openai": [] if request.app.state.openai is None else request.app.state.openai.status(),
    }


@router.get("/stores", summary="the stores this server serves")
def list_stores(state=Depends(get_state)) -> list[StoreInfo]:
    return [s.live_info() for s in state.stores.values()]


@router.get("/stores/{sid}", summary="one store", responses=_ERRORS)
def store_info(entry: StoreEntry = Depends(get_store)) -> StoreInfo:
    return entry.live_info()


@router.get("/stores/{sid}/features", summary="features, filtered, sorted and paginated", responses=_ERRORS)
def list_features(entry: StoreEntry = Depends(get_store), q: FeatureQuery = Depends(feature_query)) -> Page[FeatureSummary]:
    return entry.catalog.list_features(q)


@router.get("/stores/{sid}/features/{latent}", summary="everything about one feature", responses=_ERRORS)
def feature(latent: Latent, entry: StoreEntry = Depends(get_store)) -> FeatureDetail:
    detail = entry.catalog.feature(latent)
    if detail is None:
        raise HTTPException(404, f"latent {latent} is not in store {entry.id!r} (it has {entry.info.d_sae} latents: 0..{entry.info.d_sae - 1})")
    return detail


@router.get("/stores/{sid}/search", summary="full-text search over labels (and explanations)", responses=_ERRORS)
def search(
    q: Annotated[str, Query(min_length=1, max_length=1000, description="words to look for")],
    request: Request,
    entry: StoreEntry = Depends(get_store),
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> Page[FeatureSummary]:
    limits = request.app.state.web.limits
    q = q.strip()
    if not q:
        raise HTTPException(422, "q: give at least one word to search for")
    check_text("q", q, limits.max_query_chars)
    check_page(limits, limit)
    try:
        return entry.catalog.search(q, offset, limit)
    except ValueError as e:  # a query the full-text index cannot parse
        raise HTTPException(422, f"q: {e}") from e


@router.get("/stores/{sid}/map", summary="the feature map: a stored 2-d layout of the latents", responses=_ERRORS)
def feature_map(
    entry: StoreEntry = Depends(get_store),
    layout: Annotated[Optional[str], Query(max_length=64, pattern=r"^[a-z0-9-]+$",
                                           description="which layout (default: the first stored)")] = None,
) -> MapData:
    layouts = entry.catalog.map_layouts() if hasattr(entry.catalog, "map_layouts") else []
    if not layouts:
        raise HTTPException(404, f"store {entry.id!r} has no feature map; make one with `saesteer features map STORE`")
    data = entry.catalog.map_points(layout or layouts[0])
    if data is None:
        raise HTTPException(404, f"no layout {layout!r} in store {entry.id!r}; it has: {', '.join(layouts)}")
    return data


@router.post("/stores/{sid}/fire", summary="which features fire on a text, token by token", responses=_MODEL_ERRORS)
async def fire(req: FireRequest, request: Request, entry: StoreEntry = Depends(get_store)) -> FireResult:
    limits = request.app.state.web.limits
    check_text("text", req.text, limits.max_text_chars)
    engine, queue = _engine(entry)
    return await _run(queue, engine.fire, req.text, req.top_k)


@router.post("/stores/{sid}/steer", summary="generate with and without feature edits, side by side", responses=_MODEL_ERRORS)
async def steer(req: SteerRequest, request: Request, entry: StoreEntry = Depends(get_store)) -> SteerResult:
    limits = request.app.state.web.limits
    check_generation(limits, req)
    check_edits(entry, limits, req.edits)
    engine, queue = _engine(entry)
    return await _run(queue, engine.steer, req)


@router.post("/stores/{sid}/sweep", summary="a dose-response curve: one edit at several strengths", responses=_MODEL_ERRORS)
async def sweep(req: SweepRequest, request: Request, entry: StoreEntry = Depends(get_store)) -> SweepResult:
    limits = request.app.state.web.limits
    check_generation(limits, req)
    if len(req.values) > limits.max_sweep_points:
        raise HTTPException(422, f"values: at most {limits.max_sweep_points} points per sweep (got {len(req.values)})")
    if req.edit.op not in ("add", "clamp"):
        raise HTTPException(422, f"edit.op: a sweep varies an add or clamp edit, not {req.edit.op}")
    for i, v in enumerate(req.values):
        check_edit(f"values[{i}]", req.edit, entry.info.d_sae, limits, value=v)
    engine, queue = _engine(entry)
    return await _run(queue, engine.sweep, req)
