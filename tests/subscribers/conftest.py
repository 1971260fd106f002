"""The subscribers tests' database: one per test, on SQLite or PostgreSQL (db_backend)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from newsletter.db import open_database
from tests.support.helpers import database_url


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_database(database_url(tmp_path, "t.db"))
