"""Fixtures of the connector's integration tests; helpers live in ``connector_helpers.py`` and the
workloads in ``workloads.py`` (this directory is put on ``sys.path`` so test modules can import them)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from stack.catalog.migrate import apply_migrations

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def catalog_dsn(fresh_db: Callable[[], str]) -> str:
    dsn = fresh_db()
    apply_migrations(dsn, schema="timestore")
    return dsn
