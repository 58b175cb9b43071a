"""ContextStore.apply_batch has the effect of apply() on each delta in order (real DuckDB, real files)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from sinks.context.store import ContextStore
from sinks.settings import SinkSettings
from walduck.config import WalduckSettings
from walduck.deltas import Delta, DeltaKind


def _script(factory: Any, seed: int) -> list[tuple[Delta, int, int]]:
    """(delta, partition, offset) over 2 partitions: datasets, appends, deletes of earlier partitions, a
    partition upserted and deleted in one run, re-delivered deltas (same offset / new offset), heartbeats,
    a schema change in the middle of partition-only deltas."""
    rng = random.Random(seed)
    offsets = {0: -1, 1: -1}
    out: list[tuple[Delta, int, int]] = []

    def add(delta: Delta, partition: int | None = None, offset: int | None = None) -> None:
        p = delta.src_partition if partition is None else partition
        if offset is None:
            offsets[p] += 1
            offset = offsets[p]
        out.append((delta, p, offset))

    add(factory.create_dataset(0, "a"))
    add(factory.create_dataset(1, "b"))
    live: dict[str, list[str]] = {"a": [], "b": []}
    for step in range(60):
        slug = rng.choice(["a", "b"])
        partition = 0 if slug == "a" else 1
        roll = rng.random()
        if roll < 0.1:
            add(factory.delta(partition, None, kind=DeltaKind.HEARTBEAT))
        elif roll < 0.25 and live[slug]:
            gone = rng.sample(live[slug], k=min(len(live[slug]), rng.randint(1, 2)))
            live[slug] = [p for p in live[slug] if p not in gone]
            add(factory.delta(partition, f"ds-{slug}", deletes=gone))
        elif roll < 0.3 and out:
            add(out[-1][0], out[-1][1], out[-1][2])  # re-delivery at the same offset
        elif roll < 0.35 and out:
            add(out[-1][0], out[-1][1])  # re-produced delta at a new offset
        elif step == 30:
            add(
                factory.delta(
                    partition,
                    f"ds-{slug}",
                    schema_versions=[
                        {
                            "id": f"dsv-{slug}-2",
                            "dataset_id": f"ds-{slug}",
                            "version": 2,
                            "schema": {"fields": [{"name": "ts", "type": "timestamp"}]},
                        }
                    ],
                )
            )
        else:
            files = [factory.write_file(slug, rng.randint(0, 40), 3) for _ in range(rng.randint(1, 3))]
            live[slug] += [f["id"] for f in files]
            dropped = [files[0]["id"]] if rng.random() < 0.2 else []  # upserted, then deleted by the next
            add(factory.delta(partition, f"ds-{slug}", upserts=files))
            if dropped:
                live[slug].remove(dropped[0])
                add(factory.delta(partition, f"ds-{slug}", deletes=dropped))
    return out


def _state(store: ContextStore) -> tuple[object, ...]:
    with store.reader() as cur:
        parts = cur.execute("SELECT * FROM wd.partitions ORDER BY id").fetchall()
        progress = cur.execute(
            "SELECT shard, deltas_offset, applied_lsn, commit_ts, bootstrapped FROM wd.shard_progress ORDER BY shard"
        ).fetchall()
        src = cur.execute("SELECT * FROM wd.src_offsets ORDER BY ALL").fetchall()
        columns = cur.execute("SELECT * FROM wd.columns ORDER BY ALL").fetchall()
    mem = {
        s: (p.deltas_offset, p.applied_lsn, p.src_offset, p.newest_commit_ts)
        for s, p in store.progress().items()
    }
    views = [(v.id, v.partition_count, v.total_rows) for v in store.datasets()]
    return parts, progress, src, columns, mem, views, store.applied_lsn()


@pytest.mark.parametrize("chunk", [3, 7, 1000])
def test_apply_batch_equals_one_by_one(
    tmp_path: Path, ctx_settings: tuple[SinkSettings, WalduckSettings], factory: Any, chunk: int
) -> None:
    script = _script(factory, seed=chunk)
    sink, wd = ctx_settings
    one = ContextStore(sink.model_copy(update={"context_path": tmp_path / "one" / "c.duckdb"}), wd)
    batched = ContextStore(sink.model_copy(update={"context_path": tmp_path / "batched" / "c.duckdb"}), wd)
    one.open()
    batched.open()
    try:
        expected = [one.apply(*item) for item in script]
        got: list[bool] = []
        for i in range(0, len(script), chunk):
            got += batched.apply_batch(script[i : i + chunk])
        assert got == expected
        assert False in expected and expected.count(True) > 40  # the script has duplicates and real work
        assert _state(batched) == _state(one)
    finally:
        one.close()
        batched.close()


def test_failed_run_applies_nothing_of_it(store: ContextStore, factory: Any) -> None:
    assert store.apply(factory.create_dataset(0, "a"), 0, 0)
    good = factory.delta(0, "ds-a", upserts=[factory.write_file("a", 1, 5)])
    bad_file = factory.write_file("a", 2, 5)
    bad_file["row_count"] = "not a number"
    bad = factory.delta(0, "ds-a", upserts=[bad_file])
    before = _state(store)
    with pytest.raises(Exception):  # noqa: B017 - whatever DuckDB/pyarrow raises for the bad row
        store.apply_batch([(good, 0, 1), (bad, 0, 2)])
    assert _state(store) == before
    assert store.progress()[0].last_error
    # one by one, as the consumer retries after a failed batch: the good delta lands, the bad one fails
    assert store.apply(good, 0, 1) is True
    with pytest.raises(Exception):  # noqa: B017
        store.apply(bad, 0, 2)
    assert store.datasets()[0].partition_count == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("batched", [False, True])
async def test_applies_wake_lsn_waiters(
    store: ContextStore, factory: Any, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    """A reader in wait_for_lsn is woken by the apply that reaches its LSN, not by a re-check: with the
    re-check and the wait's own timeout an hour away, only the writer's wake-up ends the wait (a generous
    10 s bound, not a latency assertion)."""
    import asyncio

    import sinks.context.lsnwait as lsnwait

    monkeypatch.setattr(lsnwait, "LSN_RECHECK_S", 3600.0)
    hb0, hb1 = (factory.delta(p, None, kind=DeltaKind.HEARTBEAT) for p in (0, 1))
    waiter = asyncio.create_task(store.wait_for_lsn(min(hb0.lsn_to, hb1.lsn_to), 3600.0))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    if batched:
        await asyncio.to_thread(store.apply_batch, [(hb0, 0, 0), (hb1, 1, 0)])
    else:
        await asyncio.to_thread(store.apply, hb0, 0, 0)
        assert not waiter.done()  # shard 1 has not passed the LSN yet
        await asyncio.to_thread(store.apply, hb1, 1, 0)
    assert await asyncio.wait_for(waiter, 10.0) is True
    assert store._lsn.waiters == []


def test_apply_is_apply_batch_of_one(
    store: ContextStore, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One apply path (issue 14): ``apply(x)`` is ``apply_batch([x])``, for every kind of delta."""
    calls: list[list[tuple[Delta, int, int]]] = []
    real = store.apply_batch

    def spy(items: list[tuple[Delta, int, int]]) -> list[bool]:
        calls.append(list(items))
        return real(items)

    monkeypatch.setattr(store, "apply_batch", spy)
    items = [
        (factory.create_dataset(0, "a"), 0, 0),
        (factory.delta(0, "ds-a", upserts=[factory.write_file("a", 1, 5)]), 0, 1),
        (factory.delta(0, None, kind=DeltaKind.HEARTBEAT), 0, 2),
    ]
    assert [store.apply(*item) for item in items] == [True, True, True]
    assert store.apply(*items[1]) is False  # a re-delivery, dropped by the same path
    assert calls == [[item] for item in items] + [[items[1]]]
    assert store.datasets()[0].partition_count == 1
