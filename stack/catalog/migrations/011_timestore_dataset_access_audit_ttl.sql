-- Timestore migration 011: index for the audit TTL cleaner.
CREATE INDEX IF NOT EXISTS idx_dataset_access_audit_created_at ON dataset_access_audit (created_at ASC);
