"""Throw-away PostgreSQL databases for one benchmark run (the role needs CREATEDB)."""

from __future__ import annotations

import secrets


class PostgresDatabases:
    """A fresh database per measurement on the server of `url`, all dropped at the end."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa  # only the PostgreSQL part of a benchmark needs it

        self.url = sa.make_url(url)
        self.admin = sa.create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        self.names: list[str] = []

    def create(self) -> str:
        name = f"nlbench_{secrets.token_hex(4)}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.names:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.names.clear()
