"""Plain views: ``timestore.<view>`` as real DuckDB views over each dataset's relation SQL.

Refreshed after applies (at most every ``view_refresh_interval_s``), never inside them: binding a view over
N files costs ~20 µs per file. Only views whose dataset changed since the last refresh are re-created. The
planner's rewrite is the exact, pruned path (``/sql/read`` never uses these views).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

import duckdb

from sinks.context.datasets import DatasetView
from sinks.context.naming import quote_ident

if TYPE_CHECKING:
    from sinks.context.store import ContextStore

log = logging.getLogger(__name__)


class ViewRefresher:
    def __init__(self, store: ContextStore) -> None:
        self.store = store
        self.dirty: set[str] = set()
        self._owner: dict[str, str] = {}
        self._refreshed_at = 0.0
        self._refresh_s = 0.0  # duration of the last refresh

    def mark(self, touched: set[str]) -> None:
        self.dirty |= touched

    def pending(self) -> int:
        """Datasets whose plain view waits for a refresh (after a build: refreshed in chunks)."""
        return len(self.dirty)

    def refresh(self, force: bool = False) -> None:
        """(Re)create the plain views of datasets changed since the last refresh.

        A refresh holds the writer, so under a steady write load the interval also stretches to keep
        refreshes within ``view_refresh_max_share`` of the writer's time (the last refresh's duration / that
        share).
        """
        st = self.store
        if st._db is None:
            return
        settings = st.settings
        now = time.monotonic()
        interval = settings.view_refresh_interval_s
        if settings.view_refresh_max_share > 0:
            interval = max(interval, self._refresh_s / settings.view_refresh_max_share)
        if not force and now - self._refreshed_at < interval:
            return
        if not force and not self.dirty:
            return
        with st._write_lock:
            if not self.dirty and not force:
                return
            started = time.perf_counter()
            try:
                self.refresh_now(now, 0.0 if force else settings.view_refresh_budget_s)
            finally:
                self._refresh_s = time.perf_counter() - started

    def refresh_now(self, now: float, budget_s: float = 0.0) -> None:
        """Refresh the dirty views; with ``budget_s`` > 0 stop starting new ones once it is spent (the rest
        stay dirty for the next call: a build that dirtied every dataset is refreshed in bounded chunks)."""
        st = self.store
        with st._write_lock:
            started = time.perf_counter()
            dirty, self.dirty = self.dirty, set()
            self._refreshed_at = now
            views = st.datasets()
            wanted: dict[str, DatasetView] = {}
            for dv in sorted(views, key=lambda d: (d.slug != d.view_name, d.created_at or "", d.id)):
                if dv.write_format == "parquet":
                    wanted.setdefault(dv.view_name, dv)
            cur = st._writer
            assert cur is not None
            for name in list(self._owner):
                if name not in wanted:
                    with contextlib.suppress(duckdb.Error):
                        cur.execute(f"DROP VIEW IF EXISTS timestore.{quote_ident(name)}")
                    del self._owner[name]
            for name, dv in wanted.items():
                # only views whose dataset changed (or whose owner changed): re-binding a view costs ~20 µs
                # per file, so refreshing every dataset's view on every change does not scale
                if self._owner.get(name) == dv.id and dv.id not in dirty:
                    continue
                if budget_s > 0 and time.perf_counter() - started > budget_s:
                    self.dirty.add(dv.id)
                    continue
                sql_text, _ = st.relation_sql(dv.id, count_skips=False)
                try:
                    cur.execute(f"CREATE OR REPLACE VIEW timestore.{quote_ident(name)} AS {sql_text}")
                    self._owner[name] = dv.id
                except duckdb.Error as exc:
                    log.warning("view timestore.%s not refreshed: %s", name, exc)
