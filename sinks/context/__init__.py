"""DuckDB context shards: the partition index, delta apply, relation SQL and the query planner."""
