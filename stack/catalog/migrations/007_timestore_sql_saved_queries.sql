-- Timestore migration 007: saved SQL queries.
CREATE TABLE IF NOT EXISTS sql_saved_queries (
  id TEXT PRIMARY KEY,
  statement TEXT NOT NULL,
  label TEXT,
  created_by TEXT,
  stats JSONB NOT NULL DEFAULT '{}'::jsonb,
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_sql_saved_queries_updated ON sql_saved_queries (updated_at DESC);
