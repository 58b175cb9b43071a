"""Pure helpers of the workload generator: path sanitising, ids, checksums, weighted choice."""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter

import pytest

from stack.workload.naming import (
    IdFactory,
    choose_weighted,
    ingestion_signature,
    partition_file_path,
    sanitize_segment,
    schema_checksum,
)
from walduck.locations import partition_location

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Observatory", "observatory"),
        ("a b/c", "a_b_c"),
        ("ok-._", "ok-._"),
        ("Ünïcode:1", "_n_code_1"),
        ("2024-01-01T00:00:00.000Z", "2024-01-01t00_00_00.000z"),
    ],
)
def test_sanitize_segment(raw: str, expected: str) -> None:
    assert sanitize_segment(raw) == expected


def test_partition_file_path_sorts_keys_and_sanitises_every_segment() -> None:
    path = partition_file_path("My Data.Set", {"window": "2024-01-01", "Dataset": "X/Y"}, "part-abc")
    assert path == "my_data.set/dataset=x_y/window=2024-01-01/part-abc.parquet"


def test_partition_file_path_without_keys() -> None:
    assert partition_file_path("s", {}, "part-1") == "s/part-1.parquet"


def test_id_factory_is_deterministic_prefixed_uuid4() -> None:
    a, b = IdFactory(7), IdFactory(7)
    seq_a = [a.new(k) for k in ("dataset", "schema_version", "manifest", "partition", "ingestion_batch")]
    seq_b = [b.new(k) for k in ("dataset", "schema_version", "manifest", "partition", "ingestion_batch")]
    assert seq_a == seq_b
    prefixes = [s.split("-", 1)[0] for s in seq_a]
    assert prefixes == ["ds", "dsv", "dm", "part", "ing"]
    assert all(UUID4.match(s.split("-", 1)[1]) for s in seq_a)
    assert len(set(seq_a)) == len(seq_a)


def test_id_factory_seed_and_salt_change_the_sequence() -> None:
    base = IdFactory(7).new("partition")
    assert IdFactory(8).new("partition") != base
    assert IdFactory(7, "3:10").new("partition") != base


def test_schema_checksum_is_sha1_of_compact_json_and_order_sensitive() -> None:
    fields = [
        {"name": "timestamp", "type": "timestamp"},
        {"name": "value", "type": "double", "nullable": True},
    ]
    expected = hashlib.sha1(
        b'[{"name":"timestamp","type":"timestamp"},{"name":"value","type":"double"}]'
    ).hexdigest()
    assert schema_checksum(fields) == expected
    assert schema_checksum(list(reversed(fields))) != expected


def test_ingestion_signature_ignores_partition_key_order() -> None:
    args = ("ds-1", "slug", "abc", "2024-01-01T00:00:00+00:00", "2024-01-01T01:00:00+00:00", "rh")
    one = ingestion_signature(args[0], args[1], args[2], {"a": "1", "b": "2"}, *args[3:])
    two = ingestion_signature(args[0], args[1], args[2], {"b": "2", "a": "1"}, *args[3:])
    assert one == two and len(one) == 64
    assert ingestion_signature(args[0], args[1], "other", {"a": "1", "b": "2"}, *args[3:]) != one


def test_choose_weighted_never_picks_zero_weights_and_follows_weights() -> None:
    rng = random.Random(1)
    counts = Counter(choose_weighted(rng, {"a": 0.9, "b": 0.1, "c": 0.0}) for _ in range(5000))
    assert counts["c"] == 0
    assert 4200 < counts["a"] < 4800
    with pytest.raises(ValueError):
        choose_weighted(rng, {"a": 0.0})


def test_partition_location_rules() -> None:
    local = {"kind": "local", "config": {"root": "/data/ts"}}
    assert partition_location(local, "s/k=v/p.parquet", "/fallback") == "/data/ts/s/k=v/p.parquet"
    assert (
        partition_location({"kind": "local", "config": {}}, "s/p.parquet", "/fallback")
        == "/fallback/s/p.parquet"
    )
    assert (
        partition_location({"kind": "s3", "config": {"bucket": "b"}}, "x/p.parquet", "/")
        == "s3://b/x/p.parquet"
    )
    assert (
        partition_location({"kind": "gcs", "config": {"bucket": "g"}}, "p.parquet", "/") == "gs://g/p.parquet"
    )
    azure = {"kind": "azure_blob", "config": {"container": "c", "accountName": "acct"}}
    assert partition_location(azure, "p.parquet", "/") == "azure://acct.blob.core.windows.net/c/p.parquet"
    # one rule with the context's (walduck/locations.py): unknown kinds read as local, absolute paths pass
    assert partition_location({"kind": "ftp", "config": {}}, "p", "/r") == "/r/p"
    assert partition_location(local, "/abs/p.parquet", "/fallback") == "/abs/p.parquet"
