"""``walduck bench compactor-memory``: the compactor's resident memory holding a full catalog (issue 15).

In-process, no Kafka and no PostgreSQL: the compactor's state is what is measured. A synthetic catalog of
``catalog`` visible partitions over ``datasets`` datasets (the change records of ``walduck bench history``:
datasets, one published manifest each, then one INSERT per partition) is encoded to bytes and decoded again
record by record (``ChangeRecord.to_bytes`` / ``from_bytes``, as the runner decodes Kafka messages, so every
row holds its own freshly decoded strings) and fed to one :class:`~pipeline.compaction.Compactor` per
changes partition (records routed by dataset like the connector does), flushing windows as the runner does.
Deltas are dropped once sealed. Reported: VmRSS before and after (``/proc/self/status``), the growth, VmHWM,
and records/s through feed + flush.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.compaction import Compactor
from stack.bench.history import _Source
from stack.bench.report import Result
from walduck.records import ChangeRecord, partition_of

GIB = 1 << 30
FLUSH_EVERY = 500  # records per window, as the runner's max_poll_records in ``walduck bench history``


def proc_status(field: str) -> int:
    """A ``/proc/self/status`` memory figure (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def catalog_stream(source: _Source) -> Iterator[ChangeRecord]:
    """Dataset + manifest records, then one partition INSERT per catalog partition, each through bytes."""
    for rec in source.catalog_records_head():
        yield ChangeRecord.from_bytes(rec.to_bytes())
    for i in range(source.catalog):
        rec = source.partition_insert(i)
        yield ChangeRecord.from_bytes(rec.to_bytes())


def run_compactor_memory(datasets: int, catalog: int, changes_partitions: int) -> Result:
    result = Result(
        "compactor-memory",
        {"datasets": datasets, "catalog_partitions": catalog, "changes_partitions": changes_partitions},
    )
    gc.collect()
    rss_before = proc_status("VmRSS")
    compactors = [Compactor(p) for p in range(changes_partitions)]
    offsets = [0] * changes_partitions
    fed = 0
    started = time.monotonic()
    for rec in catalog_stream(_Source(datasets, catalog)):
        p = partition_of(rec.dataset_id or "", changes_partitions)
        compactors[p].feed(rec, offsets[p])
        offsets[p] += 1
        fed += 1
        if offsets[p] % FLUSH_EVERY == 0:
            compactors[p].flush()
    for compactor in compactors:
        compactor.flush()
    elapsed = time.monotonic() - started
    gc.collect()
    rss_after, hwm = proc_status("VmRSS"), proc_status("VmHWM")
    held = sum(c.state_partitions for c in compactors)
    if held != catalog:
        raise RuntimeError(f"the compactors hold {held} visible partitions, expected {catalog}")
    grown = rss_after - rss_before
    # the 1 GiB goal is for 1M partitions: scale the growth to that size
    per_partition = grown / catalog
    at_1m = per_partition * 1_000_000
    result.add("visible partitions held", held)
    result.add("compactor RSS growth holding the catalog", round(grown / GIB, 3), "GiB")
    result.add(
        "compactor RSS growth scaled to 1M partitions",
        round(at_1m / GIB, 3),
        "GiB",
        goal="< 1 GiB",
        ok=at_1m < GIB,
    )
    result.add("bytes per visible partition", round(per_partition), "B")
    result.add("process VmRSS after (interpreter + imports + state)", round(rss_after / GIB, 3), "GiB")
    result.add("process VmHWM (peak)", round(hwm / GIB, 3), "GiB")
    result.add("records/s through feed + flush (incl. decode)", round(fed / elapsed), "rec/s")
    result.notes.append(f"{fed} records fed in {elapsed:.1f} s; VmRSS before {rss_before / GIB:.3f} GiB")
    return result
