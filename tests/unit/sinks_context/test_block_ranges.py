"""The block ranges a parallel bulk read splits ``dataset_partitions`` into: contiguous, disjoint, covering."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from sinks.context.bulkload import block_ranges


@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=1, max_value=64))
def test_ranges_are_contiguous_disjoint_and_open_at_the_end(blocks: int, parts: int) -> None:
    ranges = block_ranges(blocks, parts)
    assert len(ranges) == parts
    assert ranges[0][0] == 0
    assert ranges[-1][1] is None  # blocks added after the size was read are still covered
    for (lo, hi), (next_lo, _) in itertools.pairwise(ranges):
        assert hi == next_lo and lo <= hi  # no gap, no overlap
    sizes = [(hi if hi is not None else blocks) - lo for lo, hi in ranges]
    assert sum(sizes) == blocks and max(sizes) - min(sizes) <= 1  # even split


def test_one_part_is_the_whole_relation() -> None:
    assert block_ranges(123, 1) == [(0, None)]
    assert block_ranges(5, 0) == [(0, None)]
