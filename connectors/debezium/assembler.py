"""Debezium events of many topic partitions -> whole transactions in commit order (layer 2 of
:mod:`connectors.debezium`). Pure: no Kafka, no clock.

Debezium spreads one transaction over its per-table topics (each keyed by primary key, so over their
partitions too); ``provide.transaction.metadata=true`` adds an END event per transaction on
``<prefix>.transaction`` with the transaction's event count, whose id ends with the commit LSN. That topic
must have ONE partition (``source`` refuses otherwise): its END events are then in commit order, which is the
order walduck's changes topic needs (the compactor drops a stream record whose commit LSN is not above the
highest it applied for its key: a connector re-send).

1. :meth:`Assembler.event` buffers a row event under its ``txId`` (a refused event still takes its slot, so
   its transaction completes: it is in the DLQ).
2. :meth:`Assembler.end` queues an END event.
3. :meth:`Assembler.ready` pops, in END order, every transaction whose events have all arrived and turns it
   into walduck change records: ``total_order`` order, ``tx_index``/``tx_size`` per Kafka key (the dataset id,
   or ``__global__``), ``tx_total`` = the event count, ``commit_lsn`` from the END event. A transaction
   holding only heartbeat-table rows (Debezium's ``heartbeat.action.query``) becomes a heartbeat at its commit
   LSN: progress for datasets that see no change (read-your-writes waits on the minimum over shards).
4. :meth:`Assembler.committable` gives, per input partition, the offset up to which every record has been
   turned into output (or skipped): the offsets to commit once that output is acknowledged. Records of
   transactions still incomplete hold their partition back, so a crash re-reads them; the re-sent records carry
   the same commit LSN and the compactor drops them.

Snapshot reads (``op = r``, Debezium's ``snapshot.mode=initial``): each is produced at once as a walduck
snapshot record (``source = snapshot``, its own share of one record, commit LSN = the snapshot's LSN), and every
streamed transaction is held back until the snapshot is complete: a streamed change must never reach the
compactor before an older snapshot read of the same row. Debezium marks its last snapshot record
(``source.snapshot = last``); the caller (``source``) declares the snapshot complete with
:meth:`Assembler.finish_snapshot` once it also read every table partition up to its end offset taken after that
record, which appends walduck's ``snapshot_done`` marker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connectors.debezium.events import SNAPSHOT_LAST, DebeziumEvent, TransactionEnd
from walduck.records import GLOBAL_KEY, ChangeRecord, Kind, Source

TopicPartitionKey = tuple[str, int]
PRODUCED_MEMORY = 100_000


@dataclass(slots=True)
class _Tx:
    # by input position (a record read twice counts once): (total_order, event)
    events: dict[tuple[TopicPartitionKey, int], tuple[int, DebeziumEvent | None]] = field(
        default_factory=dict
    )
    heartbeats: set[tuple[TopicPartitionKey, int]] = field(default_factory=set)

    @property
    def heartbeat_rows(self) -> int:
        return len(self.heartbeats)


@dataclass(slots=True)
class Assembled:
    """One transaction's output: change records (or one heartbeat) in publish order."""

    xid: int
    commit_lsn: int
    records: list[ChangeRecord]
    heartbeat: bool = False
    refused: int = 0
    snapshot: bool = False


def _change(event: DebeziumEvent, source: Source, commit_lsn: int, **extra: Any) -> ChangeRecord:
    """The row change ``event`` carries as walduck's record (``extra``: the transaction's fields, ``old``)."""
    return ChangeRecord(
        kind=Kind.CHANGE,
        source=source,
        lsn=event.lsn,
        commit_lsn=commit_lsn,
        commit_ts=event.commit_ts,
        table=event.table,
        op=event.op,
        key=event.key,
        new=event.new,
        dataset_id=event.dataset_id,
        **extra,
    )


