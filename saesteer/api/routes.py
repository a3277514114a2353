"""The /v1 routes: models, completions, chat completions (OpenAI's protocol, see `protocol.py`).

Errors use OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`) so clients show
the message: 400 for a request this server cannot do (the message says why and how to fix it),
404 for an unknown model, 503 with Retry-After when too many requests are in (the `openai`
client retries those by itself), 500 when generation fails. A client that goes away (a closed
stream, or a non-streamed request it stopped waiting for) has its generation cancelled, and so
has a stream whose client stops reading while it keeps the connection open (`_stream`).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from saesteer.api.prepare import ApiError, ignored_template_kwargs_header, prepare_chat, prepare_completion
from saesteer.api.protocol import ChatRequest, CompletionRequest, SteeringIn
from saesteer.api.responses import SSE_DONE, Assembler, sse
from saesteer.api.scheduler import QueueFull
from saesteer.web.security import openai_error_json

__all__ = ["router", "RETRY_AFTER_S"]

log = logging.getLogger("saesteer.api")
router = APIRouter(prefix="/v1", tags=["openai"])
RETRY_AFTER_S = 1


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None, headers=None) -> JSONResponse:
    return JSONResponse(openai_error_json(status, message, param=param, code=code), status_code=status, headers=headers)


def _service(request: Request):
    svc = getattr(request.app.state, "openai", None)
    if svc is None or not (svc.models or svc.unavailable):
        raise ApiError(404, "this server runs no model, so it cannot generate; start it with a model (--model)",
                       "model", "model_not_found")
    return svc


def _served(request: Request, model_id: str):
    svc = _service(request)
    served = svc.models.get(model_id)
    if served is None and model_id in svc.unavailable:
        raise ApiError(400, f"the model {model_id!r} cannot generate through this API: {svc.unavailable[model_id]}",
                       "model")
    if served is None:
        raise ApiError(404, f"the model {model_id!r} does not exist here; this server serves: "
                            f"{', '.join(sorted(svc.models))} (see /v1/models)", "model", "model_not_found")
    return served


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        param = param or (str(err["loc"][0]) if err.get("loc") else None)
        msg = err.get("msg", "invalid").removeprefix("Value error, ")  # pydantic's prefix for our validators' words
        if err.get("type") == "extra_forbidden" and len(err["loc"]) == 1 and err["loc"][0] in SteeringIn.model_fields:
            msg = f'goes inside the steering field: {{"steering": {{"{err["loc"][0]}": ...}}}}'  # a likely slip
        elif err.get("type") == "extra_forbidden":
            msg = "not supported by this server (or misspelt)"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request", param


async def _parse(request: Request, cls):
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None
    except RecursionError:  # Python's JSON parser recurses per level: a small body can nest past the limit
        raise ApiError(400, "the request body's JSON is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        msg, param = _validation_message(e)
        raise ApiError(400, msg, param) from None


@router.get("/models", summary="the models (one per feature store) this server steers")
def list_models(request: Request):  # reads the stores' presets: in a worker thread (as saesteer.web.api's reads)
    try:
        svc = _service(request)
    except ApiError:
        return {"object": "list", "data": []}
    return {"object": "list", "data": [m.card() for m in svc.models.values()]}


@router.get("/models/{model_id}", summary="one model")
def get_model(model_id: str, request: Request):
    try:
        return _served(request, model_id).card()
    except ApiError as e:
        return _error(e.status, e.message, param=e.param, code=e.code)


@router.post("/completions", summary="text completion (OpenAI protocol) with optional steering")
async def completions(request: Request):
    return await _generate(request, CompletionRequest, prepare_completion)


@router.post("/chat/completions", summary="chat completion (OpenAI protocol) with optional steering")
async def chat_completions(request: Request):
    return await _generate(request, ChatRequest, prepare_chat)


async def _generate(request: Request, cls, prepare):
    try:
        req = await _parse(request, cls)
        served = _served(request, req.model)
        limits = request.app.state.web.limits
        prep = await run_in_threadpool(prepare, req, served, limits)
        job = served.scheduler.submit(prep.rows, asyncio.get_running_loop(),
                                      deliver_tokens=prep.stream or prep.logprobs is not None)
    except ApiError as e:
        return _error(e.status, e.message, param=e.param, code=e.code)
    except QueueFull as e:
        return _error(503, str(e), headers={"Retry-After": str(RETRY_AFTER_S)})
    out = Assembler(prep, served.model.tokenizer)
    ignored = ignored_template_kwargs_header(prep.ignored_template_kwargs)  # none: no header
    if prep.stream:
        stall_s = request.app.state.openai.config.stream_stall_s
        return StreamingResponse(_stream(served.scheduler, job, out, stall_s), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **ignored})
    # a client that goes away (its timeout, Ctrl-C) stops its generation: nobody would read it. One
    # task beside this one waits for that and ends the reading; the events are read here.
    gone = asyncio.ensure_future(_client_gone(request))
    gone.add_done_callback(lambda _: job.stop_reading())  # also once cancelled below: nobody reads by then
    try:
        async for ev in job:
            out.add(ev)
    finally:
        gone.cancel()
        if job.open_rows:  # the client went away (or the server is stopping): stop generating for it
            served.scheduler.cancel(job)
    if job.open_rows:
        return Response(status_code=499)  # nobody reads it: the client closed the connection
    if out.error is not None:
        return _error(500, out.error)
    return JSONResponse(out.body(), headers=ignored)


async def _client_gone(request: Request) -> None:
    """Returns once the client has closed the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(scheduler, job, out: Assembler, stall_s: float):
    """The stream's SSE chunks. A client that stops reading but keeps the connection open would keep
    its rows in the batch, generating for nobody, until max_tokens: once a chunk has waited `stall_s`
    for the client to take it (the connection's buffers are full), the generation is cancelled and its
    rows leave the batch; a client that reads on later gets the text so far, then an error event. Once
    the generation has ended (its rows out of the batch) the client may take as long as it likes."""
    loop = asyncio.get_running_loop()
    stalled = False

    def on_stall() -> None:
        nonlocal stalled
        if job.unfinished <= 0:  # generated to the end: no rows to free, so a slow reader gets it all
            return
        stalled = True
        scheduler.cancel(job)  # frees its rows now, while the client's read is still pending
        log.warning("a stream's client read nothing for %g s: its generation is cancelled", stall_s)

    done = False
    chunks = _chunks(job, out)
    try:
        async for chunk in chunks:
            timer = loop.call_later(stall_s, on_stall)
            try:
                yield chunk  # returns once the server has handed the chunk on to the connection
            finally:
                timer.cancel()
            if stalled:
                yield sse(openai_error_json(
                    500, f"the stream was cancelled: its client read nothing for {stall_s:g} s (the server frees a "
                         "stalled stream's batch row for other requests); read a stream as it arrives"))
                yield SSE_DONE
                break
        done = True
    finally:
        await chunks.aclose()
        if not done:  # the client went away (or the stream broke): stop generating for it
            scheduler.cancel(job)


async def _chunks(job, out: Assembler):
    """The SSE chunks of `job`'s events, ending with [DONE] (an error event before it on a failure)."""
    for chunk in out.first_chunks():
        yield sse(chunk)
    async for ev in job:
        chunk = out.add(ev)
        if out.error is not None:
            yield sse(openai_error_json(500, out.error))  # the stream has said 200 already: the error in its body
            break
        if chunk is not None:
            yield sse(chunk)
    else:
        if out.prep.include_usage:
            yield sse(out.usage_chunk())
    yield SSE_DONE
