-- Timestore migration 010: per-partition column statistics and bloom filters.
ALTER TABLE dataset_partitions ADD COLUMN IF NOT EXISTS column_statistics JSONB NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE dataset_partitions ADD COLUMN IF NOT EXISTS column_bloom_filters JSONB NOT NULL DEFAULT '{}'::jsonb;
