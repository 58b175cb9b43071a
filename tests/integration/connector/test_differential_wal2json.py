"""Differential test (issue 16): walduck's change records against wal2json over the same WAL.

Generated catalog transactions put hostile values in every column of the five published tables: text with
quotes, backslashes, control characters, non-BMP unicode and TOAST-sized incompressible strings; jsonb with
numbers float64/int64 cannot hold (``123456789012345678901234567890``, ``1e400``,
``0.10000000000000000000001``), unicode escapes, nesting, arrays/strings/numbers at the top; timestamps
``infinity``, ``-infinity``, years > 9999, BC, odd offsets; integer bounds; NULLs. Transactions mix inserts,
updates of another column (the TOASTed value arrives unchanged), deletes, savepoints rolled back, and aborted
transactions. A wal2json slot (``format-version`` 2, an independent logical decoder in PostgreSQL) is created
beside walduck's; every committed change is compared by meaning: same transactions (xid), same changes in
LSN order (table, op, LSN), and every column's value: JSON parsed with exact numbers, timestamps as the instant
PostgreSQL itself computes from wal2json's text (``extract(epoch …)``), integers, booleans and text as is.

The comparison must report 0 mismatches, and must catch planted faults (float64 jsonb numbers, a timestamp one
microsecond off, a lost change). Figures are printed (``-s``) and asserted.
"""

from __future__ import annotations

import copy
import json
import random
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest
from connector_helpers import (  # type: ignore[import-not-found]
    current_lsn,
    read_changes,
    running_connector,
    wait_confirmed,
    wait_snapshot_done,
)

from connectors.settings import ConnectorSettings
from walduck.catalog_tables import PUBLISHED_TABLES
from walduck.jsonexact import dumps_exact
from walduck.records import ChangeRecord, Kind, Source
from walduck.timeutil import format_micros, instant_micros

pytestmark = pytest.mark.integration

TRANSACTIONS = 150
SCHEMA = "timestore"

HOSTILE_TEXT = [
    "",
    'quote " backslash \\ tab \t newline \n cr \r',
    "ünïcødé ✓ 日本語 🦆 \U0001f600 \u2028 \ufeff",
    "\x01\x02\x1f control",
    "'; DROP TABLE x; --",
    "null",
    '{"looks": "like json"}',
    "%s %(x)s {0}",
]
HOSTILE_JSON = [
    '{"big": 123456789012345678901234567890, "u64over": 18446744073709551616, "neg": -9223372036854775809}',
    '{"pi": 3.141592653589793238462643383279502884197, "cents": 0.10000000000000000000001}',
    '{"huge": 1e400, "tiny": 1e-400, "exp": 12E+5}',
    '[1, "two", null, true, {"n": [1.5, -0]}]',
    '"just a string \\u00e9 \\ud83e\\udd86"',
    "42",
    "null",
    '{"unicode": "\\u0001 \\" \\\\ \\/", "nested": {"a": {"b": {"c": [[], {}]}}}}',
    '{"schemaVersionId": ["x"], "tableName": {"t": 1}, "iam": "nope", "fields": 5}',
    "{}",
]
HOSTILE_TIMES = [
    "2024-01-01 00:00:00+00",
    "2024-06-30 23:59:59.999999+00",
    "2024-03-10 02:30:00.5-07:30",
    "infinity",
    "-infinity",
    "10000-01-01 00:00:00+00",
    "294276-12-31 23:59:59+00",
    "0044-03-15 12:00:00+00 BC",
    "4713-01-01 00:00:00+00 BC",
    "0001-01-01 00:30:00+01",
    "1999-12-31 23:59:59.000001+00",
]
REFUSED = (psycopg.errors.IntegrityError, psycopg.errors.OperationalError, psycopg.errors.DataError)
"""What a savepoint rolls back: a constraint, an index key over the size limit (large text in an indexed column)."""
INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**62]
BIGINTS = [0, -1, 2**63 - 1, -(2**63), 10**15]
# values the catalog's CHECK constraints allow
FIXED = {
    "status": {"datasets": ["active", "inactive"], "dataset_manifests": ["published", "draft", "superseded"]},
    "kind": {"storage_targets": ["local", "s3"]},
    "write_format": {"datasets": ["parquet"]},
    "file_format": {"dataset_partitions": ["parquet"]},
}


