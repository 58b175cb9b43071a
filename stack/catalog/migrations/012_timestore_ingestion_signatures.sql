-- Timestore migration 012: ingestion signatures (dedupe without an idempotency key).
ALTER TABLE dataset_partitions ADD COLUMN IF NOT EXISTS ingestion_signature TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS uq_dataset_partitions_ingestion_signature
  ON dataset_partitions (dataset_id, ingestion_signature)
  WHERE ingestion_signature IS NOT NULL;