class Assembler:
    def __init__(self, snapshot_done: bool = True) -> None:
        self.snapshot_done = snapshot_done
        self.snapshot_last_seen = False
        self._snapshot_out: list[ChangeRecord] = []
        self._snapshot_lsn = -1
        self._txs: dict[int, _Tx] = {}
        self._ends: list[tuple[TransactionEnd, TopicPartitionKey, int]] = []
        # per input partition: offsets still waiting for their transaction, and the next offset to read
        self._waiting: dict[TopicPartitionKey, dict[int, int]] = {}
        self._next: dict[TopicPartitionKey, int] = {}
        self.last_commit_lsn = -1
        # xids produced lately (insertion order): their events read again after a re-assignment are dropped
        self._produced: dict[int, None] = {}

    def _seen(self, tp: TopicPartitionKey, offset: int) -> None:
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def skip(self, tp: TopicPartitionKey, offset: int) -> None:
        """A record that belongs to no transaction (a tombstone, a BEGIN event)."""
        self._seen(tp, offset)

    def event(
        self,
        tp: TopicPartitionKey,
        offset: int,
        xid: int,
        total_order: int,
        event: DebeziumEvent | None,
        heartbeat: bool = False,
    ) -> None:
        """A row event of transaction ``xid`` (``None``: refused, sent to the DLQ, its slot still counts)."""
        self._seen(tp, offset)
        if xid in self._produced:  # read again: its transaction was produced already
            return
        tx = self._txs.setdefault(xid, _Tx())
        if heartbeat:
            tx.heartbeats.add((tp, offset))
        else:
            tx.events[(tp, offset)] = (total_order, event)
        self._waiting.setdefault(tp, {})[offset] = xid

    def snapshot_read(self, tp: TopicPartitionKey, offset: int, event: DebeziumEvent) -> None:
        """A snapshot read, produced at once (streamed transactions wait for :meth:`finish_snapshot`)."""
        self._seen(tp, offset)
        self._snapshot_lsn = max(self._snapshot_lsn, event.lsn)
        self._snapshot_out.append(_change(event, Source.SNAPSHOT, event.lsn))
        if event.snapshot == SNAPSHOT_LAST:
            self.snapshot_last_seen = True

    def finish_snapshot(self, commit_ts: str) -> None:
        """The snapshot is complete: walduck's ``snapshot_done`` marker, then streamed transactions flow."""
        self.snapshot_done = True
        lsn = self._snapshot_lsn
        if lsn >= 0:
            self._snapshot_out.append(
                ChangeRecord(
                    kind=Kind.SNAPSHOT_DONE,
                    source=Source.SNAPSHOT,
                    lsn=lsn,
                    commit_lsn=lsn,
                    commit_ts=commit_ts,
                )
            )

    def end(self, tp: TopicPartitionKey, offset: int, end: TransactionEnd) -> None:
        self._seen(tp, offset)
        if end.commit_lsn <= self.last_commit_lsn:  # read again (a re-assignment): produced already
            self._done(end.xid)
            return
        self._ends.append((end, tp, offset))
        self._waiting.setdefault(tp, {})[offset] = end.xid

    def pending(self) -> int:
        """Transactions whose END arrived but not all of their events."""
        return len(self._ends)

    def ready(self) -> list[Assembled]:
        out: list[Assembled] = []
        if self._snapshot_out:
            out.append(Assembled(-1, self._snapshot_lsn, self._snapshot_out, snapshot=True))
            self._snapshot_out = []
        if not self.snapshot_done:
            return out  # streamed transactions wait for the whole snapshot
        while self._ends:
            end, _, _ = self._ends[0]
            if (
                end.commit_lsn <= self.last_commit_lsn
            ):  # END read twice before it was produced: once is enough
                self._ends.pop(0)
                continue
            tx = self._txs.get(end.xid, _Tx())
            if len(tx.events) + tx.heartbeat_rows < end.event_count:
                break
            self._ends.pop(0)
            self._done(end.xid)
            self.last_commit_lsn = end.commit_lsn
            out.append(self._assemble(end, tx))
        return out

    def _assemble(self, end: TransactionEnd, tx: _Tx) -> Assembled:
        events = [e for _, e in sorted(tx.events.values(), key=lambda p: p[0])]
        refused = sum(e is None for e in events)
        kept = [e for e in events if e is not None]
        if not events:
            return Assembled(end.xid, end.commit_lsn, [], heartbeat=True)
        keys = [e.dataset_id or GLOBAL_KEY for e in kept]
        sizes: dict[str, int] = {}
        for k in keys:
            sizes[k] = sizes.get(k, 0) + 1
        seen: dict[str, int] = {}
        records = []
        for e, k in zip(kept, keys, strict=True):
            records.append(
                _change(
                    e,
                    Source.STREAM,
                    end.commit_lsn,
                    old=e.old,
                    xid=end.xid,
                    tx_index=seen.get(k, 0),
                    tx_size=sizes[k],
                    tx_total=len(kept),
                )
            )
            seen[k] = seen.get(k, 0) + 1
        return Assembled(end.xid, end.commit_lsn, records, refused=refused)

    def _done(self, xid: int) -> None:
        """Transaction ``xid`` is produced (or was before): forget its events, free its offsets."""
        self._txs.pop(xid, None)
        for waiting in self._waiting.values():
            for off in [o for o, x in waiting.items() if x == xid]:
                del waiting[off]
        self._produced[xid] = None
        while len(self._produced) > PRODUCED_MEMORY:
            del self._produced[next(iter(self._produced))]

    def committable(self) -> dict[TopicPartitionKey, int]:
        """Per input partition: the next offset to commit (everything before it produced its output)."""
        out: dict[TopicPartitionKey, int] = {}
        for tp, nxt in self._next.items():
            waiting = self._waiting.get(tp)
            out[tp] = min(waiting) if waiting else nxt
        return out
