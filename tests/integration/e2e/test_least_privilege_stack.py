"""Issue 13 finding 2 on the whole pipeline: the components run as the least-privilege roles (as `walduck up`
and k8s/ deploy them), the pipeline still works end to end, and /sql/exec cannot reach the OS."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path

import httpx
import psycopg

from stack.catalog.roles import CONNECTOR_ROLE
from stack.workload.generator import Workload

EXEC = {"x-iam-scopes": "timestore:sql:exec"}
SAVE = {"x-iam-scopes": "timestore:sql:read"}


async def test_pipeline_runs_as_the_roles_and_exec_has_no_shell(make_stack) -> None:
    stack = await make_stack(least_privilege=True, scoped=True)  # as `walduck up` runs it
    s = stack.settings
    admin = s.pg_admin_dsn
    assert admin and s.pg_dsn != admin and s.pg_read_dsn and s.pg_exec_dsn
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    with Workload(admin, s.catalog_schema, s.storage_root, seed=5) as wl:  # the writer is Timestore (admin)
        await asyncio.to_thread(
            wl.run, datasets=2, days=2, partitions_per_shard=3, rate=0, duration=30, max_commits=12
        )
    with psycopg.connect(admin, autocommit=True) as conn:
        (lsn,) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()  # type: ignore[misc]
        (expected,) = conn.execute(
            "SELECT count(*) FROM timestore.dataset_partitions p JOIN timestore.dataset_manifests m"
            " ON m.id = p.manifest_id WHERE m.status = 'published'"
        ).fetchone()  # type: ignore[misc]
        users = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT backend_type, usename FROM pg_stat_activity"
                " WHERE backend_type = 'walsender' AND usename IS NOT NULL"
            )
        }
    from walduck.lsn import parse_lsn

    await asyncio.to_thread(stack.wait_caught_up, parse_lsn(lsn), 180)
    assert users == {"walsender": CONNECTOR_ROLE}  # the replication stream is the connector's role
    r = stack.read(
        "SELECT sum(partition_count) AS p FROM timestore_runtime.datasets",
        scopes="timestore:sql:read,timestore:admin",
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"][0]["p"] == expected > 0
    await asyncio.to_thread(_service_checks, stack.base_url)


def _service_checks(base_url: str) -> None:
    # saved queries and the audit write as the reader role
    r = httpx.put(f"{base_url}/sql/saved/q", json={"statement": "SELECT 1"}, headers=SAVE, timeout=10)
    assert r.status_code == 200, r.text
    # /sql/exec: catalog reads work, the OS is out of reach
    r = httpx.post(
        f"{base_url}/sql/exec",
        json={"sql": "SELECT current_user AS u, count(*) AS n FROM datasets"},
        headers=EXEC,
        timeout=10,
    )
    assert r.status_code == 200 and r.json()[0]["u"] == "walduck_exec", r.text
    folder = Path(tempfile.mkdtemp(prefix="walduck-shell-"))
    os.chmod(folder, 0o777)
    marker = folder / uuid.uuid4().hex
    r = httpx.post(
        f"{base_url}/sql/exec",
        json={"sql": f"COPY (select 1) TO PROGRAM 'touch {marker}'"},
        headers=EXEC,
        timeout=10,
    )
    assert r.status_code in (400, 403), r.text
    assert not marker.exists()
    folder.rmdir()
