"""Row values survive PostgreSQL -> pgoutput -> row encoder -> Kafka exactly, with either row encoder.

The stream's inserts take the row encoder (compiled or pure Python, connectors/rowjson.py); these rows are
chosen to hit every branch of the compiled one on the walsender's real output: text that needs JSON escapes
or is not ASCII, JSON with unicode and escapes, NULLs, 64-bit integers, timestamps with and without fractional
seconds, and an UPDATE/DELETE (careful decoder) for contrast. The folded Kafka stream must equal the catalog.
"""

from __future__ import annotations

import orjson
import psycopg
import pytest
from connector_helpers import (  # type: ignore[import-not-found]
    assert_same_catalog,
    catalog_rows,
    current_lsn,
    fold,
    read_changes,
    read_topic,
    running_connector,
    wait_confirmed,
    wait_snapshot_done,
)
from psycopg.types.json import Jsonb

from connectors.settings import ConnectorSettings
from walduck.records import Kind, Op, Source

pytestmark = pytest.mark.integration

ODD_TEXT = [
    'quote " and backslash \\ and tab \t and newline \n',
    "ünïcødé ✓ 日本語 🦆",
    "plain-ascii_path/with spaces and 'single quotes'",
    "",
]


def _write_hostile_rows(dsn: str) -> list[str]:
    ids = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO timestore.storage_targets (id, name, kind, description, config)"
            " VALUES ('st-odd', 'odd \"target\" ✓', 'local', NULL, %s)",
            [Jsonb({"root": "/tmp/ödd", "quote": 'a"b', "nested": {"n": [1, 2.5, None, True]}})],
        )
        conn.execute(
            "INSERT INTO timestore.datasets (id, slug, name, description, metadata)"
            " VALUES ('ds-odd', 'odd-slug', %s, %s, %s)",
            [ODD_TEXT[1], ODD_TEXT[0], Jsonb({"iam": {"readScopes": ["a\\b", "ü"]}, "emoji": "🦆"})],
        )
        conn.execute(
            "INSERT INTO timestore.dataset_manifests (id, dataset_id, version, status, manifest_shard,"
            " total_rows, total_bytes, created_by, published_at)"
            " VALUES ('dm-odd', 'ds-odd', 1, 'published', '2024-01-13', 9223372036854775807, 0, %s,"
            " '2024-01-13 18:00:00.000001+00')",
            [ODD_TEXT[2]],
        )
        for i, (text, start) in enumerate(
            zip(
                ODD_TEXT,
                [
                    "2024-01-13 18:00:00+00",
                    "2024-01-13 18:00:00.5+00",
                    "2024-01-13 18:00:00.123456+00",
                    "1999-12-31 23:59:59.999999+00",
                ],
                strict=True,
            )
        ):
            pid = f"part-odd-{i}"
            ids.append(pid)
            conn.execute(
                "INSERT INTO timestore.dataset_partitions (id, dataset_id, manifest_id, partition_key,"
                " storage_target_id, file_format, file_path, file_size_bytes, row_count, start_time, end_time,"
                " checksum, metadata, manifest_shard)"
                " VALUES (%s, 'ds-odd', 'dm-odd', %s, 'st-odd', 'parquet', %s, %s, %s, %s, %s, %s, %s,"
                " '2024-01-13')",
                [
                    pid,
                    Jsonb({"window": "2024-01-13", "text": text}),
                    f"ds-odd/{text}/part-{i}.parquet",
                    [None, -1, 0, 2**62][i],
                    [0, 1, None, 10**15][i],
                    start,
                    "2024-01-14 00:00:00+00",
                    None if i % 2 else text,
                    Jsonb({"i": i, "s": text}),
                ],
            )
        conn.execute("UPDATE timestore.dataset_partitions SET row_count = 7 WHERE id = 'part-odd-1'")
        conn.execute("DELETE FROM timestore.dataset_partitions WHERE id = 'part-odd-3'")
    return ids


@pytest.mark.parametrize("encoder", ["native", "python"])
async def test_hostile_values_arrive_exactly(catalog_dsn: str, fresh_topics, encoder: str) -> None:
    settings = await fresh_topics(partitions=2, pg_dsn=catalog_dsn)
    cs = ConnectorSettings(status_interval=0.2, heartbeat_interval=0, row_encoder=encoder)
    async with running_connector(settings, cs):
        await wait_snapshot_done(catalog_dsn, settings.slot_name)
        ids = _write_hostile_rows(catalog_dsn)
        await wait_confirmed(catalog_dsn, settings.slot_name, current_lsn(catalog_dsn))
    by_partition = await read_changes(settings.kafka_bootstrap, settings.changes_topic)
    inserted = {
        (r.key or {}).get("id")
        for recs in by_partition.values()
        for r in recs
        if r.kind is Kind.CHANGE and r.source is Source.STREAM and r.op is Op.INSERT
    }
    assert set(ids) <= inserted, "the hostile partitions came from the stream"
    assert_same_catalog(fold(by_partition), catalog_rows(catalog_dsn))


