"""Throw-away PostgreSQL databases for tests: one per test, copied from a migrated template.

NEWSLETTER_TEST_POSTGRES_URL names a server and a database our role can connect
to (it needs CREATEDB). A template database migrated to head is made once per
session; each test gets `CREATE DATABASE ... TEMPLATE` (about 40 ms), dropped
after with FORCE, so a test that leaves connections open cannot block the drop.
"""

from __future__ import annotations

import os
import secrets
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from newsletter.db import open_database

POSTGRES_ENV = "NEWSLETTER_TEST_POSTGRES_URL"


class PostgresServer:
    """Creates and drops test databases on the server named by NEWSLETTER_TEST_POSTGRES_URL."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.admin = sa.create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        self.prefix = f"nltest_{secrets.token_hex(3)}"
        self.template = f"{self.prefix}_template"
        self.count = 0
        self.dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-drop")

    def url_for(self, name: str) -> str:
        return self.url.set(database=name).render_as_string(hide_password=False)

    def start(self) -> PostgresServer:
        """Connect (raises when unreachable) and make the migrated template."""
        self._run(f'CREATE DATABASE "{self.template}"')
        engine = open_database(self.url_for(self.template))
        engine.dispose()
        return self

    def create(self) -> str:
        """A fresh migrated database; returns its SQLAlchemy URL."""
        self.count += 1
        name = f"{self.prefix}_{self.count}"
        self._run(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        # Tests need no durability across a server crash; a commit then skips the fsync.
        self._run(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        return self.url_for(name)

    def drop(self, url: str) -> None:
        """Drop in the background: ending a test's leftover sessions takes up to a second."""
        name = make_url(url).database
        self.dropper.submit(self._run, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        self.dropper.shutdown(wait=True)
        self._run(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
        self.admin.dispose()

    def _run(self, sql: str) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(sql)


def unavailable_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        return f"{POSTGRES_ENV} is not set: no PostgreSQL server to test against"
    try:
        engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as exc:  # any failure means: skip with the reason
        return f"PostgreSQL at {POSTGRES_ENV} is unreachable: {exc}"
    return None
