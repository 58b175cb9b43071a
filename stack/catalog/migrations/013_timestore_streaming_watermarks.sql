-- Timestore migration 013: streaming connector watermarks.
-- Columns per reference §1.10; NOT NULL/DEFAULTs of the counters and the index name are inferred.
CREATE TABLE IF NOT EXISTS streaming_watermarks (
  connector_id TEXT NOT NULL,
  dataset_id TEXT NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
  dataset_slug TEXT NOT NULL,
  sealed_through TIMESTAMPTZ NOT NULL,
  backlog_lag_ms BIGINT NOT NULL DEFAULT 0,
  records_processed BIGINT NOT NULL DEFAULT 0,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  PRIMARY KEY (connector_id, dataset_id)
);
CREATE INDEX IF NOT EXISTS idx_streaming_watermarks_dataset ON streaming_watermarks (dataset_id);
