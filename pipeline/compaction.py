"""The compaction state machine: change records of ONE changes-topic partition -> deltas.

Over 500 lines: one state machine; windows, transaction shares and shard states are the invariants its property tests check together.

Pure logic, no Kafka. :class:`Compactor` is fed decoded :class:`~walduck.records.ChangeRecord`s with
their input offsets and turns *windows* of whole transactions into deltas (``walduck/deltas.py``).

State (per input partition, which is exactly the datasets whose key hashes there):

* per ``(dataset_id, manifest_shard)``: the published manifest id and its partitions (the visible set; one
  compact tuple per partition, :data:`PartitionEntry`, the delta entry's dict is made only for a delta or a
  snapshot);
* ``manifest_id -> (dataset, shard, status, schema_version_id)``;
* partitions inserted into manifests that are not (yet) published, so publishing such a manifest later
  shows them (``hidden``; lives in memory only, see ``docs/compactor.md``);
* per Kafka key, the highest stream commit LSN applied (drops the connector's re-sends after a crash);
* the known datasets (for TRUNCATE).

Windows. A window is a run of consecutive input offsets ``a..b`` holding only whole transaction shares.
Every delta sealed from a window carries ``src_offset_from=a, src_offset_to=b`` (one delta per dataset,
plus one global delta for storage targets, plus a heartbeat delta), emitted in a deterministic order
(dataset id ascending, global last, heartbeat after everything). Global change records (storage targets,
truncates) and snapshot-done markers are window boundaries: the window before them is sealed first when it
is clean. A heartbeat (periodic, or the connector's watermark after each drained burst) joins the current
window when that window is clean at that point and is emitted after the window's other deltas, so its LSN
never claims progress for changes not yet sealed, and a stream of watermarks costs one heartbeat delta per
window rather than a window each. :func:`restore_from_deltas` rebuilds
the state by replaying the deltas this compactor produced, dropping the last window group (which a crash
may have cut), and tells the runner where to resume.

Incomplete transactions expire (issue 15). A share still missing records blocks every seal of its
partition (a window holds only whole shares), so one record lost upstream would stop the partition
forever. The bound is an input, the state machine stays pure: ``Compactor(share_max_records=N,
share_max_age_s=T)`` and the caller's :meth:`Compactor.expire` ``(now)`` step. A share becomes *overtaken*
once a record of a LATER transaction (a commit LSN or heartbeat/watermark LSN above its commit LSN) is fed
after its last record: the connector publishes transactions in commit order, so its missing records are
not coming (records of its own transaction for other keys do not count, so a huge transaction being
published is never cut). An overtaken share expires when N later records were fed after it, or when
``now`` passed T seconds after the first ``expire`` call that saw it overtaken. Its records go to
``rejected`` (reason ``incomplete_transaction_expired``, for the DLQ) and the window can seal past it: an
expired share has the effect of a share never sent (property-tested). On re-processing a restored window
(``force_boundary``), a share still open at the boundary was expired by the run that sealed it, and is
expired again (its records reach the DLQ at least once).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from walduck.attribution import partition_schema_version
from walduck.catalog_tables import (
    DATASETS,
    MANIFESTS,
    PARTITIONS,
    PUBLISHED_TABLES,
    SCHEMA_VERSIONS,
    STORAGE_TARGETS,
    dataset_of,
)
from walduck.deltas import PARTITION_FIELDS, Delta, DeltaKind, ShardChange
from walduck.errors import InvariantBroken, Unprocessable
from walduck.jsonexact import dumps_exact
from walduck.records import GLOBAL_KEY, ChangeRecord, Kind, Op, SharePosition, Source
from walduck.shardkey import LEGACY_SHARD, shard_for

_KNOWN_TABLES = frozenset(PUBLISHED_TABLES)
PUBLISHED = "published"
DEFAULT_TABLE_NAME = "records"

ShardKey = tuple[str, str]

PartitionEntry = tuple[Any, ...] | dict[str, Any]
"""A visible partition held in :attr:`ShardState.partitions`: a tuple of its values in :data:`PARTITION_FIELDS`
order (compact: no per-entry dict, repeated strings interned; issue 15), or the delta entry as it came when it
does not have exactly those keys in that order (a delta of another version): then kept as is, so every delta
and snapshot made from the state carries the same content as before. :func:`entry_dict` gives the dict."""

_FIELD_INDEX = {name: i for i, name in enumerate(PARTITION_FIELDS)}
_SHARD_IX = _FIELD_INDEX["manifest_shard"]
_SCHEMA_IX = _FIELD_INDEX["schema_version_id"]
_TABLE_IX = _FIELD_INDEX["table_name"]
# values repeated across many partitions (one copy each instead of one per decoded row)
_INTERNED_IX = tuple(
    _FIELD_INDEX[name]
    for name in (
        "dataset_id",
        "manifest_id",
        "manifest_shard",
        "storage_target_id",
        "file_format",
        "schema_version_id",
        "table_name",
    )
)


class InvalidChange(Unprocessable, ValueError):
    """A decoded record that breaks the state machine's invariants; ``reason`` goes to the DLQ."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OffsetRegression(InvariantBroken, RuntimeError):
    """An input offset not above the previous one was fed (the runner seeked wrongly)."""


