"""SQL jobs (/v1/jobs): chains, tail layers, cancel, TTL/GC, ownership and the /sql/read sandbox (issue 19).

Real DuckDB, the real planner, sandbox and execution guard over the fake store's Parquet files."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from service_fake_store import FakeStore

from sinks.service.app import create_app
from sinks.service.audit import MemoryAudit
from sinks.service.jobs.layers import LayerCache
from sinks.service.jobs.settings import JobSettings
from sinks.service.settings import QuerySettings

ALICE = {"x-iam-scopes": "sql:read", "x-iam-user": "alice"}
ALICE_SECRET = {"x-iam-scopes": "sql:read,secret:read", "x-iam-user": "alice"}
BOB = {"x-iam-scopes": "sql:read", "x-iam-user": "bob"}
FOREVER = "SELECT count(*) AS n FROM range(100000000000) a, range(10) b"

CHAIN = {
    "01_base.sql": "CREATE TABLE obs AS SELECT site, value FROM timestore.observatory",
    "02_agg.sql": "CREATE VIEW agg AS SELECT site, sum(value) AS total FROM obs GROUP BY site",
    "03_head.sql": "SELECT site, total FROM agg ORDER BY site",
}


class JobStore(FakeStore):
    """The fake store with its storage root named, as ContextStore has it (the job sandbox reads it)."""

    def __init__(self) -> None:
        super().__init__()
        self.storage_root = self.dir
        self.generation = 0

    def rewrite_observatory(self, rows: list[tuple[str, str, float]]) -> None:
        """New partition files for the dataset (a compaction): the partition set changes."""
        self.generation += 1
        path = f"{self.dir}/observatory-{self.generation}.parquet"
        conn = duckdb.connect()
        conn.execute("CREATE TABLE t (timestamp TIMESTAMP, site VARCHAR, value DOUBLE)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
        conn.execute(f"COPY t TO '{path}' (FORMAT parquet)")
        conn.close()
        self.files["ds-obs"] = path


@pytest.fixture
async def jobs_client(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[tuple[httpx.AsyncClient, Any]] = []

    async def make(**kw: Any) -> tuple[httpx.AsyncClient, JobStore, MemoryAudit, Any]:
        store = JobStore()
        audit = MemoryAudit()
        js = JobSettings(layer_dir=str(tmp_path / f"layers{len(made)}"), **kw)
        settings = QuerySettings(sql_read_scope="sql:read", admin_scope="admin")
        app = create_app(store, settings, audit=audit, job_settings=js)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        made.append((client, app))
        return client, store, audit, app.state.jobs

    yield make
    for client, app in made:
        await client.aclose()
        await app.state.jobs.stop()


async def submit(
    client: httpx.AsyncClient, tree: dict[str, str], head: str, headers: dict[str, str] = ALICE, **kw: Any
) -> dict[str, Any]:
    r = await client.post(
        "/v1/jobs",
        json={"request_id": kw.pop("request_id", "req-1"), "project_tree": tree, "head_path": head, **kw},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    return r.json()


async def finished(
    client: httpx.AsyncClient, job_id: str, headers: dict[str, str] = ALICE, limit_s: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while True:
        r = await client.get(f"/v1/jobs/{job_id}", headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in ("completed", "failed", "canceled") or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.01)


async def run_chain(
    client: httpx.AsyncClient,
    tree: dict[str, str],
    head: str = "03_head.sql",
    headers: dict[str, str] = ALICE,
) -> dict[str, Any]:
    job = await submit(client, tree, head, headers)
    return await finished(client, job["job_id"], headers)


async def rows_of(
    client: httpx.AsyncClient, job_id: str, headers: dict[str, str] = ALICE
) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/jobs/{job_id}/result", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["rows"]


# --- chains and layers ---------------------------------------------------------------------------


async def test_three_script_chain_returns_the_heads_rows(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client()
    status = await run_chain(client, CHAIN)
    assert status["status"] == "completed", status
    assert status["layer"] == "miss" and status["tail_hash"]
    assert status["progress"] == {"scripts_done": 3, "scripts_total": 3}
    assert set(status["durations_ms"]) >= {"parse", "layer_lookup", "tail_replay", "head", "total"}
    assert await rows_of(client, status["job_id"]) == [
        {"site": "alpha", "total": 42.5},
        {"site": "beta", "total": 37.1},
    ]


async def test_editing_only_the_head_reuses_the_layer(jobs_client: Any) -> None:
    client, _, _, js = await jobs_client()
    first = await run_chain(client, CHAIN)
    edited = {**CHAIN, "03_head.sql": "SELECT count(*) AS n, max(total) AS top FROM agg"}
    second = await run_chain(client, edited)
    assert second["status"] == "completed", second
    assert second["layer"] == "hit"
    assert second["tail_hash"] == first["tail_hash"]
    assert "tail_replay" not in second["durations_ms"]
    assert await rows_of(client, second["job_id"]) == [{"n": 2, "top": 42.5}]
    assert len(js.layers) == 1


async def test_editing_a_tail_script_is_a_miss(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client()
    first = await run_chain(client, CHAIN)
    edited = {
        **CHAIN,
        "02_agg.sql": "CREATE VIEW agg AS SELECT site, max(value) + 1 AS total FROM obs GROUP BY site",
    }
    second = await run_chain(client, edited)
    assert second["status"] == "completed", second
    assert second["layer"] == "miss"
    assert second["tail_hash"] != first["tail_hash"]
    assert await rows_of(client, second["job_id"]) == [
        {"site": "alpha", "total": 43.5},
        {"site": "beta", "total": 38.1},
    ]
    renamed = {("00_" + k if k != "03_head.sql" else k): v for k, v in CHAIN.items()}
    third = await run_chain(client, renamed)
    assert third["layer"] == "miss" and third["tail_hash"] not in (first["tail_hash"], second["tail_hash"])


async def test_a_longer_tail_starts_from_the_cached_prefix(jobs_client: Any) -> None:
    client, _, _, js = await jobs_client()
    first = await run_chain(client, CHAIN)
    longer = {**CHAIN, "02b_top.sql": "CREATE TABLE top AS SELECT * FROM agg ORDER BY total DESC LIMIT 1"}
    longer["03_head.sql"] = "SELECT site FROM top"
    second = await run_chain(client, longer)
    assert second["status"] == "completed", second
    assert second["layer"] == "partial" and second["tail_hash"] != first["tail_hash"]
    assert await rows_of(client, second["job_id"]) == [{"site": "alpha"}]
    logs = (await client.get(f"/v1/jobs/{second['job_id']}/logs", headers=ALICE)).json()["entries"]
    replayed = [e["message"] for e in logs if e["message"].startswith("replayed")]
    assert replayed == ["replayed 02b_top.sql"]
    assert len(js.layers) == 2


async def test_changed_dataset_the_tail_reads_is_a_miss(jobs_client: Any) -> None:
    client, store, _, _ = await jobs_client()
    first = await run_chain(client, CHAIN)
    store.rewrite_observatory([("2024-01-02 00:00:00", "gamma", 1.0)])
    second = await run_chain(client, CHAIN)
    assert second["status"] == "completed", second
    assert second["layer"] == "miss"
    assert second["tail_hash"] != first["tail_hash"]
    assert await rows_of(client, second["job_id"]) == [{"site": "gamma", "total": 1.0}]


async def test_variables_enter_the_scripts_as_literals(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client()
    tree = {
        "01.sql": "CREATE TABLE big AS SELECT site FROM timestore.observatory WHERE value > ${floor}",
        "02.sql": "SELECT site, ${tag} AS tag FROM big",
    }
    job = await submit(client, tree, "02.sql", variables={"floor": 40, "tag": "it's"})
    status = await finished(client, job["job_id"])
    assert status["status"] == "completed", status
    assert await rows_of(client, job["job_id"]) == [{"site": "alpha", "tag": "it's"}]


# --- the sandbox, IAM and the guard hold for every script ----------------------------------------


async def _sql_read_message(
    client: httpx.AsyncClient, sql: str, headers: dict[str, str] = ALICE
) -> tuple[int, str]:
    r = await client.post("/sql/read", json={"sql": sql}, headers=headers)
    return r.status_code, r.json()["message"]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT getenv('HOME') AS h",
        "SELECT * FROM duckdb_settings()",
        "SELECT * FROM information_schema.tables",
    ],
)
async def test_tail_script_reading_a_file_fails_with_the_sandbox_message(
    jobs_client: Any, query: str
) -> None:
    client, _, _, _ = await jobs_client()
    status_code, message = await _sql_read_message(client, query)
    assert status_code == 400
    tree = {"01.sql": f"CREATE TABLE leak AS {query}", "02.sql": "SELECT * FROM leak"}
    status = await finished(client, (await submit(client, tree, "02.sql"))["job_id"])
    assert status["status"] == "failed"
    assert status["error"]["code"] == "sandbox"
    assert status["error"]["path"] == "01.sql"
    assert status["error"]["message"] == f"01.sql: {message}"
    assert status["result"] is None


async def test_tail_script_reading_a_forbidden_dataset_fails(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client()
    status_code, message = await _sql_read_message(client, "SELECT * FROM timestore.secret")
    assert status_code == 403
    tree = {"01.sql": "CREATE TABLE s AS SELECT * FROM timestore.secret", "02.sql": "SELECT * FROM s"}
    status = await finished(client, (await submit(client, tree, "02.sql"))["job_id"])
    assert status["status"] == "failed"
    assert status["error"] == {
        "code": "forbidden",
        "message": f"01.sql: {message}",
        "path": "01.sql",
        "dataset": "secret",
    }
    # an unknown dataset answers the same (no existence oracle)
    tree = {"01.sql": "CREATE TABLE s AS SELECT * FROM timestore.nothing", "02.sql": "SELECT * FROM s"}
    status = await finished(client, (await submit(client, tree, "02.sql"))["job_id"])
    assert (
        status["error"]["message"]
        == "01.sql: Missing required scope for dataset nothing (or no such dataset)"
    )
    # with the dataset's scope the same chain runs
    tree = {"01.sql": "CREATE TABLE s AS SELECT payload FROM timestore.secret", "02.sql": "SELECT * FROM s"}
    status = await finished(
        client, (await submit(client, tree, "02.sql", ALICE_SECRET))["job_id"], ALICE_SECRET
    )
    assert status["status"] == "completed", status


@pytest.mark.parametrize(
    "script",
    [
        "COPY (SELECT 1) TO '/tmp/walduck-job-leak.csv'",
        "ATTACH '/tmp/walduck-job-leak.duckdb' AS x",
        "INSERT INTO obs VALUES ('x', 1)",
        "SET enable_external_access = true",
        "CREATE TABLE main.other AS SELECT 1",
        "CREATE TABLE t AS SELECT * FROM obs; DROP TABLE obs",
        "CREATE MACRO tm(a) AS TABLE SELECT a",
        "CREATE MACRO sum(a) AS a + 1",
        "CREATE MACRO main.m(a) AS a + 1",
        "PRAGMA database_list",
    ],
)
async def test_tail_statements_other_than_create_as_query_are_refused(jobs_client: Any, script: str) -> None:
    client, _, _, _ = await jobs_client()
    tree = {"01.sql": CHAIN["01_base.sql"], "02.sql": script, "03.sql": "SELECT 1 AS one"}
    status = await finished(client, (await submit(client, tree, "03.sql"))["job_id"])
    assert status["status"] == "failed", status
    assert status["error"]["path"] == "02.sql"
    assert not await asyncio.to_thread(Path("/tmp/walduck-job-leak.csv").exists)


async def test_chain_objects_do_not_reach_other_relations(jobs_client: Any) -> None:
    """A bare name that is not an earlier chain object stays refused, as on /sql/read."""
    client, _, _, _ = await jobs_client()
    status_code, message = await _sql_read_message(client, "SELECT * FROM duckdb_tables")
    assert status_code == 400
    tree = {"01.sql": CHAIN["01_base.sql"], "02.sql": "SELECT * FROM duckdb_tables"}
    status = await finished(client, (await submit(client, tree, "02.sql"))["job_id"])
    assert status["status"] == "failed"
    assert status["error"]["message"] == f"02.sql: {message}"


# --- ownership --------------------------------------------------------------------------------


async def test_another_users_job_is_404(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client()
    status = await run_chain(client, CHAIN)
    job_id = status["job_id"]
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/logs"),
        ("GET", f"/v1/jobs/{job_id}/result"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("POST", f"/v1/jobs/{job_id}/run"),
        ("POST", f"/v1/jobs/{job_id}/append"),
    ]:
        kw: dict[str, Any] = {"json": {}} if method == "POST" else {}
        r = await client.request(method, path, headers=BOB, **kw)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["message"] == f"Job {job_id} not found"
        # the same answer as for a job that does not exist
        r = await client.request(method, path.replace(job_id, "job-nope"), headers=BOB, **kw)
        assert r.status_code == 404
    # the owner with fewer scopes than at creation does not see it either
    r = await client.get(f"/v1/jobs/{job_id}", headers={"x-iam-user": "alice", "x-iam-scopes": "sql:read"})
    assert r.status_code == 200
    s = await run_chain(client, CHAIN, headers=ALICE_SECRET)
    r = await client.get(f"/v1/jobs/{s['job_id']}", headers=ALICE)
    assert r.status_code == 404


async def test_job_routes_need_the_sql_read_scope(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client()
    r = await client.post(
        "/v1/jobs", json={"project_tree": CHAIN, "head_path": "03_head.sql"}, headers={"x-iam-user": "alice"}
    )
    assert r.status_code == 403


# --- cancel, timeout, limits -------------------------------------------------------------------


async def test_cancel_mid_head_interrupts_duckdb_and_frees_the_slot(jobs_client: Any) -> None:
    client, _, _, js = await jobs_client(max_concurrent=1)
    job = await submit(client, {"01.sql": CHAIN["01_base.sql"], "02.sql": FOREVER}, "02.sql")
    deadline = time.monotonic() + 20
    while (await client.get(f"/v1/jobs/{job['job_id']}", headers=ALICE)).json()["stage"] != "head":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # DuckDB is inside the head's scan
    started = time.perf_counter()
    r = await client.post(f"/v1/jobs/{job['job_id']}/cancel", headers=ALICE)
    assert r.status_code == 200
    status = await finished(client, job["job_id"], limit_s=5)
    freed = time.perf_counter() - started
    assert status["status"] == "canceled", status
    assert status["error"]["code"] == "canceled"
    assert freed < 3.0  # a liveness bound; the measured figure is in docs/performance.md
    assert js.runner.running == 0
    # the single slot runs the next job
    quick = await run_chain(client, CHAIN)
    assert quick["status"] == "completed"


async def test_cancel_a_queued_job(jobs_client: Any) -> None:
    client, _, _, js = await jobs_client(max_concurrent=1)
    slow = await submit(client, {"01.sql": FOREVER}, "01.sql")
    queued = await submit(client, CHAIN, "03_head.sql")
    await asyncio.sleep(0.1)
    assert js.runner.queue_depth == 1
    r = await client.post(f"/v1/jobs/{queued['job_id']}/cancel", headers=ALICE)
    assert r.status_code == 200
    assert (await finished(client, queued["job_id"]))["status"] == "canceled"
    await client.post(f"/v1/jobs/{slow['job_id']}/cancel", headers=ALICE)
    assert (await finished(client, slow["job_id"]))["status"] == "canceled"
    assert js.runner.queue_depth == 0


async def test_job_timeout_fails_the_job(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client()
    job = await submit(client, {"01.sql": FOREVER}, "01.sql", timeout_ms=300)
    status = await finished(client, job["job_id"])
    assert status["status"] == "failed"
    assert status["error"]["code"] == "timeout"


async def test_queue_full_is_429(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client(max_concurrent=1, max_queued=1)
    a = await submit(client, {"01.sql": FOREVER}, "01.sql")
    b = await submit(client, {"01.sql": FOREVER}, "01.sql")
    await asyncio.sleep(0.05)
    r = await client.post(
        "/v1/jobs", json={"project_tree": {"01.sql": "SELECT 1"}, "head_path": "01.sql"}, headers=ALICE
    )
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    for j in (a, b):
        await client.post(f"/v1/jobs/{j['job_id']}/cancel", headers=ALICE)
        assert (await finished(client, j["job_id"]))["status"] == "canceled"


# --- API: append/run, logs, result formats, audit ------------------------------------------------


async def test_append_then_run(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client()
    job = await submit(client, {"01_base.sql": CHAIN["01_base.sql"]}, "03_head.sql", run=False)
    assert job["status"] == "pending"
    r = await client.post(
        f"/v1/jobs/{job['job_id']}/append",
        json={"project_tree": {k: v for k, v in CHAIN.items() if k != "01_base.sql"}},
        headers=ALICE,
    )
    assert r.status_code == 200, r.text
    r = await client.post(f"/v1/jobs/{job['job_id']}/run", json={"wait_ms": 10_000}, headers=ALICE)
    assert r.status_code == 200
    assert r.json()["status"] == "completed", r.json()
    assert (await client.post(f"/v1/jobs/{job['job_id']}/run", json={}, headers=ALICE)).status_code == 409
    assert (await client.post(f"/v1/jobs/{job['job_id']}/append", json={}, headers=ALICE)).status_code == 409


async def test_bad_head_path_is_400(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client()
    r = await client.post("/v1/jobs", json={"project_tree": CHAIN, "head_path": "nope.sql"}, headers=ALICE)
    assert r.status_code == 400


async def test_logs_with_cursor_and_no_row_data(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client()
    status = await run_chain(client, CHAIN)
    r = await client.get(f"/v1/jobs/{status['job_id']}/logs", params={"limit": 2}, headers=ALICE)
    body = r.json()
    assert len(body["entries"]) == 2 and body["next_cursor"] == body["entries"][-1]["seq"]
    r = await client.get(
        f"/v1/jobs/{status['job_id']}/logs", params={"cursor": body["next_cursor"]}, headers=ALICE
    )
    rest = r.json()["entries"]
    assert rest and all(e["seq"] > body["next_cursor"] for e in rest)
    text = " ".join(e["message"] for e in body["entries"] + rest)
    assert "alpha" not in text and "beta" not in text  # (durations may contain any digits)
    r = await client.get(f"/v1/jobs/{status['job_id']}/logs", params={"stream": "true"}, headers=ALICE)
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "event: end" in r.text


async def test_result_formats_and_paging(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client()
    job = await submit(
        client, {"01.sql": "SELECT range AS n FROM range(5) ORDER BY n"}, "01.sql", wait_ms=10_000
    )
    assert job["status"] == "completed", job
    url = f"/v1/jobs/{job['job_id']}/result"
    r = await client.get(url, params={"offset": 1, "limit": 2}, headers=ALICE)
    body = r.json()
    assert body["rows"] == [{"n": 1}, {"n": 2}] and body["nextOffset"] == 3 and body["totalRows"] == 5
    r = await client.get(url, params={"format": "csv", "offset": 3}, headers=ALICE)
    assert r.text == "n\n3\n4" and "x-job-next-offset" not in r.headers
    r = await client.get(url, params={"format": "arrow"}, headers=ALICE)
    assert pa.ipc.open_stream(r.content).read_all().column("n").to_pylist() == [0, 1, 2, 3, 4]
    r = await client.get(url, params={"format": "parquet", "limit": 2}, headers=ALICE)
    assert pq.read_table(io.BytesIO(r.content)).column("n").to_pylist() == [0, 1]
    assert (await client.get(url, params={"format": "xml"}, headers=ALICE)).status_code == 406


async def test_result_before_completion_is_409(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client()
    job = await submit(client, {"01.sql": FOREVER}, "01.sql")
    r = await client.get(f"/v1/jobs/{job['job_id']}/result", headers=ALICE)
    assert r.status_code == 409
    await client.post(f"/v1/jobs/{job['job_id']}/cancel", headers=ALICE)
    await finished(client, job["job_id"])


async def test_audit_of_create_run_cancel_and_result_reads(jobs_client: Any) -> None:
    client, _, audit, _ = await jobs_client()
    job = await submit(client, CHAIN, "03_head.sql", request_id="req-audit", wait_ms=10_000)
    await client.get(f"/v1/jobs/{job['job_id']}/result", headers=ALICE)
    await client.post(f"/v1/jobs/{job['job_id']}/cancel", headers=ALICE)
    actions = [
        (e.action, e.actor_id, e.metadata["requestId"], e.metadata["jobId"])
        for e in audit.entries
        if e.action.startswith("sql.job.")
    ]
    assert [a[0] for a in actions] == ["sql.job.create", "sql.job.run", "sql.job.result", "sql.job.cancel"]
    assert all(a[1] == "alice" and a[2] == "req-audit" and a[3] == job["job_id"] for a in actions)


# --- TTL and GC --------------------------------------------------------------------------------


async def test_ttl_expiry_removes_job_result_and_unused_layer(jobs_client: Any) -> None:
    client, _, _, js = await jobs_client(layer_ttl_s=0.05)
    keep = await run_chain(client, CHAIN)  # default TTL: keeps naming the layer
    short = await submit(
        client,
        {**CHAIN, "01_base.sql": CHAIN["01_base.sql"] + " WHERE value > 0"},
        "03_head.sql",
        job_ttl=0.05,
    )
    short = await finished(client, short["job_id"])
    assert short["status"] == "completed" and len(js.layers) == 2
    short_layer = js.layers.get(short["tail_hash"])
    assert short_layer is not None and short_layer.path.exists()
    await asyncio.sleep(0.1)
    report = js.gc()
    assert report.jobs == 1 and report.results == 1 and report.bytes_freed > 0
    assert (await client.get(f"/v1/jobs/{short['job_id']}", headers=ALICE)).status_code == 404
    assert not short_layer.path.exists() and js.layers.get(short["tail_hash"]) is None
    # the layer a live job names stays
    kept = js.layers.get(keep["tail_hash"])
    assert kept is not None and kept.path.exists()
    assert (await client.get(f"/v1/jobs/{keep['job_id']}", headers=ALICE)).status_code == 200


def test_layer_cache_lru_eviction_by_count_and_bytes(tmp_path: Path) -> None:
    now = [0.0]
    cache = LayerCache(str(tmp_path), max_bytes=10**9, max_count=2, ttl_s=100, clock=lambda: now[0])

    def publish(h: str) -> None:
        tmp = cache.new_tmp(h)
        conn = duckdb.connect(str(tmp))
        conn.execute("CREATE TABLE t AS SELECT 1 AS x")
        conn.close()
        cache.release(cache.publish(h, tmp, {"t"}))
        now[0] += 1

    publish("a")
    publish("b")
    covered, layer = cache.acquire_longest(["a"])  # a used more recently than b
    assert covered == 1 and layer is not None
    cache.release(layer)
    now[0] += 1
    publish("c")
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    held = cache.acquire_longest(["a"])[1]
    cache.max_bytes = 1
    cache.evict()
    assert cache.get("a") is not None and cache.get("c") is None  # in use: kept over the bound
    cache.release(held)
    cache.evict()
    assert len(cache) == 0 and not list(tmp_path.glob("*.duckdb"))


async def test_metrics_and_openapi_show_jobs(jobs_client: Any) -> None:
    client, _, _, js = await jobs_client()
    await run_chain(client, CHAIN)
    await run_chain(client, CHAIN)
    js.gc()
    text = (await client.get("/metrics", headers={"x-iam-scopes": "admin"})).text
    for name in (
        'walduck_job_stage_seconds_count{stage="tail_replay"}',
        'walduck_job_layer_lookups_total{result="hit"}',
        'walduck_jobs_finished_total{outcome="completed"}',
        "walduck_job_queue_depth",
        "walduck_job_gc_runs_total",
        "walduck_job_layer_bytes",
    ):
        assert name in text, name
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/result"} <= set(
        paths
    )


def test_job_worker_threads_run_nicer_than_the_process() -> None:
    import os
    import threading

    from sinks.service.jobs.runner import _lower_priority

    seen: list[int] = []

    def worker() -> None:
        before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        _lower_priority(5)
        seen.extend([before, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())])

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen[1] == min(19, seen[0] + 5)
    # the calling thread (the event loop's) keeps its priority
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == seen[0]


async def test_a_burst_of_submits_sees_its_own_queue(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client(max_concurrent=1, max_queued=1)
    body = {"project_tree": {"01.sql": FOREVER}, "head_path": "01.sql"}
    answers = await asyncio.gather(*(client.post("/v1/jobs", json=body, headers=ALICE) for _ in range(4)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [201, 201, 429, 429], codes
    for r in answers:
        if r.status_code == 201:
            await client.post(f"/v1/jobs/{r.json()['job_id']}/cancel", headers=ALICE)
            assert (await finished(client, r.json()["job_id"]))["status"] == "canceled"


def test_job_worker_threads_can_run_sched_idle() -> None:
    import os
    import threading

    from sinks.service.jobs.runner import _lower_priority

    seen: list[int] = []

    def worker() -> None:
        _lower_priority(5, idle=True)
        seen.append(os.sched_getscheduler(threading.get_native_id()))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [os.SCHED_IDLE]
    assert os.sched_getscheduler(threading.get_native_id()) != os.SCHED_IDLE


async def test_min_lsn_waits_for_the_contexts(jobs_client: Any) -> None:
    client, store, _, _ = await jobs_client(max_concurrent=1)
    r = await client.post(
        "/v1/jobs", json={"project_tree": CHAIN, "head_path": "03_head.sql", "min_lsn": "zz"}, headers=ALICE
    )
    assert r.status_code == 400
    target = store.lsn + 16
    job = await submit(client, CHAIN, "03_head.sql", min_lsn=f"{target >> 32:X}/{target & 0xFFFFFFFF:X}")
    await asyncio.sleep(0.2)
    assert (await client.get(f"/v1/jobs/{job['job_id']}", headers=ALICE)).json()["status"] == "pending"
    # waiting for its LSN it holds no slot: the single slot serves another job meanwhile
    assert (await run_chain(client, CHAIN))["status"] == "completed"
    store.lsn = target
    assert (await finished(client, job["job_id"]))["status"] == "completed"
    short = await submit(client, CHAIN, "03_head.sql", min_lsn="FF/0", timeout_ms=200)
    status = await finished(client, short["job_id"])
    assert status["status"] == "failed" and status["error"]["code"] == "min_lsn"


async def test_macros_are_inlined_before_the_checks(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client()
    tree = {
        "01_macros.sql": "CREATE MACRO twice(x) AS x * 2; CREATE MACRO plus_twice(x, y) AS twice(x) + y",
        "02_base.sql": "CREATE TABLE obs AS SELECT site, twice(value) AS v FROM timestore.observatory",
        "03_head.sql": "SELECT site, plus_twice(v, 1) AS w FROM obs ORDER BY site",
    }
    status = await run_chain(client, tree)
    assert status["status"] == "completed", status
    assert await rows_of(client, status["job_id"]) == [
        {"site": "alpha", "w": 171.0},
        {"site": "beta", "w": 149.4},
    ]
    # a macro body reaching a forbidden dataset is refused where it is used, with /sql/read's message
    tree = {
        "01.sql": "CREATE MACRO leak() AS (SELECT max(payload) FROM timestore.secret)",
        "02.sql": "SELECT leak() AS p",
    }
    status = await finished(client, (await submit(client, tree, "02.sql"))["job_id"])
    assert status["status"] == "failed"
    assert status["error"]["code"] == "forbidden" and status["error"]["path"] == "02.sql"
    tree = {"01.sql": "CREATE MACRO env() AS getenv('HOME')", "02.sql": "SELECT env() AS h"}
    status = await finished(client, (await submit(client, tree, "02.sql"))["job_id"])
    assert status["error"]["code"] == "sandbox" and "getenv" in status["error"]["message"]
    tree = {"01.sql": "CREATE MACRO one(a) AS a", "02.sql": "SELECT one(1, 2) AS h"}
    status = await finished(client, (await submit(client, tree, "02.sql"))["job_id"])
    assert status["error"]["message"] == "02.sql: macro one takes 1 argument(s), not 2"


async def test_kept_results_are_bounded(jobs_client: Any) -> None:
    client, _, _, _ = await jobs_client(results_max_bytes=20_000)
    first = await submit(client, {"01.sql": "SELECT range AS n FROM range(1000)"}, "01.sql", wait_ms=10_000)
    assert first["status"] == "completed", first
    second = await submit(client, {"01.sql": "SELECT range AS n FROM range(2000)"}, "01.sql", wait_ms=10_000)
    assert second["status"] == "failed"
    assert second["error"]["code"] == "result_space"
    assert "WALDUCK_JOBS_RESULTS_MAX_BYTES" in second["error"]["message"]


async def test_a_cached_layer_never_bypasses_the_readers_iam(jobs_client: Any) -> None:
    """Layers are shared by content, but every script is planned for the caller first: a user who may not
    read what the tail read gets the planner's 403 message, not the cached layer."""
    client, _, _, js = await jobs_client()
    tree = {"01.sql": "CREATE TABLE s AS SELECT payload FROM timestore.secret", "02.sql": "SELECT * FROM s"}
    owner = await finished(
        client, (await submit(client, tree, "02.sql", ALICE_SECRET))["job_id"], ALICE_SECRET
    )
    assert owner["status"] == "completed" and js.layers.get(owner["tail_hash"]) is not None
    other = await finished(client, (await submit(client, tree, "02.sql", BOB))["job_id"], BOB)
    assert other["status"] == "failed" and other["error"]["code"] == "forbidden"
    assert other["layer"] == "none" and other["tail_hash"] is None and other["result"] is None
    # a reader with the scope shares it
    carol = {"x-iam-scopes": "sql:read,secret:read", "x-iam-user": "carol"}
    shared = await finished(client, (await submit(client, tree, "02.sql", carol))["job_id"], carol)
    assert shared["layer"] == "hit" and shared["tail_hash"] == owner["tail_hash"]
