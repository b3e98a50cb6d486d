"""The HTTP layer (FastAPI): OpenAI's chat completions (JSON or server-sent events), Whisper's transcriptions and
translations, models, health, Prometheus metrics and the web page at `/`.

    app = create_app(model, ServeConfig(api_key="...", max_batch=16))
    uvicorn.run(app, host="127.0.0.1", port=8000)          # what `qwen2audio serve` does

Everything the server refuses is answered in OpenAI's error JSON (`errors.ApiError`): pydantic's type errors and
malformed JSON as 400, a missing or wrong key as 401, a forbidden audio source as 403, a body over the limit as
413, a full queue as 429 with Retry-After, a request past its deadline as 504; anything unexpected as a 500
without a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..transcribe import format_transcription
from .config import ServeConfig
from .engine import BatchEngine, Delta, Failed, Finished
from .errors import ApiError, bad_request
from .metrics import CONTENT_TYPE, Metrics
from .protocol import ChatCompletionRequest, TranscriptionFormat, chat_chunk, chat_completion, completion_id, \
    model_card, usage
from .service import TASKS, ClientGone, Job, Prepared, Service

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_MODEL_LEN = 8192  # rows longer than this cost KV memory few requests use

logger = logging.getLogger("qwen2audio.serve")


def max_model_len(model, config: ServeConfig) -> int:
    positions = model.config.text.max_positions
    return min(config.max_model_len or min(positions, DEFAULT_MAX_MODEL_LEN), positions)


def create_app(model, config: ServeConfig | None = None, compile: bool | None = None) -> FastAPI:
    """An app serving `model` (a loaded Qwen2AudioForConditionalGeneration); its engine starts with the app."""
    config = config or ServeConfig()
    engine = BatchEngine(model, config.max_batch, max_model_len(model, config), config.max_queue, compile=compile)
    metrics = Metrics(engine)
    service = Service(model, engine, config, metrics)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.close()

    app = FastAPI(title="qwen2audio", version=version("qwen2audio"), lifespan=lifespan, redoc_url=None,
                  description="Qwen2-Audio behind the OpenAI API: chat completions with audio, transcriptions, "
                              "translations.")
    app.state.engine, app.state.service, app.state.metrics = engine, service, metrics
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(RecordMetrics, metrics=metrics)
    _add_error_handlers(app)
    bearer = HTTPBearer(auto_error=False, description="the server's --api-key, when it has one")

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.api_key is None:
            return
        if credentials is None:
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'", "missing_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), config.api_key.encode()):
            raise ApiError(401, "incorrect API key", "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def check_model(name: str | None) -> None:
        if name is not None and name not in config.model_names:
            raise ApiError(404, f"the model '{name}' does not exist: this server serves '{config.served_model_name}'",
                           "model_not_found", "model")

    # -- pages and probes ------------------------------------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": "ok" if engine.healthy else "unavailable", "model": config.served_model_name,
                "batch_rows": engine.n_rows, "active_requests": engine.active, "queue_depth": engine.queue_depth}
        if engine.error:
            body["error"] = engine.error
        return JSONResponse(body, status_code=200 if engine.healthy else 503)

    @app.get("/metrics", dependencies=[Depends(authorize)])
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict:
        return {"object": "list", "data": [model_card(config.served_model_name, started)]}

    @app.get("/v1/models/{model_id}", dependencies=[Depends(authorize)])
    async def one_model(model_id: str) -> dict:
        check_model(model_id)
        return model_card(config.served_model_name, started)

    # -- chat ------------------------------------------------------------------------------------------------------
    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body.model)
        prepared = await run_in_threadpool(service.prepare_chat, body)
        job = Job(service)
        job.submit(list(enumerate(prepared)))
        cid, name = completion_id(), config.served_model_name
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventStream(_chat_events(job, prepared, cid, name, include_usage), on_close=job.cancel)
        try:
            return await _chat_reply(job, prepared, cid, name, request)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the rows are already free

    # -- transcriptions and translations (Whisper's form) ----------------------------------------------------------
    async def audio_endpoint(endpoint: str, request: Request, file: UploadFile, model: str | None,
                             language: str | None, prompt: str | None, response_format: str, temperature: float):
        check_model(model)
        data = await file.read()
        try:
            result, tokens = await service.transcribe(data, endpoint, language and language.lower(), prompt,
                                                      temperature, request)
        except ClientGone:
            return Response(status_code=499)
        task = "transcribe" if TASKS[endpoint] == "asr" else "translate"
        return _transcription_response(result, tokens, response_format, task, temperature)

    @app.post("/v1/audio/transcriptions", dependencies=[Depends(authorize)])
    async def transcriptions(request: Request, file: UploadFile = File(..., description="audio of any length"),
                             model: str | None = Form(None),
                             language: str | None = Form(None, pattern=r"^[A-Za-z]{2,3}$"),
                             prompt: str | None = Form(None, max_length=2000),
                             response_format: TranscriptionFormat = Form("json"),
                             temperature: float = Form(0.0, ge=0, le=1)):
        return await audio_endpoint("transcriptions", request, file, model, language, prompt, response_format,
                                    temperature)

    @app.post("/v1/audio/translations", dependencies=[Depends(authorize)])
    async def translations(request: Request, file: UploadFile = File(..., description="audio of any length"),
                           model: str | None = Form(None), prompt: str | None = Form(None, max_length=2000),
                           response_format: TranscriptionFormat = Form("json"),
                           temperature: float = Form(0.0, ge=0, le=1)):
        return await audio_endpoint("translations", request, file, model, None, prompt, response_format,
                                    temperature)

    return app


# -- chat replies ------------------------------------------------------------------------------------------------------

async def _chat_reply(job: Job, prepared: list[Prepared], cid: str, name: str, client: Request) -> JSONResponse:
    choices: list[dict | None] = [None] * len(prepared)
    try:
        while any(c is None for c in choices):
            index, event = await job.next(client)
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Finished):
                choices[index] = {"text": event.text, "finish_reason": event.finish_reason,
                                  "completion_tokens": event.completion_tokens}
    except BaseException:
        job.cancel()
        raise
    return JSONResponse(chat_completion(cid, name, choices, prepared[0].prompt_tokens))


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _chat_events(job: Job, prepared: list[Prepared], cid: str, name: str, include_usage: bool):
    """OpenAI's stream: a role chunk per choice, content deltas, a finish chunk per choice, [usage], [DONE]."""
    created = int(time.time())
    for i in range(len(prepared)):
        yield _sse(chat_chunk(cid, name, created, i, {"role": "assistant", "content": ""}))
    remaining, completion_tokens = len(prepared), 0
    while remaining:
        try:
            index, event = await job.next()
        except ApiError as e:  # the deadline: the status line is gone already, so say it in the stream
            yield _sse(e.body())
            break
        if isinstance(event, Delta):
            yield _sse(chat_chunk(cid, name, created, index, {"content": event.text}))
        elif isinstance(event, Finished):
            remaining -= 1
            completion_tokens += event.completion_tokens
            yield _sse(chat_chunk(cid, name, created, index, {}, event.finish_reason))
        else:
            job.cancel()
            yield _sse(event.error.body())
            break
    if include_usage and not remaining:
        yield _sse(chat_chunk(cid, name, created, None, usage_counts=usage(prepared[0].prompt_tokens,
                                                                            completion_tokens)))
    yield "data: [DONE]\n\n"