@dataclass(slots=True)
class ManifestInfo:
    dataset_id: str
    shard: str
    status: str
    schema_version_id: str | None = None


@dataclass(slots=True)
class ShardState:
    published_manifest_id: str | None = None
    partitions: dict[str, PartitionEntry] = field(default_factory=dict)  # partition id -> entry


@dataclass(slots=True)
class Rejected:
    """A record the state machine refused (to the DLQ), with its offset and reason."""

    offset: int
    record: ChangeRecord | None
    reason: str

    @property
    def reason_class(self) -> str:
        """The reason's bounded name (metric label): the text before ``:``."""
        return self.reason.split(":", 1)[0]


SHARE_DECODED_SLOTS = 64
"""How many records a half-received transaction share holds decoded; past that it holds the records' Kafka
bytes (when the caller passes them to :meth:`Compactor.feed`) and decodes each again only when the share is
applied, one at a time. Issue 15: the connector's initial snapshot is one share per dataset and reads the
partitions table in id order, so every dataset's share stays open until the end of the snapshot; holding
every decoded record (a dict per row, a string per value: 4-5 KiB each) until then took ~3.5 GB for a 1M-row
snapshot, and the state's strings, decoded among them, pinned that memory afterwards (fragmentation)."""


def _slot_record(slot: ChangeRecord | bytes | None) -> ChangeRecord | None:
    """A buffered slot's record: as it was fed, or decoded again from the bytes it was fed with."""
    if type(slot) is bytes:
        return ChangeRecord.from_bytes(slot, len(slot))
    return slot


@dataclass(slots=True)
class _Share:
    """The records of one transaction that share a Kafka key, until all ``tx_size`` arrived. A slot holds the
    decoded record, or (past :data:`SHARE_DECODED_SLOTS`) the bytes it was decoded from, or ``None`` for a
    rejected record that only takes its place."""

    ident: tuple[Any, ...]
    size: int
    slots: dict[int, tuple[int, ChangeRecord | bytes | None]] = field(default_factory=dict)
    # records of later transactions fed after this share's last record (see "Incomplete transactions")
    later: int = 0
    overtaken_at: float | None = None  # ``now`` of the first expire() that saw ``later > 0``

    @property
    def complete(self) -> bool:
        return len(self.slots) >= self.size

    def held_bytes(self) -> int:
        """Bytes of the records this share holds undecoded (counted as released when it is let go)."""
        return sum(len(r) for _off, r in self.slots.values() if type(r) is bytes)


@dataclass(slots=True)
class _DatasetWindow:
    raw: int = 0
    lsn_from: int | None = None
    lsn_to: int = 0
    commit_ts_max: str = ""
    snapshot: bool = False
    dataset: dict[str, Any] | None = None
    schema_versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # shard -> partition id -> visible at window start?
    touched: dict[str, dict[str, bool]] = field(default_factory=dict)
    shards_touched: set[str] = field(default_factory=set)
    resync: str | None = None  # a change of the dataset could not travel: contexts rebuild it

    def note(self, rec: ChangeRecord) -> None:
        self.raw += 1
        self.lsn_from = rec.commit_lsn if self.lsn_from is None else min(self.lsn_from, rec.commit_lsn)
        self.lsn_to = max(self.lsn_to, rec.commit_lsn)
        self.commit_ts_max = max(self.commit_ts_max, rec.commit_ts)
        self.snapshot |= rec.source is Source.SNAPSHOT


@dataclass(slots=True)
class _Window:
    first: int | None = None
    last: int | None = None
    datasets: dict[str, _DatasetWindow] = field(default_factory=dict)
    global_: _DatasetWindow | None = None
    storage_targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    heartbeat: ChangeRecord | None = None
    records: int = 0

    def extend(self, offset: int) -> None:
        self.first = offset if self.first is None else self.first
        self.last = offset


HEARTBEAT_KEY = "__heartbeat__"
"""``last_applied`` entry for heartbeat/watermark progress (never used to drop change records)."""


def _key_of(rec: ChangeRecord) -> str:
    return rec.dataset_id or GLOBAL_KEY


def _is_global(rec: ChangeRecord) -> bool:
    return (
        rec.kind is not Kind.CHANGE
        or rec.dataset_id in (None, GLOBAL_KEY)
        or rec.table == STORAGE_TARGETS
        or rec.op is Op.TRUNCATE
    )


def _without_updated_at(row: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (row or {}).items() if k != "updated_at"}


def _json_text(value: Any) -> str | None:
    """A JSON member as PostgreSQL's ``->>`` gives it: a string as is, anything else as its JSON text."""
    if value is None or isinstance(value, str):
        return value
    return dumps_exact(value).decode()


def partition_entry(row: dict[str, Any], manifest: ManifestInfo | None) -> dict[str, Any]:
    """The delta entry of one partition row: exactly :data:`PARTITION_FIELDS`. ``metadata`` may be any JSON
    (an array, a string, a number: jsonb does not say); only an object's members count, read like ``->>``."""
    return entry_dict(_partition_values(row, manifest))


