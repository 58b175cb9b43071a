"""The Debezium assembler against a model: random transactions spread over random topic partitions, consumed
in any interleaving that keeps each partition's order, give exactly the transactions in commit order; the
offsets it says are committable never skip a record whose transaction was not produced, so a restart from
them re-produces (duplicates, dropped downstream by commit LSN) and never loses."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.debezium.assembler import Assembler
from connectors.debezium.events import DebeziumEvent, TransactionEnd
from walduck.records import GLOBAL_KEY, Op

TX_TOPIC = ("dbz.transaction", 0)


def _history(rng: random.Random, n_tx: int, partitions: int):
    """Per input partition, its records in offset order: ("event", xid, total_order, event) | ("end", end)."""
    streams: dict[tuple[str, int], list] = {TX_TOPIC: []}
    expected = []
    lsn = 1000
    for i in range(n_tx):
        xid = 500 + i
        n = rng.randint(1, 5)
        heartbeat = rng.random() < 0.15
        events = []
        for order in range(1, n + 1):
            lsn += 10
            table = "dataset_partitions" if not heartbeat else "walduck_heartbeat"
            ds = None if rng.random() < 0.1 else f"ds-{rng.randint(1, 3)}"
            ev = DebeziumEvent(
                table=table,
                op=Op.INSERT,
                key={"id": f"p{xid}-{order}"},
                new={"id": f"p{xid}-{order}", "dataset_id": ds},
                old=None,
                dataset_id=ds,
                lsn=lsn,
                commit_ts="2026-12-03T00:00:00+00:00",
                xid=xid,
                total_order=order,
                snapshot=None,
            )
            events.append(ev)
            tp = (f"dbz.t{rng.randint(0, 1)}", rng.randrange(partitions))
            streams.setdefault(tp, []).append(("event", xid, order, ev, heartbeat))
        lsn += 10
        end = TransactionEnd(xid, lsn, n)
        streams[TX_TOPIC].append(("end", end))
        expected.append((xid, lsn, heartbeat, events))
    return streams, expected


def _interleave(rng: random.Random, streams):
    cursors = {tp: 0 for tp in streams}
    order = []
    while True:
        live = [tp for tp, c in cursors.items() if c < len(streams[tp])]
        if not live:
            return order
        tp = rng.choice(live)
        order.append((tp, cursors[tp], streams[tp][cursors[tp]]))
        cursors[tp] += 1


def _feed(asm: Assembler, tp, offset, item) -> None:
    if item[0] == "end":
        asm.end(tp, offset, item[1])
    else:
        _, xid, order, ev, heartbeat = item
        asm.event(tp, offset, xid, order, ev, heartbeat=heartbeat)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), n_tx=st.integers(1, 25), partitions=st.integers(1, 4))
def test_transactions_come_out_whole_in_commit_order(seed: int, n_tx: int, partitions: int) -> None:
    rng = random.Random(seed)
    streams, expected = _history(rng, n_tx, partitions)
    asm = Assembler()
    out = []
    for tp, offset, item in _interleave(rng, streams):
        _feed(asm, tp, offset, item)
        out += asm.ready()
        # committable offsets never pass a record of a transaction not produced yet
        produced = {a.xid for a in out}
        for ctp, nxt in asm.committable().items():
            for off in range(nxt):
                rec = streams[ctp][off]
                xid = rec[1].xid if rec[0] == "end" else rec[1]
                assert xid in produced, (ctp, off, xid)
    assert [(a.xid, a.commit_lsn, a.heartbeat) for a in out] == [(x, c, h) for x, c, h, _ in expected]
    for a, (_, commit_lsn, heartbeat, events) in zip(out, expected, strict=True):
        if heartbeat:
            assert a.records == []
            continue
        assert [r.key for r in a.records] == [e.key for e in events]  # total_order order
        assert all(r.commit_lsn == commit_lsn and r.tx_total == len(events) for r in a.records)
        by_key: dict[str, list[int]] = {}
        for r in a.records:
            by_key.setdefault(r.dataset_id or GLOBAL_KEY, []).append(r.tx_index)
            assert r.tx_size == sum(
                1 for e in events if (e.dataset_id or GLOBAL_KEY) == (r.dataset_id or GLOBAL_KEY)
            )
        assert all(ix == list(range(len(ix))) for ix in by_key.values())
    assert asm.pending() == 0 and asm.committable() == {tp: len(s) for tp, s in streams.items() if s}


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), n_tx=st.integers(1, 20), cut=st.floats(0, 1))
def test_a_restart_from_the_committed_offsets_loses_nothing(seed: int, n_tx: int, cut: float) -> None:
    rng = random.Random(seed)
    streams, expected = _history(rng, n_tx, 3)
    order = _interleave(rng, streams)
    stop = int(len(order) * cut)
    first = Assembler()
    before = []
    for tp, offset, item in order[:stop]:
        _feed(first, tp, offset, item)
        before += first.ready()
    committed = first.committable()
    # restart: every partition from its committed offset, a fresh assembler (no memory of what it produced)
    second = Assembler()
    after = []
    for tp, offset, item in _interleave(rng, {tp: s for tp, s in streams.items()}):
        if offset >= committed.get(tp, 0):
            _feed(second, tp, offset, item)
            after += second.ready()
    produced = [(a.xid, a.commit_lsn) for a in before] + [(a.xid, a.commit_lsn) for a in after]
    # downstream drops a commit LSN not above the highest it applied: what survives is each transaction once
    highest, applied = -1, []
    for xid, lsn in produced:
        if lsn > highest:
            applied.append(xid)
            highest = lsn
    assert applied == [x for x, _, _, _ in expected]


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), n_tx=st.integers(1, 20), rereads=st.integers(1, 30))
def test_records_read_twice_neither_block_nor_duplicate(seed: int, n_tx: int, rereads: int) -> None:
    """A re-assignment re-reads a partition from its committed offset: what it reads again changes nothing."""
    rng = random.Random(seed)
    streams, expected = _history(rng, n_tx, 3)
    order = _interleave(rng, streams)
    asm = Assembler()
    out = []
    for i, (tp, offset, item) in enumerate(order):
        _feed(asm, tp, offset, item)
        out += asm.ready()
        if rng.random() < rereads / max(len(order), 1):
            again = rng.choice(order[: i + 1])
            _feed(asm, *again)
            out += asm.ready()
    assert [a.xid for a in out] == [x for x, _, _, _ in expected]
    assert asm.pending() == 0


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), n_tx=st.integers(1, 15), n_snap=st.integers(1, 30))
def test_streamed_transactions_wait_for_the_whole_snapshot(seed: int, n_tx: int, n_snap: int) -> None:
    rng = random.Random(seed)
    streams, expected = _history(rng, n_tx, 3)
    snap_tps = [(f"dbz.t{rng.randint(0, 1)}", rng.randrange(3)) for _ in range(n_snap)]
    for i, tp in enumerate(
        snap_tps
    ):  # Debezium writes the snapshot first: each partition starts with its reads
        ev = DebeziumEvent(
            table="dataset_partitions",
            op=Op.READ,
            key={"id": f"s{i}"},
            new={"id": f"s{i}", "dataset_id": "ds-1"},
            old=None,
            dataset_id="ds-1",
            lsn=999,
            commit_ts="2026-12-03T00:00:00+00:00",
            xid=None,
            total_order=None,
            snapshot="last" if i == n_snap - 1 else "true",
        )
        stream = streams.setdefault(tp, [])
        at = sum(1 for item in stream if item[0] == "snap")
        stream.insert(at, ("snap", ev))
    asm = Assembler(snapshot_done=False)
    out, snapshot_records = [], 0
    fed_snap = 0
    for tp, offset, item in _interleave(rng, streams):
        if item[0] == "snap":
            asm.snapshot_read(tp, offset, item[1])
            fed_snap += 1
        else:
            _feed(asm, tp, offset, item)
        # the source's rule, modelled: last read + every partition read past the snapshot's records
        if asm.snapshot_last_seen and fed_snap == n_snap and not asm.snapshot_done:
            asm.finish_snapshot("2026-12-03T00:00:01+00:00")
        for a in asm.ready():
            if a.snapshot:
                assert not [o for o in out if not o.snapshot], "snapshot read after a streamed transaction"
                snapshot_records += sum(r.kind.value == "change" for r in a.records)
            out.append(a)
    assert snapshot_records == n_snap
    assert out[-len(expected) :] and [a.xid for a in out if not a.snapshot] == [x for x, _, _, _ in expected]
    assert any(r.kind.value == "snapshot_done" for a in out if a.snapshot for r in a.records)
