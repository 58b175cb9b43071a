"""The connector's and compactor's metrics port (issue 17): /live and /ready from the component's real state,
404 on any other path (it answered 200 with the metrics on every path, so a probe on /ready proved nothing)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from walduck import metrics
from walduck.health import Health


def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def served():
    health = Health("connector", stall_s=0.2)
    server = metrics.serve_metrics("connector", 0, "127.0.0.1", health)
    yield health, server.server_address[1]
    server.shutdown()


def test_other_paths_are_404(served) -> None:
    _, port = served
    for path in ("/", "/health", "/readyz", "/metrics/x"):
        assert _get(port, path)[0] == 404, path


def test_ready_follows_every_check_and_stopping(served) -> None:
    health, port = served
    state = {"streaming": False, "kafka": True}
    health.check("replicationStreaming", lambda: state["streaming"])
    health.check("kafkaConnected", lambda: state["kafka"])
    status, body = _get(port, "/ready")
    assert status == 503 and body["checks"] == {"replicationStreaming": False, "kafkaConnected": True}
    state["streaming"] = True
    assert _get(port, "/ready")[0] == 200
    state["kafka"] = False
    assert _get(port, "/ready")[0] == 503
    state["kafka"] = True
    health.stopping = True
    status, body = _get(port, "/ready")
    assert status == 503 and body["status"] == "stopping"


def test_a_check_that_raises_is_not_ready(served) -> None:
    health, port = served
    health.check("postgres", lambda: 1 / 0 > 0)
    status, body = _get(port, "/ready")
    assert status == 503 and body["checks"] == {"postgres": False}


def test_live_fails_when_the_event_loop_stops_beating(served) -> None:
    health, port = served
    assert _get(port, "/live")[0] == 200  # starting: no beat yet
    health.beat()
    assert _get(port, "/live")[0] == 200
    time.sleep(0.3)  # longer than stall_s=0.2 without a beat
    status, body = _get(port, "/live")
    assert status == 503 and body["status"] == "stalled"
    assert _get(port, "/ready")[0] == 503
