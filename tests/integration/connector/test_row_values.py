"""Row values survive PostgreSQL -> pgoutput -> row encoder -> Kafka exactly, with either row encoder.

The stream's inserts take the row encoder (compiled or pure Python, connectors/rowjson.py); these rows are
chosen to hit every branch of the compiled one on the walsender's real output: text that needs JSON escapes
or is not ASCII, JSON with unicode and escapes, NULLs, 64-bit integers, timestamps with and without fractional
seconds, and an UPDATE/DELETE (careful decoder) for contrast. The folded Kafka stream must equal the catalog.
"""

from __future__ import annotations

import psycopg
import pytest
from connector_helpers import (  # type: ignore[import-not-found]
    assert_same_catalog,
    catalog_rows,
    current_lsn,
    fold,
    read_changes,
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
