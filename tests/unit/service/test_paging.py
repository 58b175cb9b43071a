"""Paging past the row cap (issue 17: results stopped at the cap with no way on). A truncated /sql/read answer
carries a cursor (``nextCursor`` in JSON, ``x-sql-next-cursor`` in every format); the same statement with it
returns the rows after those already sent, until an answer is complete (no cursor)."""

from __future__ import annotations

import httpx
import pyarrow as pa

from sinks.service.app import create_app
from sinks.service.audit import MemoryAudit
from sinks.service.settings import QuerySettings
from tests.unit.service.service_fake_store import FakeStore

READ = {"x-iam-scopes": "sql:read"}
SQL = "SELECT range AS n FROM range(10) ORDER BY n"


def _client(**kw: object) -> httpx.AsyncClient:
    settings = QuerySettings(sql_read_scope="sql:read", admin_scope="admin", row_cap=3, **kw)
    app = create_app(FakeStore(), settings, audit=MemoryAudit())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_json_pages_cover_every_row_once() -> None:
    seen: list[int] = []
    cursor = None
    pages = 0
    async with _client() as client:
        while True:
            body = {"sql": SQL, **({"cursor": cursor} if cursor else {})}
            r = await client.post("/sql/read", json=body, headers=READ)
            assert r.status_code == 200, r.text
            page = r.json()
            seen += [row["n"] for row in page["rows"]]
            pages += 1
            cursor = page.get("nextCursor")
            assert page["truncated"] is (cursor is not None)
            assert r.headers.get("x-sql-next-cursor") == cursor
            if cursor is None:
                break
    assert seen == list(range(10)) and pages == 4


async def test_arrow_pages_and_cursor_checks() -> None:
    async with _client() as client:
        first = await client.post("/sql/read?format=arrow", json={"sql": SQL}, headers=READ)
        cursor = first.headers["x-sql-next-cursor"]
        second = await client.post(
            "/sql/read?format=arrow", json={"sql": SQL, "cursor": cursor}, headers=READ
        )
        table = pa.ipc.open_stream(second.content).read_all()
        assert table.column("n").to_pylist() == [3, 4, 5]
        # a cursor belongs to its statement and parameters; a forged or foreign one is refused
        other = await client.post("/sql/read", json={"sql": "SELECT 1 AS n", "cursor": cursor}, headers=READ)
        assert other.status_code == 400 and "cursor" in other.json()["message"]
        forged = await client.post("/sql/read", json={"sql": SQL, "cursor": "not-a-cursor"}, headers=READ)
        assert forged.status_code == 400