class EventStream(StreamingResponse):
    """Server-sent events; `on_close` runs however the response ends (finished, or the client went away and
    Starlette cancelled the stream), so that a disconnected client's rows are freed at once."""

    def __init__(self, content, on_close):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


# -- transcription replies ---------------------------------------------------------------------------------------------

def _transcription_response(result, tokens: list[list[int]], response_format: str, task: str,
                            temperature: float) -> Response:
    if response_format == "json":
        return JSONResponse({"text": result.text})
    if response_format == "text":
        return PlainTextResponse(result.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(format_transcription(result, "srt"))
    if response_format == "vtt":
        return PlainTextResponse(webvtt(result), media_type="text/vtt")
    segments = [{"id": i, "seek": round(s.start * 100), "start": s.start, "end": s.end, "text": s.text,
                 "tokens": ids, "temperature": temperature} for i, (s, ids) in enumerate(zip(result.segments, tokens))]
    return JSONResponse({"task": task, "language": result.language, "duration": result.duration,
                         "text": result.text, "segments": segments})


def webvtt(result) -> str:
    def stamp(seconds: float) -> str:
        ms = round(seconds * 1000)
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"

    blocks = [f"{stamp(s.start)} --> {stamp(s.end)}\n{s.text}\n" for s in result.segments if s.text]
    return "WEBVTT\n\n" + "\n".join(blocks)


# -- errors ------------------------------------------------------------------------------------------------------------

def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        if e.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}: see /docs for the API"
        return error_response(ApiError(e.status_code, message, headers=dict(getattr(e, "headers", None) or {})))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, f"internal error ({type(e).__name__}); the server log has the details",
                                       "internal_error"))


PRIMITIVES = {"str", "int", "float", "bool", "list", "dict", "none", "body"}


def validation_error(errors: list[dict]) -> ApiError:
    """pydantic's most specific complaint (the deepest field) as one clear line naming the field, e.g.
    "messages[0].content[1].input_audio.data: Field required"."""
    if not errors:
        return bad_request("invalid request", "invalid_type")
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    if first.get("type") == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                           "invalid_json")
    param = ""
    previous = None
    for part in first.get("loc", ()):
        # union branches ("str", "list[...]") are pydantic's bookkeeping; a tagged union repeats the tag
        if isinstance(part, str) and ("[" in part or part in PRIMITIVES or part == previous):
            continue
        param += f"[{part}]" if isinstance(part, int) else f".{part}" if param else str(part)
        previous = part
    where = f"{param}: " if param else ""
    return bad_request(f"{where}{first.get('msg', 'invalid value')}", "invalid_type", param or None)


# -- middleware --------------------------------------------------------------------------------------------------------

class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413 before anything parses them (Content-Length, or counted
    as they arrive when chunked); the app gets the body as it came."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send, declared)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                return await self._refuse(send, None)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # then http.disconnect, which streaming responses listen for

        await self.app(scope, replay, send)

    async def _refuse(self, send, declared: bytes | None) -> None:
        if declared is not None and not declared.isdigit():
            error = bad_request(f"Content-Length {declared.decode(errors='replace')!r} is not a number")
        else:
            error = ApiError(413, f"the request body is over this server's limit of {self.max_bytes} bytes "
                                  "(--max-body-mb)", "request_too_large")
        await error_response(error)({"type": "http"}, None, send)


class RecordMetrics:
    """Count every request by route and status, and time it to its last byte."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status, started = [500], time.perf_counter()

        async def record(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
