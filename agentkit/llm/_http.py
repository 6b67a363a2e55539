"""The HTTP side of ``agentkit serve``: a Starlette app, run by uvicorn, whose routes read
a body within the server's limits, call one of the server's endpoint methods on a worker
thread (they tokenize and wait on the backend, which blocks) and answer with JSON, text or
server-sent events. Every failure is a JSON error object with a one-line message."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterator

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agentkit.llm._wire import HTTPError, error_object, one_line, parse_body, shown

if TYPE_CHECKING:
    from agentkit.llm.server import CompletionServer, ServerLimits

__all__ = ["ROUTES", "Client", "ClientGone", "build_app", "uvicorn_server"]

logger = logging.getLogger("agentkit.llm.server")

ROUTES = {
    ("GET", "/v1/models"): "models",
    ("GET", "/health"): "health",
    ("POST", "/v1/completions"): "completions",
    ("POST", "/v1/chat/completions"): "chat_completions",
    ("POST", "/tokenize"): "tokenize",
    ("POST", "/detokenize"): "detokenize",
    ("POST", "/v1/load_lora_adapter"): "load_lora_adapter",
    ("POST", "/v1/unload_lora_adapter"): "unload_lora_adapter",
}
"""(method, path) -> the CompletionServer method that answers it."""
_WATCHED = {"completions", "chat_completions"}
"""Endpoints that wait on the backend: they are told when their client goes away."""
_DISCARD_LIMIT = 64 * 2**20
"""An oversized body up to this size is read and dropped, so that the client, still
sending, reads the 413 instead of a reset connection; a larger one closes the connection."""


class ClientGone(Exception):
    """The client closed its connection while its request was being answered."""


class Client:
    """One request's client, as the endpoint's worker thread sees it: ``gone()`` once it
    has closed its connection (watched on the event loop by ``watch``)."""

    def __init__(self) -> None:
        self._gone = threading.Event()

    def gone(self) -> bool:
        return self._gone.is_set()

    async def watch(self, receive: Callable[[], Awaitable[dict]]) -> None:
        # once the body is read, uvicorn's receive() returns only when the client disconnects
        while (await receive())["type"] != "http.disconnect":
            pass
        self._gone.set()


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: ``server.serve`` decides what a signal does
    (cancel the requests in flight first), and tests run the server on any thread."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_server(app: ASGIApp, read_timeout_s: float) -> uvicorn.Server:
    config = uvicorn.Config(
        app, loop="asyncio", http="h11", ws="none", lifespan="off", proxy_headers=False, server_header=False,
        log_config=None, access_log=False, timeout_keep_alive=max(1, round(read_timeout_s)),
        timeout_graceful_shutdown=5,  # a request still running by then is cancelled
    )
    return _Uvicorn(config)


def _json(status: int, payload: dict, close: bool = False) -> Response:
    # json.dumps, not JSONResponse (compact, ensure_ascii off): the bytes the server has always written
    return Response(json.dumps(payload), status, media_type="application/json",
                    headers={"Connection": "close"} if close else None)


def _error(status: int, message: str, param: str | None = None, close: bool = False) -> Response:
    return _json(status, {"error": error_object(status, message, param)}, close)


async def _chunks(request: Request, timeout_s: float) -> AsyncIterator[bytes]:
    """The body's chunks; a client that sends nothing for ``timeout_s`` is a 408."""
    stream = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise HTTPError(408, f"the client sent nothing for {timeout_s:g} s in the middle of its request body; "
                                 "send the body without pauses") from None
        yield chunk


async def _read_body(request: Request, limits: ServerLimits) -> bytes:
    """The request body, within the server's size limit (413 above it)."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() else None
    over = "send less (or start the server with a larger --max-body-mb)"
    if size is not None and size > limit:
        if size <= _DISCARD_LIMIT:
            async for _ in _chunks(request, limits.read_timeout_s):
                pass
        raise HTTPError(413, f"request body of {size} bytes is over this server's limit of {limit} bytes; {over}")
    body = bytearray()
    async for chunk in _chunks(request, limits.read_timeout_s):  # a chunked body has no declared size
        body += chunk
        if len(body) > limit:
            raise HTTPError(413, f"request body of more than {limit} bytes is over this server's limit; {over}")
    return bytes(body)


async def _events(events: AsyncIterator[dict | str]) -> AsyncIterator[bytes]:
    """Server-sent events as OpenAI writes them: ``data: {json}``, a blank line, and last
    ``data: [DONE]``. A client that goes away cancels this (Starlette listens for the
    disconnect), which closes ``events`` and with it the generation."""
    async for event in events:
        yield f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode()


def _endpoint(server: CompletionServer, name: str) -> Callable[[Request], Awaitable[Response]]:
    async def answer(request: Request) -> Response:
        where = f"{request.method} {shown(request.url.path)}"
        try:
            body = parse_body(await _read_body(request, server.limits)) if request.method == "POST" else {}
            client = Client()
            watch = asyncio.create_task(client.watch(request.receive))
            try:
                method = getattr(server, name)  # looked up per request: tests replace endpoints
                call = functools.partial(method, body, client=client) if name in _WATCHED else functools.partial(method, body)
                result: Any = await anyio.to_thread.run_sync(call, limiter=server.limiter)
            finally:
                watch.cancel()
        except ClientGone:
            logger.info("%s: the client went away; its request was cancelled", where)
            return Response(status_code=499)  # nobody reads it
        except HTTPError as exc:
            close = exc.status in (408, 413)  # the rest of the body may still be on its way
            return _error(exc.status, exc.message, exc.param, close)
        except Exception as exc:  # never a traceback in a response; one line in the log
            message = one_line(f"{type(exc).__name__}: {exc}")
            logger.error("%s failed: %s", where, message)
            return _error(500, f"{where} failed: {message}")
        if isinstance(result, str):
            return Response(result.encode("utf-8", "backslashreplace"), media_type="text/plain; charset=utf-8")
        if isinstance(result, dict):
            return _json(200, result)
        return StreamingResponse(_events(result), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return answer


def build_app(server: CompletionServer) -> ASGIApp:
    """The routes of ``ROUTES`` over ``server``; any other path or method is a JSON 404 / 405."""
    paths = ", ".join(path for _, path in ROUTES)

    async def no_route(request: Request, exc: Exception) -> Response:
        path = shown(request.url.path)
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            return _error(405, f"{request.method} {path}: method not allowed")
        return _error(404, f"no route {request.method} {path} (routes: {paths})")

    routes = [Route(path, _endpoint(server, name), methods=[method]) for (method, path), name in ROUTES.items()]
    app = Starlette(routes=routes, exception_handlers={404: no_route, 405: no_route})

    async def without_trailing_slash(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":  # "/v1/completions/" is "/v1/completions", answered, not redirected
            scope = {**scope, "path": scope["path"].rstrip("/") or "/"}
        await app(scope, receive, send)

    return without_trailing_slash
