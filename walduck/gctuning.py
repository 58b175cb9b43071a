"""Python GC settings for walduck's long-running processes (connector, compactor, query service).

Each of them builds a large, long-lived heap at start (modules, settings, a context's caches) and then allocates
many short-lived objects per record or delta. CPython's default thresholds (700, 10, 10) then run young-generation
collections every few hundred allocations and let long-lived objects be traversed again and again; in the query
service that showed up as apply outliers (300k partitions, 1,000-change applies: p99 83–109 ms and single
applies of 0.2–1.1 s with the defaults, 44–53 ms with these settings; docs/performance.md, "apply").
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def tune_for_streaming() -> None:
    """Move everything allocated so far out of the collector's sight and collect the young generation less
    often. Call once, after start-up and before the stream (or request) loop."""
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 20)
