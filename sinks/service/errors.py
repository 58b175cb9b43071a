"""Error bodies in Timestore's two shapes (Timestore's SQL HTTP API contract).

Thrown errors use Fastify's default ``{statusCode, error, message}``; handler-built ones ``{error}``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse

from walduck.errors import WalduckError


class ApiError(WalduckError):
    """Rendered as ``{statusCode, error: <reason phrase>, message, **extra}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}
        self.code = code

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"statusCode": self.status}
        if self.code:
            out["code"] = self.code
        out["error"] = HTTPStatus(self.status).phrase
        out["message"] = self.message
        out.update(self.extra)
        return out

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_json(status: int, error: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """A handler-built ``{error, ...}`` body."""
    return JSONResponse({"error": error, **extra}, status_code=status, headers=headers)


def not_readable(name: str) -> ApiError:
    """What a caller who may not read every dataset hears for a forbidden *and* for an unknown dataset
    (same status, same body: no existence oracle), naming the reference as the caller gave it."""
    return ApiError(
        403, f"Missing required scope for dataset {name} (or no such dataset)", extra={"dataset": name}
    )
