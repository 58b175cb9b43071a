"""When a replica publishes its context snapshot (``context_snapshot.publish_due`` and ``Publisher``, issue 15).

A snapshot taken in the middle of a backlog leaves a new replica the rest of the backlog to replay (the first full
``walduck bench bootstrap`` run with snapshots: seeded replicas 47.9 s vs 6.4 s from PostgreSQL, because the one
snapshot was published before the connector's 1M-row initial snapshot had flowed through). These pin the rule.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from sinks.context import context_snapshot
from sinks.context.context_snapshot import Fit, Published, Publisher, publish_due


@given(
    since=st.floats(0, 10_000),
    interval=st.floats(1, 5_000),
    tail=st.integers(0, 10**7),
    recent=st.integers(0, 10**7),
    max_tail=st.integers(0, 10**6),
)
def test_publish_due_is_the_interval_or_a_settled_tail(since, interval, tail, recent, max_tail) -> None:
    case = dict(
        since_publish_s=since,
        interval_s=interval,
        tail_changes=tail,
        recent_changes=recent,
        max_tail_changes=max_tail,
    )
    settled_tail = max_tail > 0 and tail >= max_tail and recent <= max_tail // 100
    assert publish_due(published_before=True, **case) == (since >= interval or settled_tail)
    assert publish_due(published_before=False, **case), "nothing published yet: publish at once"


def test_a_backlog_is_published_once_it_settled_not_while_it_flows(monkeypatch, tmp_path: Path) -> None:
    published: list[int] = []
    counter = [0]

    def fake_publish(db, directory, fit, keep):
        published.append(counter[0])
        return Published(f"m{len(published)}", directory / "m", {"partitions": counter[0]}, 0.01, 1)

    monkeypatch.setattr(context_snapshot, "publish", fake_publish)
    pub = Publisher(
        lambda: None,  # type: ignore[arg-type,return-value]
        lambda: ("v", counter[0]),
        tmp_path,
        Fit("deltas", 4, "/s", "timestore"),
        interval_s=3_600,
        keep=3,
        changes=lambda: counter[0],
        max_tail_changes=100_000,
    )
    now = 0.0
    assert pub.publish_if_due(now) is not None  # bootstrapped: the first snapshot at once
    for _ in range(50):  # a backlog: 20k index rows per check, 1M in all
        now += 1
        counter[0] += 20_000
        assert pub.publish_if_due(now) is None, "not while the backlog flows"
    now += 1
    counter[0] += 10  # settled: a heartbeat's worth
    assert pub.publish_if_due(now) is not None
    assert published == [0, 1_000_010]
    for _ in range(100):  # steady trickle below the tail bound: only the interval publishes
        now += 1
        counter[0] += 50
        assert pub.publish_if_due(now) is None
    now += 3_600
    counter[0] += 1
    assert pub.publish_if_due(now) is not None
    now += 1
    assert pub.publish_if_due(now) is None, "unchanged since: nothing to publish"
