"""The HTTP side of ``app=serve``: FastAPI routes speaking the OpenAI API over a
:class:`plugstack.engine.Engine`.

``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with
``stream: true`` as server-sent events ending in ``data: [DONE]``) and ``GET /health``.
Every request gets an id (``x-request-id``) and one structured access-log line; errors
are OpenAI's JSON shape. Nothing here reads a file or runs code named by a request: a
chat request is rendered by the model's sandboxed chat template.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from plugstack.engine import Delta, Engine
from plugstack.errors import EngineClosedError, GenerationError, QueueFullError
from plugstack.model import Tokenizer
from plugstack.sampling import SamplingParams

from .protocol import ApiError, ChatRequest, CompletionRequest, Reply, from_validation_error, sse, usage

__all__ = ["ServeOptions", "create_api"]

#: OpenAI's default max_tokens for /v1/completions (chat defaults to what the context leaves).
COMPLETION_MAX_TOKENS = 16


@dataclass
class ServeOptions:
    """What the routes need from the app's config."""

    model_name: str
    api_key: str | None
    max_body_bytes: int
    system_prompt: str | None = None
    #: The backend that runs the steps (shown by /health and the web page).
    backend: str | None = None


def create_api(engine: Engine, tokenizer: Tokenizer, options: ServeOptions, log: Any) -> FastAPI:
    """The ASGI application (no docs pages: nothing is served that the API does not need)."""
    api = FastAPI(title="plugstack", docs_url=None, redoc_url=None, openapi_url=None)
    routes = _Routes(engine, tokenizer, options)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(routes.authorize)])
    v1.add_api_route("/models", routes.models, methods=["GET"])
    v1.add_api_route("/models/{model_id:path}", routes.model, methods=["GET"])  # ids may hold a "/"
    v1.add_api_route("/completions", routes.completions, methods=["POST"])
    v1.add_api_route("/chat/completions", routes.chat_completions, methods=["POST"])
    api.include_router(v1)
    api.add_api_route("/health", routes.health, methods=["GET"])
    page = HTMLResponse(files("plugstack.plugins.serve").joinpath("static/index.html").read_text(encoding="utf-8"))
    api.add_api_route("/", lambda: page, methods=["GET"], include_in_schema=False)  # the web chat page
    api.add_exception_handler(ApiError, _api_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(Exception, _server_error)
    api.add_middleware(AccessLog, log=log)
    return api


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method) in OpenAI's shape."""
    assert isinstance(exc, StarletteHTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return await _api_error(request, ApiError(exc.status_code, message))


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    return await _api_error(request, ApiError(500, f"internal server error ({type(exc).__name__}); see the "
                                                   "server's log for the traceback"))


class AccessLog:
    """ASGI middleware: a request id for every request (``request.state.request_id``,
    the ``x-request-id`` header) and one ``http.request`` log line once it has ended,
    with the tokens a route put in ``request.state.usage``."""

    def __init__(self, app: Any, log: Any) -> None:
        self.app, self.log = app, log

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:20]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status, start = 500, time.perf_counter()

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.log.info("http.request", request_id=request_id, method=scope["method"], path=scope["path"],
                          status=status, latency_ms=round((time.perf_counter() - start) * 1000, 1),
                          **state.get("usage", {}))


