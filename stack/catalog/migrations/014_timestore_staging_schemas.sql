-- Timestore migration 014 (dc38742f only): the staging schema registry.
-- Index name is inferred.
CREATE TABLE IF NOT EXISTS timestore_staging_schemas (
  dataset_id TEXT PRIMARY KEY REFERENCES datasets (id) ON DELETE CASCADE,
  schema_version BIGINT NOT NULL DEFAULT 1,
  fields JSONB NOT NULL,
  checksum TEXT NOT NULL,
  source_batch_id TEXT,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_timestore_staging_schemas_updated ON timestore_staging_schemas (updated_at DESC);
