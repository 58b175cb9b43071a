-- Timestore migration 006: audit filter index.
DROP INDEX IF EXISTS idx_dataset_access_audit_dataset;
CREATE INDEX IF NOT EXISTS idx_dataset_access_audit_dataset_filters
  ON dataset_access_audit (dataset_id, action, success, created_at DESC, id DESC);
