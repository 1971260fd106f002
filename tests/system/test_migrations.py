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


def test_0006_turns_an_old_style_welcome_lease_into_the_new_column_and_back(
    tmp_path: Path,
) -> None:
    """Before 0006 a try in progress was `welcome_sent_at` set with a future
    `welcome_send_at`; after it, `welcome_claimed_until` alone (sent_at means sent)."""
    url = f"sqlite:///{tmp_path / 'lease.db'}"
    engine = open_database(url)
    downgrade_to(engine, "0005")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO subscriber (email, email_key, status, token, created_at, updated_at,"
            " welcome_send_at, welcome_sent_at) VALUES ('a@example.org', 'a@example.org',"
            " 'active', 't1', '2026-12-01 10:00:00.000000', '2026-12-01 10:00:00.000000',"
            " '2026-12-01 10:15:00.000000', '2026-12-01 10:00:00.000000')"
        )
    engine = open_database(url)  # up to head again
    query = "SELECT welcome_send_at, welcome_sent_at, welcome_claimed_until FROM subscriber"
    with engine.connect() as conn:
        row = conn.exec_driver_sql(query).one()
    assert row[1] is None and row[0] == row[2] == "2026-12-01 10:15:00.000000"
    downgrade_to(engine, "0005")
    with engine.connect() as conn:
        old = conn.exec_driver_sql("SELECT welcome_send_at, welcome_sent_at FROM subscriber").one()
    assert old[0] == old[1] == "2026-12-01 10:15:00.000000"  # leased, the old way


def test_sqlite_is_in_wal_mode(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_0007_takes_the_delivery_keys_off_and_puts_them_back_keeping_the_rows(
    tmp_path: Path,
) -> None:
    """SQLite drops a constraint by rebuilding the table: the rows, the unique pair and
    the subscriber index must come through both ways."""
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    engine = open_database(url)
    downgrade_to(engine, "0006")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO subscriber (id, email, email_key, name, status,"
                " token, created_at, updated_at) VALUES (1, 'a@example.org',"
                " 'a@example.org', '', 'active', 't', '2026-01-01', '2026-01-01')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO issue (id, subject, html, text, status, created_at)"
                " VALUES (1, 's', 'h', 't', 'sent', '2026-01-01')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO delivery (issue_id, subscriber_id, status, attempts,"
                " updated_at) VALUES (1, 1, 'sent', 1, '2026-01-01')"
            )
        )

        conn.execute(
            sa.text(
                "INSERT INTO bounce_event (report_id, kind, delivery_id, subscriber_id,"
                " created_at) VALUES ('r1', 'hard', 1, 1, '2026-01-01')"
            )
        )  # a key to delivery: the rebuild drops the old table under it

    def keys() -> list[str]:
        return sorted(
            fk["referred_table"] for fk in sa.inspect(engine).get_foreign_keys("delivery")
        )

    assert keys() == ["issue", "subscriber"]
    engine.dispose()
    engine = open_database(url)  # up to head again
    assert keys() == []
    inspector = sa.inspect(engine)
    assert [u["column_names"] for u in inspector.get_unique_constraints("delivery")] == [
        ["issue_id", "subscriber_id"]
    ]
    assert [i["column_names"] for i in inspector.get_indexes("delivery")] == [["subscriber_id"]]
    with engine.begin() as conn:  # a delivery whose subscriber row went by hand
        conn.execute(
            sa.text(
                "INSERT INTO delivery (issue_id, subscriber_id, status, attempts, updated_at)"
                " VALUES (1, 99, 'skipped', 0, '2026-01-01')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO bounce_event (report_id, kind, delivery_id, created_at)"
                " VALUES ('r2', 'hard', 2, '2026-01-01')"
            )
        )
    downgrade_to(engine, "0006")  # the keys would refuse that delivery: it goes
    assert keys() == ["issue", "subscriber"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM delivery")).scalar_one() == 1
        reports = conn.execute(sa.text("SELECT report_id, delivery_id FROM bounce_event"))
        assert sorted(reports.all()) == [("r1", 1), ("r2", None)]


def test_a_migration_that_leaves_a_row_pointing_nowhere_is_rolled_back(tmp_path: Path) -> None:
    """SQLite's keys are off while a migration runs (a table rebuild needs it); they are
    checked before its commit instead."""
    import pytest

    from newsletter.db import migration_transaction
    from newsletter.errors import NewsletterError

    engine = open_database(f"sqlite:///{tmp_path / 'check.db'}")
    broken = sa.text(
        "INSERT INTO bounce_event (report_id, kind, subscriber_id, created_at)"
        " VALUES ('r', 'hard', 42, '2026-01-01')"
    )
    refused = pytest.raises(NewsletterError, match=r"1 rows pointing nowhere.*bounce_event")
    with refused, migration_transaction(engine) as conn:
        conn.execute(broken)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM bounce_event")).scalar_one() == 0
        assert conn.execute(sa.text("PRAGMA foreign_keys")).scalar_one() == 1
