-- Timestore migration 005: filestore consumer node state.
CREATE TABLE IF NOT EXISTS filestore_node_state (
  node_id BIGINT PRIMARY KEY,
  backend_mount_id BIGINT,
  path TEXT,
  state TEXT,
  consistency_state TEXT,
  size_bytes BIGINT,
  last_observed_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  last_journal_id BIGINT,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_filestore_node_state_backend ON filestore_node_state (backend_mount_id);
