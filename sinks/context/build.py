"""Building a context from PostgreSQL: the ONE way, used by every path that reads the catalog (issue 15).

* **bootstrap** of new, wiped or retention-truncated shards (:meth:`ContextBuilder.bootstrap`, called by the
  deltas consumer before it follows the deltas),
* **admin rebuild** of one dataset or all (:meth:`ContextBuilder.rebuild`, through the rebuild scheduler),
* **full-scan applies** (:meth:`ContextBuilder.replace_from_snapshot`, called from ``apply.Applier``).

Every build is the same sequence (``read_catalog`` documents the snapshot; ``bulkload`` the COPY path):

1. Under the writer lock a *journal* opens: every delta applied from now on is appended to it.
2. (bootstrap) The caller recorded the deltas topic's end offsets ``E`` per partition BEFORE calling.
3. ``L = pg_current_wal_lsn()`` is read in its own statement, THEN the REPEATABLE READ snapshot is taken and
   the catalog read in bulk (``COPY … TO STDOUT`` → Arrow CSV reader → one DuckDB ``INSERT … SELECT``; no
   Python per row). No lock is held meanwhile.
4. Under the writer lock, in ONE DuckDB transaction: the scope's rows are replaced by the snapshot less the
   partitions the journal names (``content.without_replayed``), every journaled delta's content is re-applied
   in apply order with the partition rows it leaves appended at the end (``ContentWriter.replay``: no
   statement touches a row this transaction appended, else DuckDB logs all of them into its WAL at the
   commit), and (bootstrap) each shard's progress is written: deltas offset ``E-1``, applied LSN ``L``,
   bootstrapped. Commit, journal closed.
5. (bootstrap) The consumer follows the deltas from ``E``.

**Why nothing after the snapshot is missed (bootstrap).** A delta at an offset ``< E`` was in the topic when
``E`` was read, i.e. before ``L`` was read and before the snapshot was taken; it is produced only after the
compactor read its transaction from the changes topic, which the connector wrote only after PostgreSQL
flushed the commit — the transaction committed before the snapshot, so the snapshot holds it. (Caveat:
PostgreSQL flushes a commit record a moment before it makes the transaction visible; a delta produced AND
recorded in ``E`` inside that microsecond window would be missed. The full pipeline — logical decoding,
connector, changes topic, compactor window, deltas topic — takes milliseconds, so this is not reachable in
practice; with synchronous replication (``synchronous_standby_names``), whose wait sits in that window, the
journal does not help either, and ``WALDUCK_CONTEXT_BOOTSTRAP=replay`` is the exact alternative.) Every delta at
an offset ``>= E`` is applied after the build, in offset order.

**Why replaying what the snapshot already holds converges.** A delta carries the net final state of every
row it names (upserts replace, deletes remove), and deltas of one shard arrive in commit order. Following
from ``E`` re-applies states the snapshot may already hold — idempotent — and then states newer than it; each
row ends at the state of the last change that named it, which is the catalog's. A transient older state is
visible between the build and the moment the stream passes ``L`` (a delta older than the snapshot re-applied
before a newer one of the same row); ``applied_lsn`` = ``L`` then is a lower bound only as
read-your-writes needs it (everything committed before the caller's write is in the snapshot or re-applied).

**Rebuilds** (journal): every delta applied before step 1 committed before L was read, so the snapshot holds
it; every delta applied after step 1 is journaled and re-applied over the snapshot in step 4 (a journaled delta
the snapshot already holds is replayed twice, harmlessly); deltas still to come re-apply net final states.
Offsets and LSNs are not touched by a rebuild.

Plain views (``timestore.<view>``) are NOT refreshed by a build: the datasets are marked dirty and the consumer
refreshes them in bounded chunks afterwards (``views.ViewRefresher``); ``/sql/read`` never uses them (the
planner rewrites every ``timestore.<view>``). ``WALDUCK_CONTEXT_BUILD_REFRESH_VIEWS=true`` keeps the old behaviour
(refresh every view under the writer lock at the end of the build; the benchmark's baseline).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from sinks.context import ddl, pgsource
from sinks.context.bulkload import insert_partitions
from sinks.context.content import without_replayed
from sinks.context.datasets import dataset_row
from sinks.context.ddl import INDEX_SCHEMA as WD
from sinks.context.naming import schema_columns
from sinks.context.pgsource import CatalogSnapshot, as_json_text
from sinks.context.progress import ProgressRow
from sinks.context.rebuilds import finished_rebuild
from sinks.context.values import FAR_FUTURE, FAR_PAST, as_dict
from walduck import metrics
from walduck.deltas import Delta
from walduck.lsn import format_lsn
from walduck.records import partition_of
from walduck.timeutil import iso, utcnow

if TYPE_CHECKING:
    from sinks.context.store import ContextStore

log = logging.getLogger(__name__)

# looked up through the module at call time, so a test can force an interleaving during the read
read_catalog = pgsource.read_catalog

_SHARD_TABLES = ("datasets", "schema_versions", "partitions", "columns")


@dataclass
class BuildTimings:
    """Seconds per step of the last build (logged, and read by ``walduck bench bootstrap``)."""

    steps: dict[str, float] = field(default_factory=dict)
    # DuckDB's WAL bytes before and after the commit (smaller after: DuckDB checkpointed in the commit)
    wal: tuple[int, int] | None = None

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - started

    def text(self) -> str:
        text = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.steps.items())
        if self.wal is not None:
            before, after = self.wal
            text += f"; WAL {before / 2**20:.1f} -> {after / 2**20:.1f} MiB at the commit"
            if after < before:
                text += " (DuckDB checkpointed in it)"
        return text


class ContextBuilder:
    """Builds (part of) a :class:`ContextStore` from PostgreSQL; see the module docstring for the steps."""

    def __init__(self, store: ContextStore) -> None:
        self.store = store
        self.last = BuildTimings()

    # ------------------------------------------------------------------ PostgreSQL
    def connect(self) -> Any:
        """A new PostgreSQL connection (the store's ``pg_connect`` hook, else the catalog DSN)."""
        st = self.store
        if st.pg_connect is not None:
            return st.pg_connect()
        import psycopg

        return psycopg.connect(st.walduck.pg_dsn, autocommit=False)

    @contextlib.contextmanager
    def pg(self) -> Iterator[Any]:
        conn = self.connect()
        try:
            yield conn
        finally:
            conn.close()

    def read(self, dataset_ids: list[str] | None, bulk: bool | None = None) -> CatalogSnapshot:
        with self.pg() as conn:
            return read_catalog(
                conn,
                self.store.walduck.catalog_schema,
                dataset_ids,
                bulk=self.store.settings.bulk_load if bulk is None else bulk,
                connect=self.connect,
                connections=self.store.settings.bulk_read_connections,
            )

    # ------------------------------------------------------------------ bootstrap
    def bootstrap(self, ends: dict[int, int], reason: str = "bootstrap") -> BuildTimings:
        """Build the shards of ``ends`` (deltas partition -> its end offset E, read BEFORE this call) from a
        PostgreSQL snapshot; store ``E-1`` as their deltas offset and mark them bootstrapped. The caller then
        consumes each partition from E (module docstring: why nothing is missed and why replay converges)."""
        st = self.store
        st._require()
        timings = BuildTimings()
        started = time.perf_counter()
        shards = sorted(ends)
        every = set(shards) >= set(range(st.walduck.topic_partitions))
        with self._journal() as journal:  # step 1
            with timings.step("read (COPY + Arrow)"):  # step 3
                snap = self.read(None)
            if not every:
                snap = self._only_shards(snap, set(shards))
            at = utcnow()
            with st._write_lock:  # step 4
                with self._committed(journal, timings) as cur:
                    with timings.step("delete"):
                        existing = [
                            r[0]
                            for r in cur.execute(
                                f"SELECT id FROM {WD}.datasets WHERE list_contains(?, shard)", [shards]
                            ).fetchall()
                        ]
                        if every:
                            _empty_shard_tables(cur)
                        else:
                            for table in _SHARD_TABLES:
                                cur.execute(
                                    f"DELETE FROM {WD}.{table} WHERE list_contains(?, shard)", [shards]
                                )
                    with timings.step("journal filter"):
                        snap = self._without_journaled(snap, journal)
                    touched = self._insert_snapshot(cur, snap, None, timings, wiped=True)
                    touched |= set(existing)
                    with timings.step("journal replay"):
                        touched |= self._replay_journal(cur, journal, wiped=every)
                    st._progress.write(
                        cur,
                        [
                            ProgressRow(
                                shard,
                                ends[shard] - 1,
                                max(st._progress.of(shard).applied_lsn, snap.lsn),
                                at,
                                True,
                                at,
                            )
                            for shard in shards
                        ],
                    )
                for shard in shards:
                    prog = st._progress.of(shard)
                    prog.deltas_offset = ends[shard] - 1
                    prog.applied_lsn = max(prog.applied_lsn, snap.lsn)
                    prog.newest_commit_ts = iso(at)
                    prog.applied_at = iso(at)
                    prog.bootstrapped = True
                    prog.last_error = None
                    metrics.SHARD_APPLIED_LSN.labels(shard=str(shard)).set(prog.applied_lsn)
                self._after_build(touched, timings)
        st._lsn.wake()
        elapsed = time.perf_counter() - started
        metrics.REBUILDS.labels(scope="shard", result="ok").inc(len(shards))
        metrics.REBUILD_DURATION.labels(scope="shard").observe(elapsed)
        self.last = timings
        log.info(
            "bootstrapped shard(s) %s (%s) from PostgreSQL in %.1f ms at snapshot LSN %s, following the deltas"
            " from %s; %s",
            shards,
            reason,
            elapsed * 1000,
            format_lsn(snap.lsn),
            {s: ends[s] for s in shards},
            timings.text(),
        )
        return timings

    def _only_shards(self, snap: CatalogSnapshot, shards: set[int]) -> CatalogSnapshot:
        n = self.store.walduck.topic_partitions
        keep = {str(d["id"]) for d in snap.datasets if partition_of(str(d["id"]), n) in shards}
        table = snap.partitions_table
        if table is not None and table.num_rows:
            ids = [d for d in pc.unique(table["dataset_id"]).to_pylist() if d is not None]
            mine = pa.array([d for d in ids if partition_of(d, n) in shards], pa.string())
            table = table.filter(pc.is_in(table["dataset_id"], value_set=mine))
        return CatalogSnapshot(
            snap.lsn,
            [d for d in snap.datasets if str(d["id"]) in keep],
            [v for v in snap.schema_versions if partition_of(str(v["dataset_id"]), n) in shards],
            snap.storage_targets,
            [p for p in snap.partitions if partition_of(str(p["dataset_id"]), n) in shards],
            table,
        )

    # ------------------------------------------------------------------ rebuild (admin, scheduler)
    def rebuild(self, dataset_id: str | None, scope: str, started: float, reason: str) -> None:
        st = self.store
        timings = BuildTimings()
        with self._journal() as journal:  # step 1
            with timings.step("read (COPY + Arrow)"):  # step 3
                snap = self.read([dataset_id] if dataset_id else None)
            with st._write_lock:  # step 4
                with self._committed(journal, timings) as cur:
                    with timings.step("journal filter"):
                        snap = self._without_journaled(snap, journal)
                    touched = self.replace_from_snapshot(cur, snap, None, dataset_id, timings)
                    with timings.step("journal replay"):
                        touched |= self._replay_journal(cur, journal, wiped=dataset_id is None)
                replayed = len(journal)
                self._after_build(touched, timings)
        elapsed = time.perf_counter() - started
        self.last = timings
        info = finished_rebuild(
            scope, reason, elapsed, error=None, lsn=format_lsn(snap.lsn), replayed=replayed
        )
        st.rebuilds.record(touched | ({"*"} if dataset_id is None else set()), info)
        log.info(
            "rebuilt %s (%s) in %.1f ms at snapshot LSN %s, %d delta(s) applied meanwhile replayed; %s",
            dataset_id or "all datasets",
            reason,
            elapsed * 1000,
            format_lsn(snap.lsn),
            replayed,
            timings.text(),
        )

    @contextlib.contextmanager
    def _journal(self) -> Iterator[list[tuple[Delta, int]]]:
        """Step 1: a journal every delta applied from now on is appended to (``apply.Applier``), dropped when
        the build ends, whatever the way."""
        st = self.store
        journal: list[tuple[Delta, int]] = []
        with st._write_lock:
            st._rebuild_journals.append(journal)
        try:
            yield journal
        finally:
            with st._write_lock, contextlib.suppress(ValueError):
                st._rebuild_journals.remove(journal)

    @contextlib.contextmanager
    def _committed(
        self, journal: list[tuple[Delta, int]], timings: BuildTimings
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """Step 4, under the writer lock: the body writes through the writer cursor in ONE DuckDB transaction,
        committed when it returns (rolled back when it raises); then the journal is closed."""
        cur = self.store._writer
        assert cur is not None
        cur.begin()
        try:
            yield cur
            wal = self.store.wal_bytes()
            with timings.step("commit"):
                cur.commit()
            timings.wal = (wal, self.store.wal_bytes())
        except Exception:
            with contextlib.suppress(Exception):
                cur.rollback()
            raise
        self.store._rebuild_journals.remove(journal)

    def _after_build(self, touched: set[str], timings: BuildTimings) -> None:
        """Under the writer lock, after the commit: caches dirty; plain views refreshed later, in chunks."""
        st = self.store
        st._mark_changed(touched, always=True)
        if st.settings.build_refresh_views:  # the old behaviour (bench baseline): every view, under the lock
            with timings.step("plain views"):
                st.refresh_views(force=True)

    # ------------------------------------------------------------------ replace
    def replace_from_snapshot(
        self,
        cur: duckdb.DuckDBPyConnection,
        snap: CatalogSnapshot,
        shard: int | None,
        only: str | None,
        timings: BuildTimings | None = None,
    ) -> set[str]:
        """Replace the named dataset(s) (``only`` None = all) with the PostgreSQL snapshot's rows."""
        timings = timings or BuildTimings()
        with timings.step("delete"):
            existing = dict(cur.execute(f"SELECT id, shard FROM {WD}.datasets").fetchall())
            ids = {str(d["id"]) for d in snap.datasets}
            if only is not None:
                ids.add(only)
                for table in _SHARD_TABLES:
                    col = "id" if table == "datasets" else "dataset_id"
                    cur.execute(f"DELETE FROM {WD}.{table} WHERE {col} = ?", [only])
            else:
                # every dataset is replaced: the snapshot IS the new content (no scan per dataset id)
                ids |= set(existing)
                _empty_shard_tables(cur)
        return ids | self._insert_snapshot(cur, snap, shard, timings, existing=existing)

    def _insert_snapshot(
        self,
        cur: duckdb.DuckDBPyConnection,
        snap: CatalogSnapshot,
        shard: int | None,
        timings: BuildTimings,
        existing: dict[str, int] | None = None,
        wiped: bool = False,
    ) -> set[str]:
        """Insert the snapshot's rows (their old rows are already deleted); the dataset ids written."""
        st = self.store
        n = st.walduck.topic_partitions
        existing = existing or {}

        def shard_of(did: str) -> int:
            if shard is not None:
                return shard
            return existing.get(did, partition_of(did, n))

        with timings.step("datasets + schema versions"):
            for target in snap.storage_targets:
                st.content.upsert_target(cur, target)
            ids = {str(d["id"]) for d in snap.datasets}
            _insert_rows(cur, "datasets", [dataset_row(ds, shard_of(str(ds["id"]))) for ds in snap.datasets])
            sv_ids = [str(sv["id"]) for sv in snap.schema_versions]
            if sv_ids and not wiped:
                cur.execute(f"DELETE FROM {WD}.schema_versions WHERE list_contains(?, id)", [sv_ids])
            _insert_rows(
                cur,
                "schema_versions",
                [
                    [
                        str(sv["id"]),
                        str(sv["dataset_id"]),
                        shard_of(str(sv["dataset_id"])),
                        int(sv.get("version") or 0),
                        as_json_text(as_dict(sv.get("schema"))),
                    ]
                    for sv in snap.schema_versions
                ],
            )
        with timings.step("partitions insert"):
            if snap.partitions_table is not None:
                insert_partitions(
                    cur,
                    snap.partitions_table,
                    shard_of,
                    st.content.targets,
                    st.storage_root,
                    FAR_PAST,
                    FAR_FUTURE,
                )
            parts: dict[str, list[dict[str, Any]]] = {}
            for p in snap.partitions:
                parts.setdefault(str(p["dataset_id"]), []).append(p)
            for did, ps in parts.items():
                st.content.insert_partitions(cur, ps, shard_of(did), did)
        with timings.step("columns"):
            self._recompute_columns_of(cur, sorted(ids))
        return ids

    def _recompute_columns_of(self, cur: duckdb.DuckDBPyConnection, ids: list[str]) -> None:
        """``ContentWriter._recompute_columns`` for many datasets in a few statements (rows already deleted)."""
        if not ids:
            return
        shards = dict(
            cur.execute(f"SELECT id, shard FROM {WD}.datasets WHERE list_contains(?, id)", [ids]).fetchall()
        )
        newest = cur.execute(
            f"SELECT dataset_id, schema FROM (SELECT dataset_id, schema, row_number() OVER"
            f" (PARTITION BY dataset_id ORDER BY version DESC) AS rn FROM {WD}.schema_versions"
            f" WHERE list_contains(?, dataset_id)) WHERE rn = 1",
            [ids],
        ).fetchall()
        rows = [
            [did, shards[did], i, n, t, nl, d]
            for did, schema in newest
            if did in shards
            for i, (n, t, nl, d) in enumerate(schema_columns(as_dict(schema)))
        ]
        if rows:
            _insert_rows(cur, "columns", rows)

    # ------------------------------------------------------------------ journal
    def _without_journaled(self, snap: CatalogSnapshot, journal: list[tuple[Delta, int]]) -> CatalogSnapshot:
        """Step 4, before the insert (writer lock held: the journal is complete): the snapshot without the rows
        the journal replay deletes anyway (``content.without_replayed``); full-scan mode replaces whole datasets."""
        if not journal or self.store.full_scan:
            return snap
        return without_replayed(snap, [delta for delta, _ in journal])

    def _replay_journal(
        self, cur: duckdb.DuckDBPyConnection, journal: list[tuple[Delta, int]], wiped: bool
    ) -> set[str]:
        """Step 4: re-apply the content of the deltas applied while the build read PostgreSQL, their partition
        rows appended at the end (``ContentWriter.replay``; ``wiped``: every shard table was emptied in this
        transaction, so no older row is left for the deltas' DELETEs)."""
        st = self.store
        touched: set[str] = set()
        if not journal:
            return touched
        if st.full_scan:
            ids = list(dict.fromkeys(d.dataset_id for d, _ in journal if d.dataset_id is not None))
            shard_of = {d.dataset_id: p for d, p in journal if d.dataset_id is not None}
            if ids:
                snap = self.read(ids, bulk=False)
                for did in ids:
                    one = CatalogSnapshot(
                        snap.lsn,
                        [d for d in snap.datasets if str(d["id"]) == did],
                        [v for v in snap.schema_versions if str(v["dataset_id"]) == did],
                        snap.storage_targets,
                        [p for p in snap.partitions if str(p["dataset_id"]) == did],
                    )
                    touched |= self.replace_from_snapshot(cur, one, shard_of[did], did)
            for delta, partition in journal:
                if delta.dataset_id is None:
                    touched |= st.content.apply_delta(cur, delta, partition)
            return touched
        return touched | st.content.replay(cur, journal, wiped)


def _empty_shard_tables(cur: duckdb.DuckDBPyConnection) -> None:
    """Every shard table emptied in the caller's transaction; ``partitions`` is dropped and created again rather
    than deleted row by row: 1M row deletes made the commit of a rebuild of all write them (6.3 s of a 26 s
    rebuild under ingestion), an empty new table commits like a bootstrap's. Readers keep their snapshot's table."""
    for table in _SHARD_TABLES:
        if table == "partitions":
            cur.execute(f"DROP TABLE {WD}.partitions")
            cur.execute(ddl.PARTITIONS_TABLE)
        else:
            cur.execute(f"DELETE FROM {WD}.{table}")


def _insert_rows(cur: duckdb.DuckDBPyConnection, table: str, rows: list[list[Any]]) -> None:
    """One multi-row INSERT per 500 rows (builds: datasets, schema versions, columns)."""
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        marks = "(" + ", ".join(["?"] * len(chunk[0])) + ")"
        cur.execute(
            f"INSERT INTO {WD}.{table} VALUES " + ", ".join([marks] * len(chunk)),
            [v for row in chunk for v in row],
        )