_KEY_IX = _FIELD_INDEX["partition_key"]
_SCALARS = (str, int, float, bool, type(None))
_SHARED_KEYS: dict[tuple[Any, ...], dict[str, Any]] = {}
_SHARED_KEYS_MAX = 1 << 16


def _shared_partition_key(value: Any) -> Any:
    """One dict for every partition with an equal flat ``partition_key`` (Timestore's is ``{dataset, window}``,
    the same for all partitions of a shard; issue 15: ~420 B per partition as a dict and four strings of its
    own). Equal means same keys, order, value types and values (``True`` is not ``1``). Never mutated: deltas
    and snapshots serialise it, :func:`entry_dict` hands it out in a new entry dict. The cache is bounded
    (cleared when full: sharing is only a saving)."""
    if type(value) is not dict:
        return value
    try:
        ident = tuple((k, type(v), v) for k, v in value.items() if type(v) in _SCALARS)
    except TypeError:
        return value
    if len(ident) != len(value):
        return value  # nested values: kept as they came
    shared = _SHARED_KEYS.get(ident)
    if shared is None:
        if len(_SHARED_KEYS) >= _SHARED_KEYS_MAX:
            _SHARED_KEYS.clear()
        shared = _SHARED_KEYS[ident] = {sys.intern(k): v for k, v in value.items()}
    return shared


def _interned(values: list[Any]) -> tuple[Any, ...]:
    for i in _INTERNED_IX:
        value = values[i]
        if type(value) is str:
            values[i] = sys.intern(value)
    values[_KEY_IX] = _shared_partition_key(values[_KEY_IX])
    return tuple(values)


def _partition_values(row: dict[str, Any], manifest: ManifestInfo | None) -> tuple[Any, ...]:
    """:func:`partition_entry` as the compact state holds it (a tuple in :data:`PARTITION_FIELDS` order)."""
    meta = row.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    values = [row.get(name) for name in PARTITION_FIELDS]
    values[_SCHEMA_IX] = partition_schema_version(meta)  # never the manifest's (issue 20)
    values[_TABLE_IX] = _json_text(meta.get("tableName")) or DEFAULT_TABLE_NAME
    if not values[_SHARD_IX]:
        values[_SHARD_IX] = manifest.shard if manifest else shard_for(row.get("start_time"))
    return _interned(values)


def compact_entry(entry: dict[str, Any]) -> PartitionEntry:
    """A delta/snapshot entry as the state holds it: the compact tuple when it has exactly
    :data:`PARTITION_FIELDS` in that order, else a copy of the dict as is."""
    if tuple(entry) == PARTITION_FIELDS:
        return _interned(list(entry.values()))
    return dict(entry)


def entry_dict(entry: PartitionEntry) -> dict[str, Any]:
    """The delta entry (a new dict) of an entry of :attr:`ShardState.partitions`."""
    if type(entry) is tuple:
        return dict(zip(PARTITION_FIELDS, entry, strict=True))
    return dict(entry)


