"""The query service's ops routes (issue 17): /ready from every dependency's real state (contexts bootstrapped
and caught up, the deltas consumer connected, PostgreSQL reachable, not stopping), /live, and a /metrics that
exports the query process's series only (it exported the connector's and the compactor's too)."""

from __future__ import annotations

import re
from typing import Any

import httpx

from sinks.service.app import create_app
from sinks.service.audit import MemoryAudit
from sinks.service.settings import QuerySettings
from tests.unit.service.service_fake_store import FakeStore

ADMIN = {"x-iam-scopes": "admin"}


def _client(
    checks: dict[str, Any] | None = None, stopping: Any = None
) -> tuple[httpx.AsyncClient, FakeStore]:
    store = FakeStore()
    app = create_app(
        store,
        QuerySettings(sql_read_scope="sql:read", admin_scope="admin"),
        audit=MemoryAudit(),
        checks=checks,
        stopping=stopping,
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t"), store


async def test_metrics_lists_only_the_query_process_series() -> None:
    client, _ = _client()
    async with client:
        text = (await client.get("/metrics", headers=ADMIN)).text
    families = set(re.findall(r"^# TYPE (walduck_[a-z0-9_]+) ", text, re.M))
    phantom = sorted(f for f in families if f.startswith(("walduck_connector_", "walduck_compactor_")))
    assert not phantom, phantom
    assert "walduck_query_requests_total" in families and "walduck_shard_staleness_seconds" in families
    assert "walduck_build_info" in families


async def test_ready_follows_each_dependency_and_stopping() -> None:
    state = {"consumer": False, "postgres": True, "stopping": False}
    client, store = _client(
        checks={"deltasConsumer": lambda: state["consumer"], "postgres": lambda: state["postgres"]},
        stopping=lambda: state["stopping"],
    )
    async with client:
        r = await client.get("/ready")
        assert r.status_code == 503 and r.json()["checks"]["deltasConsumer"] is False
        state["consumer"] = True
        r = await client.get("/ready")
        assert r.status_code == 200, r.json()
        assert r.json()["checks"] == {
            "bootstrapped": True,
            "caughtUp": True,
            "deltasConsumer": True,
            "postgres": True,
        }
        state["postgres"] = False
        assert (await client.get("/ready")).status_code == 503
        state["postgres"] = True
        store.bootstrapped = False
        assert (await client.get("/ready")).json()["checks"]["bootstrapped"] is False
        store.bootstrapped = True
        state["stopping"] = True
        r = await client.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "stopping"
        assert (await client.get("/live")).status_code == 200  # stopping is not dead


async def test_metrics_accepts_the_pod_monitors_bearer_token(tmp_path) -> None:
    """k8s/podmonitors.yaml scrapes the query pods with `authorization: Bearer` from the Secret the pods mount as
    WALDUCK_METRICS_TOKEN_FILE: the route accepts exactly that token, or the metrics scope; nothing else."""
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    settings = QuerySettings(
        sql_read_scope="sql:read", admin_scope="admin", metrics_scope="metrics", metrics_token_file=token
    )
    app = create_app(FakeStore(), settings, audit=MemoryAudit())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (
            await client.get("/metrics", headers={"authorization": "Bearer s3cret-token"})
        ).status_code == 200
        assert (await client.get("/metrics", headers={"x-iam-scopes": "metrics"})).status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret-token"}):
            assert (await client.get("/metrics", headers=headers)).status_code == 403, headers
        token.write_text("")  # an empty token file opens nothing
        assert (await client.get("/metrics", headers={"authorization": "Bearer "})).status_code == 403


async def test_large_responses_are_gzipped_when_asked() -> None:
    """issue 17: no gzip. A large /sql/read body is compressed for a client that accepts gzip (httpx decodes
    it: same rows), a small one and a client that does not ask are served plain."""
    client, _ = _client()
    big = {"sql": "SELECT repeat('walduck ', 20) AS s, range AS n FROM range(2000)"}
    read = {"x-iam-scopes": "sql:read"}
    async with client:
        zipped = await client.post("/sql/read", json=big, headers={**read, "accept-encoding": "gzip"})
        assert zipped.status_code == 200, zipped.text
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.num_bytes_downloaded < len(zipped.content) / 5  # bytes on the wire vs decoded
        assert len(zipped.json()["rows"]) == 2000
        plain = await client.post("/sql/read", json=big, headers={**read, "accept-encoding": "identity"})
        assert "content-encoding" not in plain.headers, plain.request.headers
        assert plain.json()["rows"] == zipped.json()["rows"]
        small = await client.get("/health", headers={"accept-encoding": "gzip"})
        assert "content-encoding" not in small.headers


async def test_every_log_line_of_a_request_carries_its_request_id() -> None:
    """issue 17: the log format's request id. A gateway's x-request-id is kept (else one is made), echoed, and
    on every line logged while the request is served."""
    import io
    import json
    import logging

    from walduck import logs

    stream = io.StringIO()
    logs.setup_logging("query", "info", "json", stream=stream)
    try:

        def logging_check() -> bool:
            logging.getLogger("sinks.service.test").info("checking for %s", "ready")
            return True

        client, _ = _client(checks={"logs": logging_check})
        async with client:
            given = await client.get("/ready", headers={"x-request-id": "gw-1234"})
            made = await client.get("/ready", headers={"x-request-id": "bad id with spaces"})
    finally:
        logging.getLogger().handlers.clear()
    assert given.headers["x-request-id"] == "gw-1234"
    assert made.headers["x-request-id"].startswith("req-")
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if "checking for" in line]
    assert [line.get("requestId") for line in lines] == ["gw-1234", made.headers["x-request-id"]]
