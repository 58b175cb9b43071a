"""Bounded request bodies: refused before any parsing, and parsed off the event loop.

:class:`BodyLimit` (pure ASGI) answers **413** from ``Content-Length`` before reading anything, and
otherwise reads the body itself, counting bytes as they stream in (chunked bodies too), refusing as soon
as the limit is passed; the application only ever sees a body within the limit, replayed in one message.
Starlette's own ``RequestBodyLimitMiddleware`` is not used: it answers a plain-text 413 outside the API's
error shape and only once the route reads the body.

:class:`OffLoopJsonRoute` parses JSON bodies larger than :data:`OFF_LOOP_BYTES` in a worker thread
(FastAPI's ``Request.json()`` runs ``json.loads`` on the event loop).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sinks.service.errors import ApiError
from walduck.metrics import QUERY_LIMITS

BODY_TOO_LARGE_CODE = "FST_ERR_CTP_BODY_TOO_LARGE"  # Fastify's code for its bodyLimit (also 1 MiB)
OFF_LOOP_BYTES = 64 * 1024


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body is too large (limit {limit} bytes)", code=BODY_TOO_LARGE_CODE)


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body: nothing to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        QUERY_LIMITS.labels(limit="body_size").inc()
        response = too_large(self.max_body_bytes).response()
        response.headers["connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _OffLoopJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) > OFF_LOOP_BYTES:
                self._json = await asyncio.to_thread(json.loads, body)
            else:
                self._json = json.loads(body)
        return self._json


class OffLoopJsonRoute(APIRoute):
    """Routes whose JSON body is parsed in a worker thread when it is large."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_OffLoopJsonRequest(request.scope, request.receive))

        return route
