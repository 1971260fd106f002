"""The schema comes only from Alembic migrations, and they match the models."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import newsletter.models  # noqa: F401  (registers the tables)
from newsletter.db import current_revision, head_revision, open_database
from tests.support.helpers import downgrade_to


def test_fresh_database_is_migrated_to_head(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_migrations_go_down_and_up_again(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'cycle.db'}")
    downgrade_to(engine, "base")
    assert sa.inspect(engine).get_table_names() == ["alembic_version"]
    engine = open_database(f"sqlite:///{tmp_path / 'cycle.db'}")
    assert "delivery" in sa.inspect(engine).get_table_names()


def test_sqlite_is_in_wal_mode(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