# issue 16, findings 1-3: values float64 or ISO 8601 cannot hold, on insert, update, delete and snapshot
EXACT_STATS = (
    '{"big": 123456789012345678901234567890, "pi": 3.141592653589793238462643383279502884197,'
    ' "cents": 0.10000000000000000000001, "u64over": 18446744073709551616, "huge": 1e400}'
)
ODD_TIMES = [
    ("infinity", "infinity"),
    ("-infinity", "-infinity"),
    ("10000-01-01 00:00:00+00", "+10000-01-01T00:00:00+00:00"),
    ("294276-12-31 23:59:59+00", "+294276-12-31T23:59:59+00:00"),
    ("0044-03-15 12:00:00+00 BC", "-0043-03-15T12:00:00+00:00"),
    ("0001-01-01 00:30:00+01", "0000-12-31T23:30:00+00:00"),
]


def _write_exact_rows(dsn: str, prefix: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO timestore.storage_targets (id, name, kind) VALUES (%s, %s, 'local')"
            " ON CONFLICT DO NOTHING",
            ["st-x", "x"],
        )
        conn.execute(
            "INSERT INTO timestore.datasets (id, slug, name, metadata, created_at) VALUES (%s, %s, %s, %s, %s)",
            [f"{prefix}ds", f"{prefix}ds", "x", EXACT_STATS, "infinity"],
        )
        conn.execute(
            "INSERT INTO timestore.dataset_manifests (id, dataset_id, version, status)"
            " VALUES (%s, %s, 1, 'published')",
            [f"{prefix}dm", f"{prefix}ds"],
        )
        for i, (start, _) in enumerate(ODD_TIMES):
            conn.execute(
                "INSERT INTO timestore.dataset_partitions (id, dataset_id, manifest_id, partition_key,"
                " storage_target_id, file_format, file_path, start_time, end_time, column_statistics)"
                " VALUES (%s, %s, %s, %s, 'st-x', 'parquet', %s, %s, %s, %s)",
                [
                    f"{prefix}p{i}",
                    f"{prefix}ds",
                    f"{prefix}dm",
                    EXACT_STATS,
                    f"{prefix}/{i}.parquet",
                    start,
                    "infinity",  # (end_time >= start_time)
                    EXACT_STATS,
                ],
            )


async def test_exact_values_on_every_path(catalog_dsn: str, fresh_topics) -> None:
    from decimal import Decimal

    settings = await fresh_topics(partitions=2, pg_dsn=catalog_dsn)
    _write_exact_rows(catalog_dsn, "snap-")  # read by the snapshot
    async with running_connector(settings, ConnectorSettings(status_interval=0.2, heartbeat_interval=0)):
        await wait_snapshot_done(catalog_dsn, settings.slot_name)
        _write_exact_rows(catalog_dsn, "wal-")  # inserts
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            for prefix in ("snap-", "wal-"):  # updates of another column, then deletes (careful path)
                conn.execute(
                    "UPDATE timestore.dataset_partitions SET row_count = 7 WHERE dataset_id = %s",
                    [f"{prefix}ds"],
                )
                conn.execute(
                    "UPDATE timestore.datasets SET status = 'inactive' WHERE id = %s", [f"{prefix}ds"]
                )
                conn.execute("DELETE FROM timestore.dataset_partitions WHERE id = %s", [f"{prefix}p0"])
        await wait_confirmed(catalog_dsn, settings.slot_name, current_lsn(catalog_dsn))
    by_partition = await read_changes(settings.kafka_bootstrap, settings.changes_topic)
    records = [r for recs in by_partition.values() for r in recs if r.kind is Kind.CHANGE]
    want = {
        "big": 123456789012345678901234567890,
        "pi": Decimal("3.141592653589793238462643383279502884197"),
        "cents": Decimal("0.10000000000000000000001"),
        "u64over": 18446744073709551616,
        "huge": Decimal("1e400"),
    }
    seen = set()
    for r in records:
        if r.table != "dataset_partitions":
            continue
        for side in (r.new, r.old):
            if side:
                assert side["column_statistics"] == want and side["partition_key"] == want, (r.op, r.key)
                i = int(side["id"][-1])
                assert (side["start_time"], side["end_time"]) == (ODD_TIMES[i][1], "infinity")
        seen.add((r.source, r.op))
    assert seen == {
        (Source.SNAPSHOT, Op.READ),
        (Source.STREAM, Op.INSERT),
        (Source.STREAM, Op.UPDATE),
        (Source.STREAM, Op.DELETE),
    }
    assert_same_catalog(fold(by_partition), catalog_rows(catalog_dsn))