class Compactor:
    """State machine for one changes-topic partition. ``feed`` records in offset order, ``flush`` deltas."""

    def __init__(
        self,
        src_partition: int,
        share_max_records: int | None = None,
        share_max_age_s: float | None = None,
    ) -> None:
        self.src_partition = src_partition
        # bounds after which an overtaken incomplete share expires (None: never; see the module doc)
        self.share_max_records = share_max_records
        self.share_max_age_s = share_max_age_s
        self.expired_shares = 0
        # bytes of buffered share records (SHARE_DECODED_SLOTS) let go since the caller last took the count
        # (``take_released``): the runner gives freed memory back to the OS after big shares
        self.released_bytes = 0
        self.shards: dict[ShardKey, ShardState] = {}
        self.manifests: dict[str, ManifestInfo] = {}
        self.hidden: dict[str, dict[str, dict[str, Any]]] = {}
        self.datasets: set[str] = set()
        self.last_applied: dict[str, int] = {}
        self.rejected: list[Rejected] = []
        # the highest input offset whose window is sealed (its deltas are in ``_sealed`` or were flushed)
        self.covered_to: int = -1
        self.last_offset: int = -1
        # deltas already present downstream for the window ending at ``force_boundary`` (restore)
        self.force_boundary: int | None = None
        self.skip_regenerated: set[tuple[str, str | None]] = set()
        self._shares: dict[str, _Share] = {}
        self._heartbeat_seen: ChangeRecord | None = None  # the newest heartbeat/watermark fed
        self._window = _Window()
        self._sealed: list[Delta] = []

    # ----------------------------------------------------------------------------------- feeding
    @property
    def clean(self) -> bool:
        """True when no transaction share is half-received (a window may be sealed here)."""
        return not self._shares

    @property
    def at_rest(self) -> bool:
        """No open window, no half-received share, nothing sealed but not yet taken, no restored window being
        re-processed: the state is exactly the effect of the input through ``covered_to`` (a snapshot may be
        taken, ``pipeline/snapshot.py``)."""
        return (
            not self._shares
            and self._window.first is None
            and not self._sealed
            and self.force_boundary is None
        )

    def state_view(self, full: bool = True) -> dict[str, Any]:
        """The state as plain values, for comparisons (tests, the bench). ``full=False`` leaves out what a
        restore from deltas cannot know: manifests never published, partitions of draft manifests, and the
        commit LSNs applied per key (``last_applied``: a transaction that changed nothing visible made no
        delta, so a replay knows a lower LSN; it only serves to drop the connector's re-sends)."""
        view: dict[str, Any] = {
            "shards": {
                key: (
                    s.published_manifest_id,
                    {pid: entry_dict(e) for pid, e in sorted(s.partitions.items())},
                )
                for key, s in sorted(self.shards.items())
            },
            "datasets": sorted(self.datasets),
            "covered_to": self.covered_to,
            "last_offset": self.last_offset,
            "force_boundary": self.force_boundary,
            "skip_regenerated": sorted(self.skip_regenerated, key=repr),
        }
        if full:
            view["last_applied"] = dict(sorted(self.last_applied.items()))
            view["manifests"] = dict(sorted(self.manifests.items()))
            view["hidden"] = dict(sorted(self.hidden.items()))
        return view

    @property
    def window_records(self) -> int:
        return self._window.records

    @property
    def state_partitions(self) -> int:
        return sum(len(s.partitions) for s in self.shards.values())

    def skip(self, offset: int, position: SharePosition | None = None, resync: str | None = None) -> None:
        """An offset that carried no usable record (sent to the DLQ): it still belongs to the window. With the
        record's ``position`` (its bytes still named one) it also takes its slot in its transaction share, so the
        share's other records complete and seal (a rejected record never orphans its transaction)."""
        self._advance(offset)
        self._window.extend(offset)
        if resync is not None and position is not None and position.dataset_id is not None:
            # the change itself is lost to the stream (e.g. an oversize stub): its dataset's delta of this window
            # tells every context to rebuild that dataset from PostgreSQL, which holds the change
            dw = self._dw(position.dataset_id)
            dw.resync = resync
            dw.lsn_from = (
                position.commit_lsn if dw.lsn_from is None else min(dw.lsn_from, position.commit_lsn)
            )
            dw.lsn_to = max(dw.lsn_to, position.commit_lsn)
        if position is not None:
            key = position.dataset_id or GLOBAL_KEY
            ident = (position.source, position.commit_lsn, position.xid)
            share = self._share_for(
                key, ident, position.source is Source.STREAM, position.commit_lsn, position.tx_size
            )
            if share is not None and position.tx_index not in share.slots:
                share.slots[position.tx_index] = (offset, None)
                if share.complete:
                    del self._shares[key]
                    self._apply_share(key, share)
        self._maybe_force_seal()

    def _share_for(
        self, key: str, ident: tuple[Any, ...], stream: bool, commit_lsn: int, size: int
    ) -> _Share | None:
        """The half-received share of ``key`` a record of transaction ``ident`` belongs to (a new one when none
        is); ``None`` for a re-send of an applied transaction."""
        share = self._shares.get(key)
        if share is not None and share.ident != ident:
            # a different transaction for this key while one is half-received: the old one is broken
            self.rejected.extend(
                Rejected(off, _slot_record(r), "incomplete_transaction") for off, r in share.slots.values()
            )
            self.released_bytes += share.held_bytes()
            del self._shares[key]
            share = None
        if share is None:
            if stream and commit_lsn <= self.last_applied.get(key, -1):
                return None  # a re-send of an applied transaction (connector restart)
            share = _Share(ident=ident, size=size)
            self._shares[key] = share
        return share

    def feed(self, rec: ChangeRecord, offset: int, raw: bytes | None = None) -> None:
        """Take one record. Raises :class:`InvalidChange` for a record to send to the DLQ (its slot is
        accounted, the stream continues). ``raw``: the bytes ``rec`` was decoded from (``ChangeRecord.from_bytes``);
        a big half-received share then holds those instead of ``rec`` (:data:`SHARE_DECODED_SLOTS`)."""
        self._advance(offset)
        is_global = _is_global(rec) and rec.kind is not Kind.HEARTBEAT
        try:
            if is_global and self.clean and self.force_boundary is None:
                self._seal()  # global records get a window of their own
            self._window.extend(offset)
            self._accept(rec, offset, raw)
        finally:
            if is_global and self.clean and self.force_boundary is None:
                self._seal()
            self._maybe_force_seal()

    def _advance(self, offset: int) -> None:
        if offset <= self.last_offset:
            raise OffsetRegression(f"offset {offset} fed after {self.last_offset} on {self.src_partition}")
        self.last_offset = offset

    def _maybe_force_seal(self) -> None:
        if self.force_boundary is not None and self.last_offset >= self.force_boundary:
            # the run that sealed this window was clean here: a share still open was expired by it
            for key in list(self._shares):
                self._expire_share(key, "open at the end of a restored window")
            self._seal()
            self.force_boundary = None
            self.skip_regenerated.clear()

    def _overtake(self, rec: ChangeRecord, key: str | None) -> None:
        """Count ``rec`` as a later record for every open share of an older transaction (not its own)."""
        for other_key, share in self._shares.items():
            if other_key != key and share.ident[1] < rec.commit_lsn:
                share.later += 1

    def _accept(self, rec: ChangeRecord, offset: int, raw: bytes | None = None) -> None:
        key = _key_of(rec)
        if self._shares and rec.kind in (Kind.HEARTBEAT, Kind.CHANGE):
            self._overtake(rec, None if rec.kind is Kind.HEARTBEAT else key)
        if rec.kind is Kind.HEARTBEAT:
            # progress of heartbeats/watermarks is kept apart from GLOBAL_KEY: a watermark sits at a commit's
            # end LSN, where the next transaction's commit record may start, and must not make that
            # transaction look like a re-send
            if rec.commit_lsn >= self.last_applied.get(HEARTBEAT_KEY, -1):
                self.last_applied[HEARTBEAT_KEY] = rec.commit_lsn
                self._heartbeat_seen = rec
                if self.clean:  # a heartbeat inside a half-received window would claim too much
                    self._window.heartbeat = rec
            return
        if rec.kind is Kind.SNAPSHOT_DONE:
            return
        ident = (rec.source, rec.commit_lsn, rec.xid)
        share = self._share_for(key, ident, rec.source is Source.STREAM, rec.commit_lsn, rec.tx_size)
        if share is None:
            return
        if rec.tx_index in share.slots:
            return  # duplicate of a record already buffered
        problem = self._validate(rec)
        slot: ChangeRecord | bytes | None = None if problem else rec
        if slot is not None and raw is not None and SHARE_DECODED_SLOTS <= len(share.slots) < share.size - 1:
            slot = raw  # a big share still waiting for more: hold the bytes, decode again when it completes
        share.slots[rec.tx_index] = (offset, slot)
        share.later, share.overtaken_at = 0, None  # progress: not stuck
        if share.complete:
            del self._shares[key]
            self._apply_share(key, share)
        if problem:
            raise InvalidChange(problem)

    def expire(self, now: float) -> int:
        """Expire the overtaken shares past a bound (module doc); returns how many. ``now`` is any clock
        the caller keeps monotonic (the runner passes the Kafka timestamp of the newest record fed, so a
        replay of the same records expires at the same points). Expired records are in ``rejected``."""
        expired = 0
        if self.share_max_records is None and self.share_max_age_s is None:
            return 0
        for key, share in list(self._shares.items()):
            if share.later <= 0:
                continue
            if share.overtaken_at is None:
                share.overtaken_at = now
            by_records = self.share_max_records is not None and share.later >= self.share_max_records
            by_age = self.share_max_age_s is not None and now - share.overtaken_at >= self.share_max_age_s
            if by_records or by_age:
                self._expire_share(
                    key,
                    f"{share.later} later record(s)" if by_records else f"{now - share.overtaken_at:.1f} s",
                )
                expired += 1
        return expired

    def _expire_share(self, key: str, why: str) -> None:
        share = self._shares.pop(key)
        _source, lsn, xid = share.ident
        reason = (
            f"incomplete_transaction_expired: {len(share.slots)} of {share.size} record(s) of key {key}"
            f" (xid {xid}, commit LSN {lsn}) after {why}"
        )
        self.rejected.extend(
            Rejected(off, _slot_record(r), reason)
            for off, r in sorted(share.slots.values(), key=lambda x: x[0])
        )
        self.released_bytes += share.held_bytes()
        self._window.records += len(share.slots)
        self.expired_shares += 1
        seen, current = self._heartbeat_seen, self._window.heartbeat
        if self.clean and seen is not None and (current is None or current.commit_lsn < seen.commit_lsn):
            # the watermarks that arrived while the share was open were held back (they would have claimed
            # its LSN); the share is gone, so the newest one now closes the window: idle partitions claim
            # progress at once instead of at the next heartbeat
            self._window.heartbeat = seen

    @staticmethod
    def _validate(rec: ChangeRecord) -> str | None:
        if rec.op is Op.TRUNCATE:
            return None
        row = rec.row
        if rec.table not in _KNOWN_TABLES:
            return None  # other catalog tables: not ours, ignored
        if not isinstance(row.get("id"), str):
            return f"{rec.table} {rec.op} row without string id"
        if rec.table in (MANIFESTS, PARTITIONS, SCHEMA_VERSIONS) and not isinstance(
            row.get("dataset_id"), str
        ):
            return f"{rec.table} row without dataset_id"
        if rec.table == PARTITIONS and not isinstance(row.get("manifest_id"), str):
            return "partition row without manifest_id"
        if rec.table == PARTITIONS and rec.op is not Op.DELETE and not row.get("file_path"):
            return "partition row without file_path"
        return None

    def _apply_share(self, key: str, share: _Share) -> None:
        self._window.records += len(share.slots)
        self.released_bytes += share.held_bytes()
        slots = [r for _, (_, r) in sorted(share.slots.items()) if r is not None]
        share.slots.clear()
        for i, slot in enumerate(slots):
            slots[i] = None  # each record (decoded again from its bytes) lives only while it is applied
            rec = _slot_record(slot)
            assert rec is not None
            if i == 0 and rec.source is Source.STREAM:
                self.last_applied[key] = max(self.last_applied.get(key, -1), rec.commit_lsn)
            self._apply(rec)

    # --------------------------------------------------------------------------------- applying
    def _dw(self, dataset_id: str) -> _DatasetWindow:
        return self._window.datasets.setdefault(dataset_id, _DatasetWindow())

    def _gw(self) -> _DatasetWindow:
        if self._window.global_ is None:
            self._window.global_ = _DatasetWindow()
        return self._window.global_

    def _apply(self, rec: ChangeRecord) -> None:
        if rec.op is Op.TRUNCATE:
            self._gw().note(rec)
            self._truncate(rec)
            return
        table = rec.table
        if table not in _KNOWN_TABLES:
            return
        if table == STORAGE_TARGETS:
            self._gw().note(rec)
            row = rec.row
            self._window.storage_targets[row["id"]] = (
                {"id": row["id"], "deleted": True} if rec.op is Op.DELETE else dict(rec.new or {})
            )
            return
        dataset_id = dataset_of(table, rec.row)
        dw = self._dw(dataset_id)
        dw.note(rec)
        if table == DATASETS:
            self._apply_dataset(rec, dw)
        elif table == SCHEMA_VERSIONS:
            row = rec.row
            dw.schema_versions[row["id"]] = (
                {"id": row["id"], "deleted": True} if rec.op is Op.DELETE else dict(rec.new or {})
            )
        elif table == MANIFESTS:
            self._apply_manifest(rec)
        else:
            self._apply_partition(rec)

    def _apply_dataset(self, rec: ChangeRecord, dw: _DatasetWindow) -> None:
        ds_id = rec.row["id"]
        if rec.op is Op.DELETE:
            self.datasets.discard(ds_id)
            dw.dataset = {"id": ds_id, "deleted": True}
            return
        self.datasets.add(ds_id)
        if rec.op is Op.UPDATE and rec.old is not None:
            if _without_updated_at(rec.old) == _without_updated_at(rec.new):
                return  # touchDataset: nothing a context cares about
        dw.dataset = dict(rec.new or {})

    def _shard_state(self, key: ShardKey) -> ShardState:
        return self.shards.setdefault(key, ShardState())

    def _touch(self, dataset_id: str, shard: str, part_id: str) -> None:
        touched = self._dw(dataset_id).touched.setdefault(shard, {})
        if part_id not in touched:
            state = self.shards.get((dataset_id, shard))
            touched[part_id] = state is not None and part_id in state.partitions

    def _unpublish(self, key: ShardKey, manifest_id: str) -> None:
        state = self.shards.get(key)
        if state is None or state.published_manifest_id != manifest_id:
            return
        for part_id in list(state.partitions):
            self._touch(key[0], key[1], part_id)
        state.partitions.clear()
        state.published_manifest_id = None
        self._dw(key[0]).shards_touched.add(key[1])

    def _publish(self, key: ShardKey, manifest_id: str) -> None:
        state = self._shard_state(key)
        if state.published_manifest_id == manifest_id:
            return
        if state.published_manifest_id is not None:
            self._unpublish(key, state.published_manifest_id)
        state.published_manifest_id = manifest_id
        self._dw(key[0]).shards_touched.add(key[1])
        manifest = self.manifests.get(manifest_id)
        for part_id, row in self.hidden.pop(manifest_id, {}).items():
            self._touch(key[0], key[1], part_id)
            state.partitions[part_id] = _partition_values(row, manifest)

    def _apply_manifest(self, rec: ChangeRecord) -> None:
        row = rec.row
        manifest_id, dataset_id = row["id"], row["dataset_id"]
        shard = row.get("manifest_shard") or LEGACY_SHARD
        if rec.op is Op.DELETE:
            info = self.manifests.pop(manifest_id, None)
            self._unpublish((dataset_id, info.shard if info else shard), manifest_id)
            self.hidden.pop(manifest_id, None)
            return
        new = rec.new or {}
        old_info = self.manifests.get(manifest_id)
        if old_info is not None and old_info.shard != shard:
            self._unpublish((dataset_id, old_info.shard), manifest_id)
        info = ManifestInfo(dataset_id, shard, str(new.get("status")), new.get("schema_version_id"))
        self.manifests[manifest_id] = info
        if info.status == PUBLISHED:
            self._publish((dataset_id, shard), manifest_id)
        else:
            self._unpublish((dataset_id, shard), manifest_id)
            if info.status != "draft":
                # superseded manifests never come back in Timestore: forget their rows
                self.manifests.pop(manifest_id, None)
                self.hidden.pop(manifest_id, None)

    def _partition_shard(self, row: dict[str, Any]) -> str:
        manifest = self.manifests.get(row["manifest_id"])
        if manifest is not None:
            return manifest.shard
        return row.get("manifest_shard") or shard_for(row.get("start_time"))

    def _apply_partition(self, rec: ChangeRecord) -> None:
        if rec.op in (Op.DELETE, Op.UPDATE) and rec.old is not None:
            self._remove_partition(rec.old)
        elif rec.op is Op.DELETE:
            self._remove_partition(rec.key or {})
        if rec.op in (Op.INSERT, Op.READ, Op.UPDATE):
            self._add_partition(rec.new or {})

    def _remove_partition(self, row: dict[str, Any]) -> None:
        part_id = row.get("id")
        dataset_id = row.get("dataset_id")
        for manifest_rows in self.hidden.values():
            manifest_rows.pop(part_id, None)
        if dataset_id is None or row.get("manifest_id") is None:
            # key-only delete: find it in the visible sets
            for (ds, shard), state in self.shards.items():
                if part_id in state.partitions:
                    self._touch(ds, shard, part_id)
                    del state.partitions[part_id]
                    self._dw(ds).shards_touched.add(shard)
            return
        shard = self._partition_shard(row)
        state = self.shards.get((dataset_id, shard))
        if state is not None and part_id in state.partitions:
            self._touch(dataset_id, shard, part_id)
            del state.partitions[part_id]

    def _add_partition(self, row: dict[str, Any]) -> None:
        dataset_id, manifest_id, part_id = row["dataset_id"], row["manifest_id"], row["id"]
        shard = self._partition_shard(row)
        state = self.shards.get((dataset_id, shard))
        if state is not None and state.published_manifest_id == manifest_id:
            self._touch(dataset_id, shard, part_id)
            state.partitions[part_id] = _partition_values(row, self.manifests.get(manifest_id))
        else:
            manifest = self.manifests.get(manifest_id)
            if manifest is None or manifest.status == "draft":
                self.hidden.setdefault(manifest_id, {})[part_id] = dict(row)
            # rows of superseded manifests are invisible and forgotten

    def _truncate(self, rec: ChangeRecord) -> None:
        table = rec.table
        if table in (PARTITIONS, MANIFESTS, DATASETS):
            self.hidden.clear()
            for key, state in list(self.shards.items()):
                if table == PARTITIONS:
                    for part_id in list(state.partitions):
                        self._touch(key[0], key[1], part_id)
                    state.partitions.clear()
                    self._dw(key[0]).shards_touched.add(key[1])
                elif state.published_manifest_id is not None:
                    self._unpublish(key, state.published_manifest_id)
            if table != PARTITIONS:
                self.manifests.clear()
        if table == DATASETS:
            for ds_id in sorted(self.datasets):
                self._dw(ds_id).dataset = {"id": ds_id, "deleted": True}
            self.datasets.clear()

    # --------------------------------------------------------------------------------- sealing
    def _seal(self) -> None:
        """Close the current window (must be clean) into deltas appended to ``_sealed``."""
        window = self._window
        if window.first is None:
            return
        base = {
            "src_partition": self.src_partition,
            "src_offset_from": window.first,
            "src_offset_to": window.last,
        }
        out: list[Delta] = []
        for dataset_id in sorted(window.datasets):
            dw = window.datasets[dataset_id]
            delta = Delta(
                kind=DeltaKind.DELTA,
                lsn_from=dw.lsn_from or 0,
                lsn_to=dw.lsn_to,
                commit_ts_max=dw.commit_ts_max,
                raw_changes=dw.raw,
                dataset_id=dataset_id,
                dataset=dw.dataset,
                schema_versions=[dw.schema_versions[k] for k in sorted(dw.schema_versions)],
                shards=self._shard_changes(dataset_id, dw),
                snapshot=dw.snapshot,
                resync=dw.resync,
                **base,
            )
            if delta.entry_count or delta.shards or delta.resync:
                out.append(delta)
        gw = window.global_
        if gw is not None and window.storage_targets:
            out.append(
                Delta(
                    kind=DeltaKind.DELTA,
                    lsn_from=gw.lsn_from or 0,
                    lsn_to=gw.lsn_to,
                    commit_ts_max=gw.commit_ts_max,
                    raw_changes=gw.raw,
                    storage_targets=[window.storage_targets[k] for k in sorted(window.storage_targets)],
                    snapshot=gw.snapshot,
                    **base,
                )
            )
        hb = window.heartbeat
        if hb is not None:
            out.append(
                Delta(
                    kind=DeltaKind.HEARTBEAT,
                    lsn_from=hb.commit_lsn,
                    lsn_to=hb.commit_lsn,
                    commit_ts_max=hb.commit_ts,
                    **base,
                )
            )
        if self.skip_regenerated:
            out = [d for d in out if (d.kind.value, d.dataset_id) not in self.skip_regenerated]
        self._sealed.extend(out)
        self.covered_to = window.last if window.last is not None else self.covered_to
        self._window = _Window()

    def _shard_changes(self, dataset_id: str, dw: _DatasetWindow) -> dict[str, ShardChange]:
        changes: dict[str, ShardChange] = {}
        for shard in sorted(set(dw.touched) | dw.shards_touched):
            state = self.shards.get((dataset_id, shard))
            visible = state.partitions if state is not None else {}
            manifest_id = state.published_manifest_id if state is not None else None
            change = ShardChange(published_manifest_id=manifest_id)
            for part_id, was_visible in sorted(dw.touched.get(shard, {}).items()):
                entry = visible.get(part_id)
                if entry is not None:
                    change.upserts.append(entry_dict(entry))
                elif was_visible:
                    change.deletes.append(part_id)
            if change.upserts or change.deletes or shard in dw.shards_touched:
                changes[shard] = change
            if state is not None and not state.partitions and state.published_manifest_id is None:
                del self.shards[(dataset_id, shard)]
        return changes

    def flush(self) -> list[Delta]:
        """Seal the current window if it is clean and return every delta sealed so far."""
        if self.clean and self.force_boundary is None:
            self._seal()
        out, self._sealed = self._sealed, []
        return out

    def take_released(self) -> int:
        """Bytes of buffered share records let go since the last call (see ``released_bytes``)."""
        out, self.released_bytes = self.released_bytes, 0
        return out

    def drain_rejected(self) -> list[Rejected]:
        out, self.rejected = self.rejected, []
        return out

    # --------------------------------------------------------------------------------- restore
    def apply_delta(self, delta: Delta) -> None:
        """Bring the state forward by a delta this compactor (or a predecessor) produced."""
        key = delta.dataset_id or GLOBAL_KEY
        if delta.kind is DeltaKind.HEARTBEAT:
            self.last_applied[HEARTBEAT_KEY] = max(self.last_applied.get(HEARTBEAT_KEY, -1), delta.lsn_to)
        elif delta.dataset_id is None:
            self.last_applied[GLOBAL_KEY] = max(self.last_applied.get(GLOBAL_KEY, -1), delta.lsn_to)
        elif not delta.snapshot:
            self.last_applied[key] = max(self.last_applied.get(key, -1), delta.lsn_to)
        self.covered_to = max(self.covered_to, delta.src_offset_to)
        self.last_offset = max(self.last_offset, delta.src_offset_to)
        if delta.dataset_id is None:
            return
        ds = delta.dataset_id
        if delta.dataset is not None:
            if delta.dataset.get("deleted"):
                self.datasets.discard(ds)
            else:
                self.datasets.add(ds)
        for shard, change in delta.shards.items():
            state = self._shard_state((ds, shard))
            for part_id in change.deletes:
                state.partitions.pop(part_id, None)
            for entry in change.upserts:
                state.partitions[entry["id"]] = compact_entry(entry)
            if state.published_manifest_id and state.published_manifest_id != change.published_manifest_id:
                self.manifests.pop(state.published_manifest_id, None)
            state.published_manifest_id = change.published_manifest_id
            if change.published_manifest_id is not None:
                svid = next((u.get("schema_version_id") for u in change.upserts), None)
                known = self.manifests.get(change.published_manifest_id)
                self.manifests[change.published_manifest_id] = ManifestInfo(
                    ds, shard, PUBLISHED, svid or (known.schema_version_id if known else None)
                )
            elif not state.partitions:
                del self.shards[(ds, shard)]


