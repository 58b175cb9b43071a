"""verify's comparison: every kind of drift is named by dataset, shard and partition."""

from __future__ import annotations

from sinks.verify import Drift, compare, partitions_of_snapshot


def test_compare_names_each_drift():
    pg = {("ds-a", "2024-01-01"): {"p1": ("a/p1.parquet", 10), "p2": ("a/p2.parquet", 5)}}
    ctx = {
        ("ds-a", "2024-01-01"): {"p1": ("a/p1.parquet", 11), "p3": ("a/p3.parquet", 5)},
        ("ds-b", "root"): {"q": ("b/q.parquet", 1)},
    }
    assert compare(pg, ctx) == [
        Drift("ds-a", "2024-01-01", "p1", "differs"),
        Drift("ds-a", "2024-01-01", "p2", "missing"),
        Drift("ds-a", "2024-01-01", "p3", "extra"),
        Drift("ds-b", "root", "q", "extra"),
    ]
    assert compare(pg, pg) == []
    assert "dataset ds-b shard root partition q" in str(Drift("ds-b", "root", "q", "extra"))


def test_partitions_of_service_snapshot():
    snap = {
        "datasets": [
            {
                "datasetId": "ds-a",
                "partitions": [
                    {
                        "datasetId": "ds-a",
                        "manifestShard": "s",
                        "partitionId": "p",
                        "filePath": "f",
                        "rowCount": 3,
                    }
                ],
            }
        ]
    }
    assert partitions_of_snapshot(snap) == {("ds-a", "s"): {"p": ("f", 3)}}
