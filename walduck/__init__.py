"""walduck: keep DuckDB query contexts in step with a PostgreSQL catalog, live."""

__version__ = "0.1.0"
