"""The running stack as a platform team probes and scrapes it (issue 17), connector, compactor and query
service as real processes:

- /ready is 200 with every named check true once the stack streams; any other path on the metrics ports is
  404 (it answered the metrics on every path);
- each component's /metrics lists its own walduck series only (the compactor and the query pods exported
  ``walduck_connector_replication_lag_bytes 0``);
- with WALDUCK_LOG_FORMAT=json every line every component writes is one JSON object with the same fields;
- SIGINT stops each component (the time each took is printed).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from datetime import datetime

import httpx
import pytest

from stack.procs import wait_until

pytestmark = pytest.mark.integration

OWN_PREFIXES = {
    "connector": ("walduck_connector_", "walduck_dlq_"),
    "compactor": ("walduck_compactor_", "walduck_dlq_", "walduck_kafka_consumer_lag"),
}
FOREIGN_TO_QUERY = ("walduck_connector_", "walduck_compactor_")
ADMIN = {"x-iam-scopes": "timestore:admin"}
FIELDS = {"ts", "level", "logger", "component", "msg"}


def _families(text: str) -> set[str]:
    return set(re.findall(r"^# TYPE (walduck_[a-z0-9_]+) ", text, re.M)) - {"walduck_build_info"}


async def test_probes_scrapes_logs_and_sigint_of_the_live_stack(make_stack) -> None:
    stack = await make_stack(partitions=2, WALDUCK_LOG_FORMAT="json")
    stack.start()
    await asyncio.to_thread(stack.wait_ready, 180)
    ports = {"connector": stack.connector_metrics_port, "compactor": stack.compactor_metrics_port}

    def all_ready() -> bool:
        try:
            return all(
                httpx.get(f"http://127.0.0.1:{p}/ready", timeout=2).status_code == 200 for p in ports.values()
            )
        except httpx.HTTPError:
            return False

    await asyncio.to_thread(wait_until, all_ready, 120, 0.5, "connector and compactor /ready")
    async with httpx.AsyncClient(timeout=10) as client:
        for name, port in ports.items():
            base = f"http://127.0.0.1:{port}"
            ready = (await client.get(f"{base}/ready")).json()
            assert ready["status"] == "ready" and ready["checks"] and all(ready["checks"].values()), ready
            assert (await client.get(f"{base}/live")).status_code == 200
            assert (await client.get(f"{base}/")).status_code == 404
            assert (await client.get(f"{base}/ready/x")).status_code == 404
            families = _families((await client.get(f"{base}/metrics")).text)
            foreign = sorted(f for f in families if not f.startswith(OWN_PREFIXES[name]))
            assert families and not foreign, (name, foreign)
        ready = (await client.get(f"{stack.base_url}/ready")).json()
        assert ready["checks"]["deltasConsumer"] and ready["checks"]["postgres"], ready
        families = _families((await client.get(f"{stack.base_url}/metrics", headers=ADMIN)).text)
        assert families and not [f for f in families if f.startswith(FOREIGN_TO_QUERY)], families

    stopped = {}
    for name in ("query", "compactor", "connector"):
        comp = stack.components[name]
        assert comp.proc is not None
        started = time.monotonic()
        comp.proc.send_signal(signal.SIGINT)
        comp.proc.wait(
            timeout=10
        )  # the old connector took ~30 s on a missing topic; measured: docs/operations.md
        stopped[name] = time.monotonic() - started
    print("stopped after SIGINT (s):", {k: round(v, 2) for k, v in stopped.items()})

    for name, comp in stack.components.items():
        lines = [ln for ln in comp.log_path.read_text().splitlines() if ln.strip()]
        assert lines, name
        for line in lines:
            record = json.loads(line)  # every line: one JSON object (uvicorn's lines too)
            assert FIELDS <= set(record), (name, line)
            assert record["component"] == name, (name, line)
            assert datetime.fromisoformat(record["ts"]).utcoffset().total_seconds() == 0, line
