"""An oversize stub (a change whose consumed values alone exceed the size limit) cannot travel; the compactor
marks its dataset's delta ``resync`` so contexts rebuild that dataset from PostgreSQL (issue 16)."""

from __future__ import annotations

from pipeline.compaction import Compactor
from support.catalog_model import CatalogModel
from walduck.deltas import Delta
from walduck.records import OVERSIZE_REASON, SharePosition, Source


def test_a_stub_of_a_dataset_makes_its_delta_ask_for_a_rebuild() -> None:
    model = CatalogModel(seed=3)
    ds = model.create_dataset()
    comp = Compactor(0)
    for offset, rec in enumerate(model.records):
        comp.feed(rec, offset)
    comp.flush()
    n = len(model.records)
    commit_lsn = model.records[-1].commit_lsn + 0x1000
    comp.skip(n, SharePosition(ds, Source.STREAM, commit_lsn, 9999, 0, 1), resync="oversize_record")
    (delta,) = comp.flush()
    assert (delta.dataset_id, delta.resync, delta.lsn_to) == (ds, "oversize_record", commit_lsn)
    assert Delta.from_bytes(delta.to_bytes()).resync == "oversize_record"
    # the state is unchanged by it, and a later window of the dataset carries no resync
    model.append(ds)
    for offset, rec in enumerate(model.records[n:], start=n + 1):
        comp.feed(rec, offset)
    assert all(d.resync is None for d in comp.flush())


def test_a_skip_without_resync_stays_silent() -> None:
    comp = Compactor(0)
    comp.skip(0, SharePosition("ds-1", Source.STREAM, 100, 1, 0, 1))
    assert comp.flush() == []
    assert OVERSIZE_REASON == "oversize record"
