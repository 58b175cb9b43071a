"""What a component's ``/live`` and ``/ready`` answer, from its real state (docs/operations.md "Probes").

- live: the process's event loop still turns (a heartbeat task beats every second; a loop stalled longer than
  ``stall_s`` is dead: restart it).
- ready: live, not stopping, and every named check true (Kafka client connected, replication streaming,
  PostgreSQL reachable, shards bootstrapped: each component registers what it depends on).

The connector and the compactor serve these next to ``/metrics`` on their metrics port (``serve_component``);
the query service answers them on its HTTP port (``sinks/service/app.py``).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Check = Callable[[], bool]


class Health:
    def __init__(self, component: str, *, stall_s: float = 30.0) -> None:
        self.component = component
        self.stall_s = stall_s
        self.checks: dict[str, Check] = {}
        self.stopping = False
        self._beat: float | None = None  # None: no event loop has beaten yet (still starting: live)

    def check(self, name: str, fn: Check) -> None:
        self.checks[name] = fn

    def beat(self) -> None:
        self._beat = time.monotonic()

    async def heartbeat(self, interval_s: float = 1.0) -> None:
        """Run as a task on the component's event loop for as long as it lives."""
        while True:
            self.beat()
            await asyncio.sleep(interval_s)

    def live(self) -> tuple[bool, dict[str, Any]]:
        stalled = None if self._beat is None else time.monotonic() - self._beat
        ok = stalled is None or stalled <= self.stall_s
        return ok, {
            "status": "live" if ok else "stalled",
            "component": self.component,
            "loopStalledSeconds": stalled,
        }

    def ready(self) -> tuple[bool, dict[str, Any]]:
        live, _ = self.live()
        results = {}
        for name, fn in self.checks.items():
            try:
                results[name] = bool(fn())
            except Exception:  # a check that cannot tell is a check that failed
                results[name] = False
        ok = live and not self.stopping and all(results.values())
        status = "ready" if ok else ("stopping" if self.stopping else "not ready")
        return ok, {"status": status, "component": self.component, "live": live, "checks": results}


def kafka_connected(client: Any) -> bool:
    """An aiokafka client (``producer.client`` / ``consumer._client``) that fetched metadata and holds at least
    one open broker connection (a broker that went away closes it; the client reconnects on its next request)."""
    if client is None or not client.cluster.brokers():
        return False
    return any(conn.connected() for conn in client._conns.values())


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    health: Health

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = generate_latest(self.registry)
            self._send(200, body, CONTENT_TYPE_LATEST)
        elif path in ("/live", "/ready"):
            ok, report = self.health.live() if path == "/live" else self.health.ready()
            self._send(200 if ok else 503, json.dumps(report).encode(), "application/json")
        else:
            self._send(404, b'{"error": "not found: /metrics, /live, /ready"}', "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        if "gzip" in self.headers.get("Accept-Encoding", "") and len(body) > 1024:
            body = gzip.compress(body)
            self.send_response(status)
            self.send_header("Content-Encoding", "gzip")
        else:
            self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve_component(port: int, addr: str, registry: CollectorRegistry, health: Health) -> ThreadingHTTPServer:
    """``/metrics`` (this component's registry only), ``/live``, ``/ready``; 404 on any other path."""
    handler = type("Handler", (_Handler,), {"registry": registry, "health": health})
    server = ThreadingHTTPServer((addr, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"{health.component}-metrics", daemon=True).start()
    return server
