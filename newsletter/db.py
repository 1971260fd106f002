"""Engine, migrations and transactions.

SQLite gets WAL, a busy timeout and `BEGIN IMMEDIATE` for transactions that
read then write (a deferred transaction that upgrades to a writer fails with
SQLITE_BUSY whatever the timeout). PostgreSQL (psycopg 3) sessions end when
left idle in a transaction, so a stuck sender cannot hold row locks for ever.
A fresh database is migrated on open, so no manual step is needed; schema
changes only ever come from Alembic.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from newsletter.errors import ConfigError, NewsletterError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_setup(engine: Engine, page_cache_kib: int | None = None) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        if page_cache_kib is not None:
            cur.execute(f"PRAGMA cache_size=-{int(page_cache_kib)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


#: PostgreSQL ends a session left idle inside a transaction this long (a hung or
#: half-dead client), so that its row locks cannot stall the other senders forever.
IDLE_IN_TRANSACTION_MS = 300_000


def _postgres_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        dbapi_connection.execute(
            f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}"
        )
        dbapi_connection.autocommit = autocommit


def make_engine(url: str, *, page_cache_kib: int | None = None) -> Engine:
    """An engine for `url`, with SQLite tuned for a CLI that may run twice at once;
    `page_cache_kib` sets SQLite's page cache of each connection (default 2 MiB)."""
    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigError(f"NEWSLETTER_DATABASE_URL: cannot use {url!r} ({exc})") from None
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        _postgres_setup(engine)
    if engine.dialect.name == "sqlite":
        _sqlite_setup(engine, page_cache_kib)
        db_path = engine.url.database
        if db_path and db_path != ":memory:" and not db_path.startswith("file:"):
            parent = Path(db_path).parent
            if not parent.is_dir():
                raise ConfigError(f"NEWSLETTER_DATABASE_URL: folder {parent} does not exist")
    return engine


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (relative to the working directory), else None
    (another database, an in-memory one, or a `file:` URI)."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    db_path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db_path or db_path == ":memory:":
        return None
    if db_path.startswith("file:"):
        return None
    return Path(db_path)


def scratch_database() -> Engine:
    """A migrated in-memory SQLite database: `send --preview/--to/--dry-run` before any
    database exists see an empty list, and leave no file behind."""
    engine = sa.create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    _sqlite_setup(engine)
    migrate(engine)
    return engine


def alembic_config(engine: Engine | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


_REVISION = re.compile(r'^revision = "([^"]+)"$', re.MULTILINE)
_DOWN_REVISION = re.compile(r'^down_revision = (?:"([^"]+)"|None)$', re.MULTILINE)


@functools.cache
def _head_from_files() -> str | None:
    """The head revision read from the migration files' `revision` lines, without
    importing Alembic (~0.2 s and ~11 MB at every start-up); None when the files are
    not a plain chain, and then Alembic decides."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        if down.group(1):
            parents.add(down.group(1))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _stamped_revision(engine: Engine) -> str | None:
    """The database's revision by one query (None: no table yet, or not readable)."""
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except sa.exc.DBAPIError:
        return None


def driver_connection(conn: sa.Connection) -> Any:
    """The driver's own connection under `conn` (sqlite3, psycopg), for what SQLAlchemy
    would slow down or cannot say (a PRAGMA outside a transaction)."""
    raw = conn.connection.driver_connection
    if raw is None:
        raise RuntimeError("the database connection is closed")
    return raw


@contextmanager
def migration_transaction(engine: Engine) -> Iterator[sa.Connection]:
    """The one transaction a migration runs in.

    On SQLite its foreign keys are off meanwhile and checked before the commit: a
    migration that rebuilds a table (Alembic's batch mode: copy, drop, rename) drops the
    old one, and with the keys on that drop is a DELETE that the other tables' keys to
    it refuse. The switch only works outside a transaction, so it goes to the driver's
    connection before BEGIN (a statement through SQLAlchemy would begin one first).
    """
    with engine.connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        driver = driver_connection(conn)
        if sqlite:
            driver.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                yield conn
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all() if sqlite else []
                if broken:
                    table, rowid, parent = broken[0][:3]
                    raise NewsletterError(
                        f"the migration left {len(broken)} rows pointing nowhere (first: "
                        f"{table} row {rowid}, to {parent}); nothing was changed"
                    )
        finally:
            if sqlite:
                driver.execute("PRAGMA foreign_keys=ON")


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest migration (cheap when it already is: one query,
    no Alembic import)."""
    head = _head_from_files()
    if head is not None and _stamped_revision(engine) == head:
        return
    from alembic import command

    try:
        if current_revision(engine) == head_revision():
            return
        with migration_transaction(engine) as conn:
            cfg = alembic_config(engine)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except sa.exc.OperationalError as exc:
        raise NewsletterError(
            f"cannot open the database: {exc.orig}",
            hint="Check NEWSLETTER_DATABASE_URL and that the file is a newsletter database.",
        ) from None
    except sa.exc.DatabaseError as exc:
        raise NewsletterError(f"cannot open the database: {exc.orig}") from None


def open_database(url: str, *, page_cache_kib: int | None = None) -> Engine:
    """An engine on a database migrated to the latest schema (`page_cache_kib`: see
    make_engine)."""
    engine = make_engine(url, page_cache_kib=page_cache_kib)
    migrate(engine)
    return engine


def writing(conn: sa.Connection) -> sa.Connection:
    """`conn`, its transactions begun as writers (BEGIN IMMEDIATE on SQLite: a deferred
    one that reads then writes fails with SQLITE_BUSY whatever the timeout)."""
    return conn.execution_options(sqlite_begin="IMMEDIATE")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[sa.Connection]:
    """A connection in one transaction that may read then write; commits on success."""
    with engine.connect() as conn, writing(conn).begin():
        yield conn


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session in one transaction that may read then write; commits on success."""
    with write_transaction(engine) as conn, Session(bind=conn, expire_on_commit=False) as session:
        yield session
        session.flush()


#: pg_advisory_xact_lock key that keeps apart a subscriber's erasure and the making of an
#: issue's deliveries (`fence_erasures`); any constant, distinct from sending/lock.py's.
ERASURE_LOCK_KEY = 0x6E6C_6572  # "nler"


def fence_erasures(session: Session) -> None:
    """Until this transaction ends, no subscriber is erased while an issue's deliveries
    are made, and the other way round (PostgreSQL: an advisory lock that only those two
    take, so imports and signups go on; SQLite's one writer already excludes them).

    A delivery has no foreign key to its subscriber (migration 0007): without this, an
    issue's INSERT could read a subscriber that `forget` deletes before it commits.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ERASURE_LOCK_KEY})


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for reading; never commits."""
    with Session(engine, expire_on_commit=False) as session:
        yield session
