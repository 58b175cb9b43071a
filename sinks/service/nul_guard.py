"""Requests whose path or query holds a NUL character are refused with 400 before routing.

PostgreSQL text cannot hold NUL (psycopg raises ``DataError``) and file paths cannot either, so a ``%00``
in ``/sql/saved/{id}``, ``/admin/datasets/{ref}/manifest`` or ``?shard=`` used to end as a 500. One check
here covers every route and parameter, present and future.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from sinks.service.errors import ApiError

NUL_MESSAGE = "NUL characters (%00) are not allowed in the request path or query"


class RejectNul:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _has_nul(scope):
            await ApiError(400, NUL_MESSAGE).response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _has_nul(scope: Scope) -> bool:
    if "\x00" in scope.get("path", ""):
        return True
    raw = scope.get("raw_path") or b""
    query = scope.get("query_string") or b""
    return b"\x00" in unquote_to_bytes(raw) or b"\x00" in unquote_to_bytes(query.replace(b"+", b" "))
