"""One big dataset with real, readable files, as the query and planner benchmarks use it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sinks.context import guard
from sinks.context.planner import PlannedQuery, plan
from sinks.context.store import ContextStore, DatasetView
from sinks.service.sandbox import check_read_sql
from stack.bench.contexts import open_store, timed
from stack.bench.env import ScenarioEnv
from stack.workload.bulk import SHARED_FILES_PER_DAY

BASE_DAY = date(2024, 1, 1)
# 25 days x 4 shared files per day = 100 (day, file) slots: one slot holds exactly 1% of the partitions
DAYS = 25


@dataclass
class BigDataset:
    store: ContextStore
    view: DatasetView
    partitions: int
    load_s: float
    rebuild_s: float

    def range_sql(self) -> str:
        """count/sum over one (day, file) slot: exactly 1% of the dataset's partitions."""
        day = BASE_DAY + timedelta(days=DAYS // 2)
        lo = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(hours=24 // SHARED_FILES_PER_DAY)
        hi = lo + timedelta(minutes=59, seconds=59)
        return (
            f'SELECT count(*) AS n, sum(value) AS total FROM timestore.{self.view.view_name} WHERE "timestamp"'
            f" >= TIMESTAMP '{lo:%Y-%m-%d %H:%M:%S}' AND \"timestamp\" <= TIMESTAMP '{hi:%Y-%m-%d %H:%M:%S}'"
        )

    def aggregate_sql(self) -> str:
        return (
            f'SELECT count(*) AS n, sum(value) AS total, min("timestamp") AS lo, max("timestamp") AS hi'
            f" FROM timestore.{self.view.view_name}"
        )

    def locations(self) -> list[str]:
        with self.store.reader() as cur:
            rows = cur.execute(
                "SELECT location FROM wd.partitions WHERE dataset_id = ? ORDER BY start_time, id",
                [self.view.id],
            ).fetchall()
        return [r[0] for r in rows]

    def allowed(self) -> set[str]:
        return {self.view.id}

    def plan_only(self, sql: str) -> PlannedQuery:
        """What the query service does between receiving a request and starting DuckDB (policy parse, IAM
        dataset list, plan, execution guard); the planned statement."""
        checked = check_read_sql(sql)
        self.store.datasets()
        return guard.plan_verified(plan, checked.expression, self.store, self.allowed(), checked.param_count)

    def walduck_query(self, sql: str) -> list[tuple[object, ...]]:
        planned = self.plan_only(sql)
        with self.store.reader() as cur:
            return cur.execute(planned.sql, planned.params).fetchall()


@contextlib.contextmanager
def big_dataset(env: ScenarioEnv, partitions: int, **store_overrides: object) -> Iterator[BigDataset]:
    load = env.bulk_load(datasets=1, partitions=partitions, days=DAYS, files="shared", base_day=BASE_DAY)
    store = open_store(env, **store_overrides)
    try:
        rebuild_s, _ = timed(store.rebuild, None, "bench")
        view = store.datasets()[0]
        yield BigDataset(store, view, load.partitions, load.elapsed_s, rebuild_s)
    finally:
        store.close()
