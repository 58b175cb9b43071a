"""The SQL query service: Timestore-compatible HTTP API over the live DuckDB context."""