def _columns(conn: psycopg.Connection) -> dict[str, list[tuple[str, str, bool]]]:
    """table -> [(column, type name, settable by the generator)] (FK / CHECK columns only when fixed)."""
    out: dict[str, list[tuple[str, str, bool]]] = {}
    for table in PUBLISHED_TABLES:
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, NULL),"
            " NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype IN ('f', 'c')"
            "             AND a.attnum = ANY(k.conkey))"
            " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            [SCHEMA, table],
        ).fetchall()
        out[table] = [(r[0], r[1], r[2]) for r in rows]
    return out


class Generator:
    """Random catalog transactions with hostile values in every column the constraints let it set."""

    def __init__(self, conn: psycopg.Connection, seed: int) -> None:
        self.conn = conn
        self.rng = random.Random(seed)
        self.cols = _columns(conn)
        self.n = 0
        self.rows: dict[str, list[str]] = {t: [] for t in PUBLISHED_TABLES}
        self.versions: dict[str, int] = {}

    def _value(self, table: str, name: str, typ: str) -> Any:
        rng = self.rng
        if name in FIXED and table in FIXED[name]:
            return rng.choice(FIXED[name][table])
        if rng.random() < 0.08:
            return None
        if typ in ("text", "character varying"):
            text = rng.choice(HOSTILE_TEXT)
            if rng.random() < 0.1:  # TOAST: incompressible, > 2 kB
                text += "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(3000))
            return f"{text}-{self.n}"  # (unique constraints)
        if typ in ("jsonb", "json"):
            doc = rng.choice(HOSTILE_JSON)
            if rng.random() < 0.1:
                doc = json.dumps({"blob": "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(3000))})
            return doc
        if typ.startswith("timestamp"):
            return rng.choice(HOSTILE_TIMES)
        if typ == "integer":
            return rng.choice(INTS)
        if typ == "bigint":
            return rng.choice(BIGINTS)
        if typ == "boolean":
            return rng.random() < 0.5
        return None

    def _row(self, table: str, fixed: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for name, typ, settable in self.cols[table]:
            if name in fixed:
                row[name] = fixed[name]
            elif settable or (name in FIXED and table in FIXED[name]):
                value = self._value(table, name, typ)
                if value is not None:
                    row[name] = value
        return row

    def _insert(self, table: str, fixed: dict[str, Any]) -> None:
        row = self._row(table, fixed)
        # NOT NULL text/jsonb without a value: let defaults serve (the generator left it out)
        names = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join(["%s"] * len(row))
        try:
            with (
                self.conn.transaction()
            ):  # a savepoint: a constraint we did not foresee rolls back this row only
                self.conn.execute(
                    f'INSERT INTO {SCHEMA}."{table}" ({names}) VALUES ({marks})', list(row.values())
                )
        except REFUSED:
            return
        self.rows[table].append(row["id"])

    def _update(self, table: str) -> None:
        if not self.rows[table]:
            return
        rid = self.rng.choice(self.rows[table])
        # another column than the large ones: a TOASTed value stays unchanged
        candidates = [
            (n, t)
            for n, t, s in self.cols[table]
            if s and n != "id" and t in ("integer", "bigint", "boolean")
        ]
        candidates += [(n, t) for n, t, s in self.cols[table] if s and t.startswith("timestamp")]
        name, typ = self.rng.choice(candidates or [("id", "text")])
        if name == "id":
            return
        value = self._value(table, name, typ)
        with self.conn.transaction():
            try:
                self.conn.execute(f'UPDATE {SCHEMA}."{table}" SET "{name}" = %s WHERE id = %s', [value, rid])
            except REFUSED:
                raise psycopg.Rollback() from None

    def _delete(self, table: str) -> None:
        if self.rows[table]:
            rid = self.rows[table].pop(self.rng.randrange(len(self.rows[table])))
            with self.conn.transaction():
                try:
                    self.conn.execute(f'DELETE FROM {SCHEMA}."{table}" WHERE id = %s', [rid])
                except REFUSED:
                    self.rows[table].append(rid)
                    raise psycopg.Rollback() from None

    def step(self) -> None:
        rng = self.rng
        self.n += 1
        n = self.n
        # open the transaction first: every conn.transaction() below is then a savepoint inside it
        self.conn.execute("SELECT 1")
        for _ in range(rng.randint(1, 6)):
            choice = rng.random()
            if choice < 0.15 or not self.rows["datasets"]:
                st = f"st-{n}-{rng.randrange(10**6)}"
                self._insert("storage_targets", {"id": st})
                ds = f"ds-{n}-{rng.randrange(10**6)}"
                self._insert("datasets", {"id": ds, "slug": f"slug-{ds}", "default_storage_target_id": None})
            elif choice < 0.25:
                ds = rng.choice(self.rows["datasets"])
                version = self.versions[ds] = self.versions.get(ds, 0) + 1
                self._insert(
                    "dataset_schema_versions",
                    {"id": f"sv-{n}-{rng.randrange(10**6)}", "dataset_id": ds, "version": version},
                )
                self._insert(
                    "dataset_manifests",
                    {"id": f"dm-{n}-{rng.randrange(10**6)}", "dataset_id": ds, "version": version},
                )
            elif choice < 0.55 and self.rows["dataset_manifests"] and self.rows["storage_targets"]:
                dm = rng.choice(self.rows["dataset_manifests"])
                (ds,) = self.conn.execute(
                    f"SELECT dataset_id FROM {SCHEMA}.dataset_manifests WHERE id = %s", [dm]
                ).fetchone() or (None,)
                if ds is None:
                    continue
                self._insert(
                    "dataset_partitions",
                    {
                        "id": f"p-{n}-{rng.randrange(10**6)}",
                        "dataset_id": ds,
                        "manifest_id": dm,
                        "storage_target_id": rng.choice(self.rows["storage_targets"]),
                        "start_time": rng.choice(HOSTILE_TIMES),
                        "end_time": "infinity",
                    },
                )
            elif choice < 0.8:
                self._update(rng.choice(PUBLISHED_TABLES))
            else:
                self._delete(rng.choice(["dataset_partitions", "dataset_schema_versions"]))


def run_workload(dsn: str, seed: int, transactions: int) -> int:
    """``transactions`` committed transactions (plus aborted ones and rolled-back savepoints)."""
    committed = 0
    with psycopg.connect(dsn) as conn:
        gen = Generator(conn, seed)
        while committed < transactions:
            gen.step()
            if gen.rng.random() < 0.1:
                conn.rollback()  # an aborted transaction: neither decoder may show it
                for table in PUBLISHED_TABLES:  # forget ids inserted by it
                    gen.rows[table] = [
                        r
                        for r in gen.rows[table]
                        if conn.execute(f'SELECT 1 FROM {SCHEMA}."{table}" WHERE id = %s', [r]).fetchone()
                    ]
                conn.rollback()
            else:
                conn.commit()
                committed += 1
    return committed


# ------------------------------------------------------------------------------------------------ meaning
def json_meaning(value: Any) -> Any:
    """Numbers by exact value, containers recursively."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, int | Decimal):
        return Decimal(value)
    if isinstance(value, list):
        return [json_meaning(v) for v in value]
    return {k: json_meaning(v) for k, v in value.items()}


def _exact_json(text: str) -> Any:  # independent of walduck's loader: the standard library, Decimal numbers
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def _walduck_instant(text: str) -> Any:
    micros = instant_micros(text)  # walduck's documented encoding, decoded
    return text if micros is None else micros


class Wal2Json:
    """A wal2json slot's committed transactions: xid -> {commit_lsn, changes: [(table, op, lsn, new, old)]}."""

    def __init__(self, dsn: str, slot: str) -> None:
        self.dsn, self.slot = dsn, slot

    def create(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", [self.slot])

    def drop(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", [self.slot])

    def read(self) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
        tables = ",".join(f"{SCHEMA}.{t}" for t in PUBLISHED_TABLES)
        txs: dict[int, dict[str, Any]] = {}
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute("SET DateStyle = ISO")
            rows = conn.execute(
                "SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL, 'format-version', '2',"
                " 'include-xids', '1', 'include-lsn', '1', 'include-types', '1', 'add-tables', %s)",
                [self.slot, tables],
            ).fetchall()
            current: dict[str, Any] | None = None
            times: set[str] = set()
            for (data,) in rows:
                doc = json.loads(data, parse_float=Decimal, parse_int=int)
                action = doc["action"]
                if action == "B":
                    current = {"xid": doc["xid"], "changes": []}
                elif action == "C":
                    assert current is not None
                    current["commit_lsn"] = doc.get("lsn")
                    if current["changes"]:
                        txs[current["xid"]] = current
                    current = None
                elif action in ("I", "U", "D"):
                    assert current is not None
                    new = {c["name"]: (c["type"], c["value"]) for c in doc.get("columns", [])}
                    old = {c["name"]: (c["type"], c["value"]) for c in doc.get("identity", [])}
                    for _, (typ, value) in (new | old).items():
                        if typ.startswith("timestamp") and value is not None:
                            times.add(value)
                    op = {"I": "insert", "U": "update", "D": "delete"}[action]
                    current["changes"].append((doc["table"], op, doc.get("lsn"), new, old))
            # PostgreSQL computes each instant from wal2json's text: the independent reference
            epochs = dict(
                conn.execute(
                    "SELECT t, extract(epoch FROM t::timestamptz)::text FROM unnest(%s::text[]) t",
                    [sorted(times)],
                ).fetchall()
            )
        return txs, epochs


def _pg_instant(text: str, epochs: dict[str, str]) -> Any:
    epoch = epochs[text]
    if epoch in ("Infinity", "-Infinity"):
        return "infinity" if epoch == "Infinity" else "-infinity"
    return int(Decimal(epoch) * 1_000_000)


def _w2j_value(typ: str, value: Any, epochs: dict[str, str]) -> Any:
    if value is None:
        return None
    if typ in ("jsonb", "json"):
        return json_meaning(_exact_json(value))
    if typ.startswith("timestamp"):
        return _pg_instant(value, epochs)
    return value


def _walduck_value(typ: str, value: Any) -> Any:
    if value is None:
        return None
    if typ in ("jsonb", "json"):
        return json_meaning(value)
    if typ.startswith("timestamp"):
        return _walduck_instant(value)
    return value


def _lsn(text: str | None) -> int | None:
    if text is None:
        return None
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def compare(
    walduck: dict[int, list[ChangeRecord]], w2j: dict[int, dict[str, Any]], epochs: dict[str, str]
) -> tuple[int, list[str]]:
    """(changes compared, mismatches described)."""
    problems: list[str] = []
    compared = 0
    for xid in sorted(set(walduck) | set(w2j)):
        ours, theirs = walduck.get(xid, []), w2j.get(xid, {}).get("changes", [])
        if len(ours) != len(theirs):
            problems.append(f"xid {xid}: {len(ours)} walduck changes, {len(theirs)} wal2json")
            continue
        commit = _lsn(w2j[xid].get("commit_lsn"))
        for rec, (table, op, lsn, new, old) in zip(ours, theirs, strict=True):
            compared += 1
            where = f"xid {xid} {table} {op} {rec.key}"
            if (rec.table, str(rec.op)) != (table, op):
                problems.append(f"{where}: walduck has {rec.table} {rec.op}")
                continue
            if lsn is not None and rec.lsn != _lsn(lsn):
                problems.append(f"{where}: lsn {rec.lsn} != {lsn}")
            if commit is not None and rec.commit_lsn != commit:
                problems.append(f"{where}: commit_lsn {rec.commit_lsn} != {commit}")
            sides = [("new", rec.new, new)] if op != "delete" else []
            sides += [("old", rec.old, old)] if op != "insert" else []
            for side, got, want in sides:
                got = got or {}
                for column, (typ, value) in want.items():
                    expect = _w2j_value(typ, value, epochs)
                    actual = _walduck_value(typ, got.get(column)) if column in got else "<missing>"
                    if actual != expect:
                        problems.append(
                            f"{where} {side}.{column}: walduck {actual!r:.120} != wal2json {expect!r:.120}"
                        )
                if side == "new" and op == "update":
                    # wal2json leaves unchanged TOASTed values out of the new tuple: they equal the old ones
                    for column in set(old) - set(want):
                        typ, value = old[column]
                        if _walduck_value(typ, got.get(column)) != _w2j_value(typ, value, epochs):
                            problems.append(f"{where} new.{column} (unchanged TOAST) differs from old")
    return compared, problems


def walduck_transactions(by_partition: dict[int, list[ChangeRecord]]) -> dict[int, list[ChangeRecord]]:
    seen: set[tuple[Any, ...]] = set()
    out: dict[int, list[ChangeRecord]] = {}
    for records in by_partition.values():
        for r in records:
            if r.kind is not Kind.CHANGE or r.source is not Source.STREAM or r.xid is None:
                continue
            ident = (r.commit_lsn, r.lsn, r.table, str(r.op), orjson.dumps(r.key, default=str))
            if ident in seen:  # broadcast rows (storage targets) are on every partition
                continue
            seen.add(ident)
            out.setdefault(r.xid, []).append(r)
    for records in out.values():
        records.sort(key=lambda r: (r.lsn, r.tx_index))
    return out


def _float64(value: Any) -> Any:
    """The old bug: jsonb numbers through float64."""
    return json.loads(dumps_exact(value), parse_float=float, parse_int=float)


async def test_walduck_matches_wal2json_on_hostile_transactions(catalog_dsn: str, fresh_topics) -> None:
    settings = await fresh_topics(partitions=3, pg_dsn=catalog_dsn)
    w2j = Wal2Json(catalog_dsn, f"w2j_{settings.slot_name}")
    async with running_connector(settings, ConnectorSettings(status_interval=0.2, heartbeat_interval=0)):
        await wait_snapshot_done(catalog_dsn, settings.slot_name)
        w2j.create()
        try:
            committed = run_workload(catalog_dsn, seed=16, transactions=TRANSACTIONS)
            await wait_confirmed(catalog_dsn, settings.slot_name, current_lsn(catalog_dsn))
            theirs, epochs = w2j.read()
        finally:
            w2j.drop()
    ours = walduck_transactions(await read_changes(settings.kafka_bootstrap, settings.changes_topic))
    compared, problems = compare(ours, theirs, epochs)
    print(
        f"\ndifferential vs wal2json: {committed} transactions committed, {len(theirs)} with catalog changes"
        f" ({len(ours)} in walduck's stream), {compared} changes compared, {len(problems)} mismatches"
    )
    assert problems == [], "\n".join(problems[:20])
    assert committed == TRANSACTIONS and len(theirs) >= TRANSACTIONS * 3 // 4 and compared >= 2 * TRANSACTIONS
    assert sum(1 for t in theirs.values() for c in t["changes"] if c[1] == "update") >= 5
    assert sum(1 for t in theirs.values() for c in t["changes"] if c[1] == "delete") >= 3

    # planted faults: the comparison must see each of them
    faults = {}
    jsonb = next(
        (r, c)
        for rs in ours.values()
        for r in rs
        if r.new
        for c, v in r.new.items()
        if isinstance(v, dict) and any(isinstance(x, Decimal) for x in v.values())
    )
    planted = copy.deepcopy(ours)
    rec = next(r for r in planted[jsonb[0].xid] if r.lsn == jsonb[0].lsn)
    rec.new[jsonb[1]] = _float64(rec.new[jsonb[1]])
    faults["jsonb through float64"] = planted
    planted = copy.deepcopy(ours)
    rec = next(
        r
        for rs in planted.values()
        for r in rs
        if r.new
        and isinstance(r.new.get("start_time"), str)
        and instant_micros(r.new["start_time"]) is not None
    )
    rec.new["start_time"] = format_micros(instant_micros(rec.new["start_time"]) + 1)
    faults["timestamp 1 us off"] = planted
    planted = copy.deepcopy(ours)
    xid = next(x for x, rs in planted.items() if len(rs) > 1)
    planted[xid].pop()
    faults["lost change"] = planted
    for name, data in faults.items():
        _, found = compare(data, theirs, epochs)
        print(f"planted fault {name!r}: {len(found)} mismatches")
        assert found, f"the differential test missed the planted fault {name!r}"
