"""The HTTP side: a FastAPI app speaking OpenAI's /v1/models and /v1/chat/completions (plain and SSE streaming).

Every refusal is OpenAI's error JSON `{"error": {"message", "type", "param", "code"}}` with a 4xx status, so
OpenAI clients raise their usual exceptions. Nothing here logs message contents: errors are logged by type.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from peftsft.artifacts.serve.engine import Engine, Generation, ServeError
from peftsft.artifacts.serve.protocol import (
    ChatRequest, chunk_body, completion_body, model_card, model_list, new_id, reply,
)

log = logging.getLogger("peftsft.serve")


def create_app(engine: Engine, api_key: str | None = None) -> FastAPI:
    """The app for `engine`; with `api_key`, every /v1 route needs `Authorization: Bearer <api_key>`."""
    app = FastAPI(title="peftsft serve", summary="OpenAI-compatible chat completions for peftsft runs")
    started = int(time.time())
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": engine.model_ids, "busy": engine.busy}

    @app.get("/v1/models")
    async def models() -> dict:
        return model_list(engine.model_ids, started)

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict:
        if model_id not in engine.model_ids:
            raise ServeError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        return model_card(model_id, started)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        messages = [m.as_dict() for m in body.messages]
        generation = engine.astream(body.model, messages, **body.engine_options())
        if body.stream:
            events = _events(generation, request, body.model, body.include_usage, body.offers_tools)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _whole(generation, request, body.model, body.offers_tools)

    if api_key:
        app.add_middleware(RequireKey, api_key=api_key)
    return app


async def _whole(generation: Generation, request: Request, model: str, tools: bool = False) -> dict:
    ident, created = new_id()
    try:
        async for _ in generation:
            if await request.is_disconnected():  # nobody will read the answer: free the slot
                break
    finally:
        generation.cancel()
    return completion_body(ident, created, model, generation.result, tools) if generation.result else {}


async def _events(generation: Generation, request: Request, model: str, include_usage: bool,
                  tools: bool = False) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. With tools offered, the reply is
    held until it is whole (a `<tool_call>` block is only a call once closed) and sent as one delta."""
    ident, created = new_id()
    try:
        yield _sse(chunk_body(ident, created, model, {"role": "assistant", "content": ""}))
        async for piece in generation:
            if await request.is_disconnected():
                return
            if not tools:
                yield _sse(chunk_body(ident, created, model, {"content": piece}))
        result = generation.result
        message, finish_reason = reply(result, tools)
        if tools:
            delta = {"content": message["content"]} | (
                {"tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]}
                if message.get("tool_calls") else {})
            yield _sse(chunk_body(ident, created, model, delta))
        yield _sse(chunk_body(ident, created, model, {}, finish_reason))
        if include_usage:
            yield _sse(chunk_body(ident, created, model, None, completion=result))
    except Exception as exc:  # the status line is sent already: the error goes in the stream
        log.error("streamed generation failed: %s", type(exc).__name__)
        yield _sse(ServeError(500, f"generation failed: {type(exc).__name__}", kind="server_error").body())
    finally:
        generation.cancel()  # the client left (the stream is closed or cancelled) or it ended: a no-op then
    yield "data: [DONE]\n\n"


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


# ---------------------------------------------------------------------------------------------- errors


def error_response(error: ServeError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def refused(request: Request, exc: ServeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(ServeError(exc.status_code, str(exc.detail), code=None))

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed: %s", type(exc).__name__)
        return error_response(ServeError(500, f"internal error: {type(exc).__name__}", kind="server_error"))


def _validation_error(exc: RequestValidationError) -> ServeError:
    """The first problem, named by its field; pydantic's `input` (which may hold the prompt) is never echoed."""
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return ServeError(400, "We could not parse the JSON body of your request: "
                               f"{first.get('ctx', {}).get('error', 'invalid JSON')}")
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(where) or None
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return ServeError(400, f"{param}: {message}" if param else f"the request body: {message}", param=param)


class RequireKey:
    """ASGI middleware: /v1 routes need `Authorization: Bearer <key>` (checked before the body is read)."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1") and not self._allowed(scope):
            error = ServeError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                               code="invalid_api_key")
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope) -> bool:
        given = dict(scope.get("headers", [])).get(b"authorization", b"")
        return secrets.compare_digest(given, self.expected)

