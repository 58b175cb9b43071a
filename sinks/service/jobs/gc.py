"""GC of the job service: expired jobs (status, logs, result) and tail layers no live job uses."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sinks.service.jobs.layers import LayerCache
from sinks.service.jobs.store import JobStore
from walduck import metrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class GcReport:
    jobs: int = 0
    results: int = 0
    layers_bytes: int = 0
    bytes_freed: int = 0


def run_once(jobs: JobStore, layers: LayerCache) -> GcReport:
    """Remove expired finished jobs with their results, then layers unused for their TTL that no live
    job names (layers over the cache bounds are evicted LRU as well)."""
    metrics.JOB_GC_RUNS.inc()
    report = GcReport()
    for job in jobs.all():
        if not jobs.expired(job):
            continue
        jobs.remove(job.id)
        report.jobs += 1
        metrics.JOB_GC_REMOVED.labels(kind="job").inc()
        if job.result is not None:
            freed = job.result.nbytes
            job.result = None
            report.results += 1
            report.bytes_freed += freed
            metrics.JOB_GC_REMOVED.labels(kind="result").inc()
            metrics.JOB_GC_BYTES_FREED.inc(freed)
    referenced = {j.tail_hash for j in jobs.all() if j.tail_hash}
    report.layers_bytes = layers.expire(referenced) + layers.evict()
    report.bytes_freed += report.layers_bytes
    if report.jobs or report.layers_bytes:
        log.info(
            "job gc: removed %d job(s), %d result(s), freed %d bytes (%d of layers)",
            report.jobs,
            report.results,
            report.bytes_freed,
            report.layers_bytes,
        )
    return report


async def loop(jobs: JobStore, layers: LayerCache, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(run_once, jobs, layers)
        except Exception:  # the GC must keep running
            log.exception("job gc run failed")
