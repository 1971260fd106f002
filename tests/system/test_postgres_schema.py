"""PostgreSQL: migrations up and down, and the import's COPY path."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import newsletter.models  # noqa: F401  (registers the tables)
from newsletter.db import current_revision, head_revision, open_database
from newsletter.subscribers import importer
from newsletter.subscribers.importer import import_contacts
from newsletter.subscribers.importwriter import _Writer
from newsletter.subscribers.manage import list_subscribers
from tests.support.contacts import EXAMPLE
from tests.support.helpers import downgrade_to


def test_migrated_postgres_matches_the_models(postgres_url: str) -> None:
    engine = open_database(postgres_url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == [], f"models and migrations differ on PostgreSQL: {diff}"
    engine.dispose()


def test_postgres_migrations_go_down_and_up_again(postgres_url: str) -> None:
    engine = open_database(postgres_url)
    downgrade_to(engine, "base")
    assert sa.inspect(engine).get_table_names() == ["alembic_version"]
    engine.dispose()
    engine = open_database(postgres_url)
    assert current_revision(engine) == head_revision()
    assert {"delivery", "send_worker", "rate_budget"} <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_import_streams_new_rows_with_copy(postgres_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine = open_database(postgres_url)
    copied: list[int] = []
    original = _Writer._copy

    def spy(self, rows):  # type: ignore[no-untyped-def]
        copied.append(len(rows))
        original(self, rows)

    monkeypatch.setattr(_Writer, "_copy", spy)
    monkeypatch.setattr(importer, "BATCH", 2)  # several COPY batches in one transaction
    report = import_contacts(engine, EXAMPLE)
    assert report.imported > 2 and sum(copied) == report.imported + report.kept_unsubscribed
    assert len(copied) > 1
    assert len(list(list_subscribers(engine))) == sum(copied)
    again = import_contacts(engine, EXAMPLE)  # the same file again changes nothing
    assert again.imported == 0 and sum(copied) == report.imported + report.kept_unsubscribed
    engine.dispose()