class _Routes:
    def __init__(self, engine: Engine, tokenizer: Tokenizer, options: ServeOptions) -> None:
        self.engine, self.tokenizer, self.options = engine, tokenizer, options
        self.created = int(time.time())

    # -- cheap routes --------------------------------------------------------------------------

    async def authorize(self, request: Request) -> None:
        """The Bearer token, compared in constant time (no timing hint at the key)."""
        key = self.options.api_key
        if not key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not token:
            raise ApiError(401, "You didn't provide an API key: send it as 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def _model_object(self) -> dict[str, Any]:
        return {"id": self.options.model_name, "object": "model", "created": self.created, "owned_by": "plugstack"}

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_object()]}

    async def model(self, model_id: str) -> dict[str, Any]:
        self._check_model(model_id)
        return self._model_object()

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.options.model_name, "backend": self.options.backend,
                **self.engine.counts()}

    def _check_model(self, name: str) -> None:
        if name != self.options.model_name:
            raise ApiError(404, f"The model '{name}' does not exist: this server serves "
                                f"'{self.options.model_name}' (GET /v1/models).", param="model",
                           code="model_not_found")

    # -- generation ----------------------------------------------------------------------------

    async def completions(self, request: Request) -> Any:
        body = await self._read(request, CompletionRequest)
        text = body.text()
        ids = await run_in_threadpool(self.tokenizer.encode, text)
        return await self._generate(request, body, ids, chat=False)

    async def chat_completions(self, request: Request) -> Any:
        body = await self._read(request, ChatRequest)
        messages = body.chat(self.options.system_prompt)

        def render() -> list[int]:
            return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

        try:
            ids = await run_in_threadpool(render)
        except GenerationError as exc:  # the template refused the conversation
            raise ApiError(400, str(exc), param="messages") from None
        return await self._generate(request, body, ids, chat=True)

    async def _read(self, request: Request, schema: type[Any]) -> Any:
        """The JSON body, within the size limit, validated against ``schema``."""
        limit = self.options.max_body_bytes
        too_large = ApiError(413, f"The request body is larger than this server accepts ({limit} bytes; "
                                  "app.max_body_bytes).", code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise too_large
        try:
            data = json.loads(raw)
        except ValueError as exc:  # also bad UTF-8
            raise ApiError(400, f"We could not parse the JSON body of your request ({exc}). Send a JSON object "
                                "with Content-Type: application/json.") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"The request body must be a JSON object, not {type(data).__name__}.")
        try:
            body = schema.model_validate(data)
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        refused = body.refused()
        if refused is not None:
            raise refused
        self._check_model(body.model)
        return body

    def _params(self, body: Any, prompt_tokens: int, chat: bool) -> tuple[SamplingParams, str]:
        """The request's sampling parameters (OpenAI's defaults), and its name for max_tokens."""
        given = getattr(body, "max_completion_tokens", None)
        name = "max_completion_tokens" if given is not None else "max_tokens"
        max_new = given if given is not None else body.max_tokens
        if max_new is None and not chat:
            max_new = COMPLETION_MAX_TOKENS
        elif max_new is None:  # chat: as much as the context leaves, within the server's limit
            room, limit = self.engine.room(prompt_tokens), self.engine.max_tokens_limit or COMPLETION_MAX_TOKENS
            max_new = max(1, limit if room is None else min(limit, room))
        try:
            params = SamplingParams(max_new_tokens=max_new, temperature=1.0 if body.temperature is None
                                    else body.temperature, top_p=1.0 if body.top_p is None else body.top_p,
                                    seed=body.seed, stop=body.stops(), ignore_eos=body.ignore_eos)
        except GenerationError as exc:
            raise ApiError(400, str(exc), param=exc.param) from None
        return params, name

    async def _generate(self, request: Request, body: Any, ids: list[int], *, chat: bool) -> Any:
        params, max_name = self._params(body, len(ids), chat)
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[Delta] = asyncio.Queue()

        def emit(delta: Delta) -> None:  # on the engine thread
            loop.call_soon_threadsafe(deltas.put_nowait, delta)

        request_id = request.state.request_id
        try:
            job = self.engine.submit(ids, params, emit=emit, request_id=request_id, max_new_name=max_name)
        except QueueFullError as exc:
            raise ApiError(429, str(exc), code="rate_limit_exceeded") from None
        except EngineClosedError as exc:
            raise ApiError(503, f"The server is not taking requests: {exc}.", code="server_shutting_down") from None
        except GenerationError as exc:
            too_long = exc.param == "prompt" and bool(ids)  # (an empty prompt is the other prompt error)
            param = "messages" if chat and exc.param == "prompt" else exc.param
            raise ApiError(400, str(exc), param=param, code="context_length_exceeded" if too_long else None) from None
        reply = Reply(chat, request_id, self.options.model_name)
        if body.stream:
            return _EngineStream(_stream(request, deltas, reply, body.include_usage), job)
        text, last = await _collect(request, job, deltas)
        _ended_well(last)
        request.state.usage = usage(last.prompt_tokens, last.completion_tokens)
        return JSONResponse(reply.whole(text, last.finish_reason or "stop", request.state.usage))


def _ended_well(last: Delta) -> None:
    """Raise the error a request that did not end with stop/length has."""
    if last.finish_reason == "error":
        raise ApiError(500, f"Generation failed: {last.error}", code="generation_failed")
    if last.finish_reason == "cancelled":
        raise ApiError(503, f"The request was cancelled: {last.error}.", code="request_cancelled")


async def _collect(request: Request, job: Any, deltas: asyncio.Queue[Delta]) -> tuple[str, Delta]:
    """Every delta of a non-streamed request; a client that goes away cancels it."""
    parts: list[str] = []
    try:
        while True:
            try:
                delta = await asyncio.wait_for(deltas.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel("the client disconnected")
                continue
            parts.append(delta.text)
            if delta.finish_reason is not None:
                return "".join(parts), delta
    finally:
        job.cancel("the request handler ended")  # a no-op for a finished request


class _EngineStream(StreamingResponse):
    """Server-sent events whose engine request is cancelled however the response ends: a
    disconnect cancels the stream (Starlette listens for it), even before its first chunk."""

    def __init__(self, events: AsyncIterator[str], job: Any) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel("the client disconnected")  # a no-op for a finished request


async def _stream(request: Request, deltas: asyncio.Queue[Delta], reply: Reply,
                  include_usage: bool) -> AsyncIterator[str]:
    """The deltas as chunks, then the finish reason, usage if asked, and ``[DONE]``."""
    if reply.chat:  # OpenAI's first chat chunk carries the role
        yield sse(reply.chunk("", role=True, with_usage=include_usage))
    while True:
        delta = await deltas.get()
        if delta.text:
            yield sse(reply.chunk(delta.text, with_usage=include_usage))
        if delta.finish_reason is not None:
            break
    request.state.usage = usage(delta.prompt_tokens, delta.completion_tokens)
    try:
        _ended_well(delta)
    except ApiError as exc:  # the status is sent already: say it in the stream, as OpenAI does
        yield sse(exc.body())
    else:
        yield sse(reply.chunk(None, delta.finish_reason, with_usage=include_usage))
        if include_usage:
            yield sse(reply.usage_chunk(request.state.usage))
    yield sse("[DONE]")
