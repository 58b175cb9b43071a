"""Catalog histories run through a compactor: the set-up the compaction and snapshot property tests share.

:data:`OPS` and :func:`random_history` build a random :class:`~support.catalog_model.CatalogModel` history,
:func:`draw_flush_points` the offsets after which a window is flushed, and :func:`feed_windows` feeds
records to a compactor, flushing at those points and once at the end, as the runner seals windows.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from hypothesis import strategies as st

from pipeline.compaction import Compactor
from support.catalog_model import OPERATIONS, CatalogModel
from walduck.deltas import Delta
from walduck.records import ChangeRecord

OPS = st.lists(st.sampled_from(OPERATIONS), min_size=1, max_size=60)


def random_history(seed: int, ops: list[str]) -> CatalogModel:
    """A model of ``seed % 4`` new datasets, then ``ops``."""
    model = CatalogModel(seed=seed)
    model.run(["create_dataset"] * (seed % 4) + ops)
    return model


def draw_flush_points(data: st.DataObject, records: int) -> set[int]:
    """Random offsets (of ``records`` records) after which a window is flushed."""
    return set(data.draw(st.lists(st.integers(0, max(records - 1, 0)), max_size=records)))


def feed_windows(
    compactor: Compactor,
    records: Sequence[ChangeRecord],
    flush_points: Collection[int] = (),
    start: int | None = 0,
) -> list[Delta]:
    """Feed ``records[start:]`` at their offsets (``start=None``: from 0, a restore with nothing to resume
    from), flush after each offset in ``flush_points`` and once at the end; every delta produced."""
    out: list[Delta] = []
    for offset in range(start or 0, len(records)):
        compactor.feed(records[offset], offset)
        if offset in flush_points:
            out += compactor.flush()
    return out + compactor.flush()


def assert_no_duplicates(deltas: Sequence[Delta]) -> None:
    """No delta twice: per (source partition, dataset, kind) the covered offsets strictly increase."""
    last: dict[tuple, int] = {}
    for d in deltas:
        mark = (d.src_partition, d.dataset_id, d.kind)
        assert d.src_offset_to > last.get(mark, -1), f"duplicate or regressing delta {mark} {d.src_offset_to}"
        last[mark] = d.src_offset_to