@dataclass(slots=True)
class Restored:
    """Result of :func:`restore_from_deltas`: the compactor and the input offset to resume at."""

    compactor: Compactor
    resume_offset: int | None  # None: no delta yet, start at the beginning of the partition


def restore_from_deltas(
    src_partition: int, deltas: Iterable[Delta], base: Compactor | None = None
) -> Restored:
    """Rebuild a :class:`Compactor` from the deltas it produced for ``src_partition``, in topic order.

    ``base``: the state of a snapshot (``pipeline/snapshot.py``, taken at rest through ``covered_to``), and
    ``deltas`` only the ones after the snapshot's deltas offset; without it, every delta from the beginning.
    A window's deltas share one ``src_offset_from..to``; the last group may have been cut by a crash
    between produce calls, so it is NOT applied: the compactor resumes at its first offset, seals the
    window again exactly at its last offset, and drops the regenerated deltas that are already there.
    """
    compactor = base if base is not None else Compactor(src_partition)
    group: list[Delta] = []
    for delta in deltas:
        if delta.src_partition != src_partition:
            continue
        if group and (group[0].src_offset_from, group[0].src_offset_to) != (
            delta.src_offset_from,
            delta.src_offset_to,
        ):
            for d in group:
                compactor.apply_delta(d)
            group = []
        group.append(delta)
    if not group:
        return Restored(compactor, compactor.covered_to + 1 if compactor.covered_to >= 0 else None)
    compactor.last_offset = group[0].src_offset_from - 1
    compactor.covered_to = group[0].src_offset_from - 1
    compactor.force_boundary = group[0].src_offset_to
    compactor.skip_regenerated = {(d.kind.value, d.dataset_id) for d in group}
    return Restored(compactor, group[0].src_offset_from)
