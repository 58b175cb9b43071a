"""Regression: ``walduck verify --url`` must send the admin scope, or a service with
``TIMESTORE_ADMIN_SCOPE`` set answers 403 and verify crashes instead of comparing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sinks.verify import context_snapshot_from_service

SNAPSHOT = {"snapshot": {"appliedLsn": "0/10", "datasets": []}}


class AdminOnly(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        scopes = [s.strip() for s in (self.headers.get("x-iam-scopes") or "").split(",")]
        ok = "timestore:admin" in scopes
        body = json.dumps(SNAPSHOT if ok else {"statusCode": 403, "error": "Forbidden"}).encode()
        self.send_response(200 if ok else 403)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def admin_only_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), AdminOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_snapshot_request_carries_admin_scope_by_default(admin_only_url: str) -> None:
    snap = context_snapshot_from_service(admin_only_url)
    assert snap["appliedLsn"] == "0/10"


def test_without_scopes_the_admin_route_refuses(admin_only_url: str) -> None:
    import httpx

    with pytest.raises(httpx.HTTPStatusError):
        context_snapshot_from_service(admin_only_url, scopes=None)
