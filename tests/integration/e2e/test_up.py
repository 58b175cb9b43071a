"""`walduck up` (the README's main job) runs with its own services, serves SQL, and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from stack.local import free_port


def _processes_mentioning(text: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if text in line and "ps -eo" not in line]


def test_walduck_up_serves_sql_then_stops_everything(tmp_path: Path) -> None:
    work = Path(f"/tmp/walduck-up-{os.getpid()}-{time.monotonic_ns()}")
    work.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALDUCK_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stack.cli",
            "up",
            "--duration",
            "25",
            "--port",
            str(port),
            "--connector-metrics-port",
            str(free_port()),
            "--compactor-metrics-port",
            str(free_port()),
        ],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    answers: list[dict] = []

    def probe() -> None:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                resp = httpx.post(
                    f"http://127.0.0.1:{port}/sql/read",
                    json={
                        "sql": "SELECT count(*) AS n, sum(partition_count) AS p FROM timestore_runtime.datasets"
                    },
                    headers={"x-iam-scopes": "timestore:read"},
                    timeout=5,
                )
                if resp.status_code == 200 and (resp.json()["rows"][0]["p"] or 0) > 0:
                    answers.append(resp.json())
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)

    prober = threading.Thread(target=probe)
    prober.start()
    output, _ = proc.communicate(timeout=400)
    prober.join()
    assert proc.returncode == 0, output[-3000:]
    assert "walduck is up" in output
    assert answers, f"the demo workload never became visible through /sql/read\n{output[-3000:]}"
    assert answers[0]["rows"][0]["n"] >= 1
    # nothing left running: not PostgreSQL, not Kafka, not a walduck component
    assert _processes_mentioning(str(work)) == []