async def test_update_of_a_row_with_a_large_toasted_value_fits_the_limit(
    catalog_dsn: str, fresh_topics
) -> None:
    """Issue 16, finding 4: a 2.2 MB dataset name, then a status update: REPLICA IDENTITY FULL sends the name
    in old and new (4.4 MB). With a 4 MiB limit the record carries it once (old_same_as_new) and decodes to
    the complete change; the compactor's delta says inactive."""
    from pipeline.compaction import Compactor
    from walduck.records import ChangeRecord

    limit = 4 * 1024 * 1024
    settings = (await fresh_topics(partitions=2, pg_dsn=catalog_dsn)).model_copy(
        update={"max_message_bytes": limit}
    )
    name = "n" * 2_200_000
    async with running_connector(settings, ConnectorSettings(status_interval=0.2, heartbeat_interval=0)):
        await wait_snapshot_done(catalog_dsn, settings.slot_name)
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO timestore.datasets (id, slug, name) VALUES ('ds-big', 'ds-big', %s)", [name]
            )
            conn.execute("UPDATE timestore.datasets SET status = 'inactive' WHERE id = 'ds-big'")
        await wait_confirmed(catalog_dsn, settings.slot_name, current_lsn(catalog_dsn))
    raw = [
        v
        for msgs in (await read_topic(settings.kafka_bootstrap, settings.changes_topic)).values()
        for _, v in msgs
        if b'"ds-big"' in v[:2000] or b'"op":"update"' in v[:400]
    ]
    updates = [ChangeRecord.from_bytes(v, limit) for v in raw]
    updates = [r for r in updates if r.op is Op.UPDATE and r.dataset_id == "ds-big"]
    assert len(updates) == 1
    (upd,) = updates
    assert upd.old_same_as_new and "name" in upd.old_same_as_new
    assert upd.old["name"] == upd.new["name"] == name
    assert (upd.old["status"], upd.new["status"]) == ("active", "inactive")
    comp = Compactor(0)
    comp.feed(upd, 0)
    (delta,) = comp.flush()
    assert delta.dataset is not None and delta.dataset["status"] == "inactive"


async def test_a_partition_whose_metadata_alone_is_over_the_limit_still_arrives(
    catalog_dsn: str, fresh_topics
) -> None:
    """Issue 16's last gap: a partition row whose *consumed* column ``metadata`` carries 5 MB of statistics
    (over a 4 MiB limit) used to become a stub the compactor dead-lettered, so every context missed the file.
    The size policy keeps the keys consumers read (``projected_json``): the compactor's entry is exact."""
    from pipeline.compaction import Compactor
    from walduck.records import ChangeRecord

    limit = 4 * 1024 * 1024
    settings = (await fresh_topics(partitions=2, pg_dsn=catalog_dsn)).model_copy(
        update={"max_message_bytes": limit}
    )
    meta = {"schemaVersionId": "sv-big", "tableName": "metrics", "columnStatistics": "s" * 5_000_000}
    async with running_connector(settings, ConnectorSettings(status_interval=0.2, heartbeat_interval=0)):
        await wait_snapshot_done(catalog_dsn, settings.slot_name)
        with psycopg.connect(catalog_dsn, autocommit=False) as conn:
            conn.execute(
                "INSERT INTO timestore.storage_targets (id, name, kind) VALUES ('st-bm', 'bm', 'local')"
            )
            conn.execute("INSERT INTO timestore.datasets (id, slug, name) VALUES ('ds-bm', 'ds-bm', 'bm')")
            conn.execute(
                "INSERT INTO timestore.dataset_manifests (id, dataset_id, version, status, manifest_shard)"
                " VALUES ('dm-bm', 'ds-bm', 1, 'published', '2024-01-13')"
            )
            conn.execute(
                "INSERT INTO timestore.dataset_partitions (id, dataset_id, manifest_id, storage_target_id,"
                " partition_key, file_format, file_path, start_time, end_time, metadata, manifest_shard)"
                " VALUES ('p-bm', 'ds-bm', 'dm-bm', 'st-bm', '{}', 'parquet', 'bm/p.parquet',"
                " '2024-01-13 00:00+00', '2024-01-13 01:00+00', %s, '2024-01-13')",
                [orjson.dumps(meta).decode()],
            )
            conn.commit()
        await wait_confirmed(catalog_dsn, settings.slot_name, current_lsn(catalog_dsn))
    records = [
        ChangeRecord.from_bytes(v, limit)
        for msgs in (await read_topic(settings.kafka_bootstrap, settings.changes_topic)).values()
        for _, v in msgs
        if b'"ds-bm"' in v[:4000]
    ]
    records = sorted((r for r in records if r.kind.value == "change"), key=lambda r: r.lsn)
    (part,) = [r for r in records if r.table == "dataset_partitions"]
    from walduck.catalog_tables import CONSUMED_COLUMNS, PARTITIONS

    # the unread columns went first (strategy 2), then metadata kept the keys consumers read (strategy 3)
    assert part.omitted is not None and "metadata.*" in part.omitted
    assert not (set(part.omitted) - {"metadata.*"}) & CONSUMED_COLUMNS[PARTITIONS]
    assert part.new is not None and part.new["metadata"] == {
        "schemaVersionId": "sv-big",
        "tableName": "metrics",
    }
    comp = Compactor(0)
    for offset, rec in enumerate(r for r in records if r.dataset_id == "ds-bm"):
        comp.feed(rec, offset)
    deltas = comp.flush()
    entries = [e for d in deltas for s in d.shards.values() for e in s.upserts]
    assert [(e["id"], e["schema_version_id"], e["table_name"]) for e in entries] == [
        ("p-bm", "sv-big", "metrics")
    ]
