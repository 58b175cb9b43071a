"""Issue 16's oversize strategy end to end: a dataset row whose consumed column alone is over the one size
limit cannot travel as a change record (it becomes a stub the compactor dead-letters); its dataset's delta
asks every context to rebuild that dataset from PostgreSQL, so the context still ends up with the change."""

from __future__ import annotations

import asyncio
import time

import httpx
import psycopg

from stack.local import Stack

LIMIT = 4 * 1024 * 1024


async def test_an_oversize_dataset_row_reaches_the_context_through_a_rebuild(make_stack) -> None:
    stack: Stack = await make_stack(WALDUCK_MAX_MESSAGE_BYTES=str(LIMIT))
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    description = "d" * 5_000_000  # read by contexts (GET /sql/schema shows it): no strategy may drop it
    with psycopg.connect(stack.settings.pg_dsn, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {stack.settings.catalog_schema}.datasets (id, slug, name, description)"
            " VALUES ('ds-huge', 'ds-huge', 'huge', %s)",
            [description],
        )
    await asyncio.to_thread(stack.wait_caught_up, None, 120)
    deadline = time.monotonic() + 90
    found = None
    while time.monotonic() < deadline:
        resp = await asyncio.to_thread(httpx.get, f"{stack.base_url}/sql/schema", timeout=30)
        body = resp.json()
        found = next((t for t in body["tables"] if t["name"] == "timestore.ds_huge"), None)
        if found is not None and (found.get("description") or "").startswith(description):
            break
        await asyncio.sleep(0.5)
    assert found is not None, stack.logs()
    # (the service appends its note on the view name to the description)
    assert found["description"].startswith(description), (
        len(found.get("description") or ""),
        stack.logs()[-3000:],
    )
    assert "oversize" in stack.components["compactor"].tail(200)
