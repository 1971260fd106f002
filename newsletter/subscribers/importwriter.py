"""Import stage 2: write batches of staged rows into SQLite or PostgreSQL.

Each batch is one short transaction that re-reads the rows it touches, so whatever
another writer did in between (an unsubscribe, a forget) is honoured (see
`newsletter.subscribers.importer`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from newsletter.models import (
    Subscriber,
    SubscriberStatus,
    Suppression,
    UTCDateTime,
    table_of,
    utcnow,
)
from newsletter.subscribers.importreport import ImportReport
from newsletter.subscribers.importstaging import _Staging

#: SQLite: the write lock is left free this long (at most as long as it was held)
#: between batches. A writer waiting on SQLite's busy handler retries at least every
#: 100 ms, so a pause this long always lets it in; a shorter one could miss it.
PAUSE = 0.1
_T = table_of(Subscriber)
_SUPPRESSED = SubscriberStatus.SUPPRESSED

#: the columns an import fills, in the order of a staged row's insert (COPY) tuple
_INSERT_COLUMNS = (
    "email", "email_key", "name", "status", "token", "source", "consent_ip",
    "unsubscribe_method", "created_at", "updated_at", "opt_in_at", "confirmed_at",
    "unsubscribed_at",
)  # fmt: skip

_EXISTING = sa.select(
    _T.c.email_key,
    _T.c.id,
    _T.c.name,
    _T.c.status,
    _T.c.opt_in_at,
    _T.c.confirmed_at,
    _T.c.unsubscribed_at,
    _T.c.unsubscribe_method,
    _T.c.consent_ip,
).where(_T.c.email_key.in_(sa.bindparam("keys", expanding=True)))
# The status guard matters on PostgreSQL (READ COMMITTED): an unsubscribe committed
# between this batch's read and its update is seen by the UPDATE, which then skips the row.
_UPDATE = (
    _T.update()
    .where(_T.c.id == sa.bindparam("b_id"))
    .where(sa.and_(*(_T.c.status != status for status in sorted(_SUPPRESSED))))
    .values(
        name=sa.bindparam("b_name"),
        status=sa.bindparam("b_status"),
        opt_in_at=sa.bindparam("b_opt_in_at", type_=UTCDateTime()),
        confirmed_at=sa.bindparam("b_confirmed_at", type_=UTCDateTime()),
        unsubscribed_at=sa.bindparam("b_unsubscribed_at", type_=UTCDateTime()),
        unsubscribe_method=sa.bindparam("b_unsubscribe_method"),
        consent_ip=sa.bindparam("b_consent_ip"),
        updated_at=sa.bindparam("b_updated_at", type_=UTCDateTime()),
    )
)
_UPDATE_KEYS = (
    "b_name", "b_status", "b_opt_in_at", "b_confirmed_at", "b_unsubscribed_at",
    "b_unsubscribe_method", "b_consent_ip", "b_updated_at", "b_id",
)  # fmt: skip


#: A staged contact as merging reads it: (key, name, status, opt_in_at, confirmed_at,
#: unsubscribed_at, consent_ip); a current row: (id, name, status, opt_in_at,
#: confirmed_at, unsubscribed_at, unsubscribe_method, consent_ip).
_Row = tuple[Any, ...]


class _Merge:
    """The rules for a contact already in `subscriber`, and the report's counts."""

    def __init__(self, report: ImportReport, now: Any) -> None:
        self.report = report
        self.now = now  # in the form the writer compares and writes times

    def update(self, staged: _Row, current: _Row) -> tuple[Any, ...] | None:
        """The new values (in _UPDATE_KEYS order) for a current row, or None: no change."""
        row_id, name, status, opt_in, confirmed, unsub, method, ip = current
        if status in _SUPPRESSED:  # never resubscribed, never edited by an import
            self.report.kept_unsubscribed += 1
            return None
        _key, c_name, c_status, c_opt_in, c_confirmed, c_unsub, c_ip = staged
        new_name = c_name or name
        new_opt_in, new_confirmed, new_ip = opt_in or c_opt_in, confirmed or c_confirmed, ip or c_ip
        if c_status in _SUPPRESSED:  # the file says they left: honour it
            new_status, unsub, method = c_status, c_unsub or self.now, "import"
        else:
            new_status = SubscriberStatus.ACTIVE
        if (name, status, opt_in, confirmed, ip) == (
            new_name, new_status, new_opt_in, new_confirmed, new_ip,
        ):  # fmt: skip
            self.report.unchanged += 1
            return None
        self.report.updated += 1
        return (new_name, new_status, new_opt_in, new_confirmed, unsub, method, new_ip,
                self.now, row_id)  # fmt: skip

    def new(self, statuses: Iterable[str]) -> None:
        """Count the contacts just written (or, in a dry run, that would be) as new rows."""
        for status in statuses:
            if status in _SUPPRESSED:
                self.report.kept_unsubscribed += 1
            else:
                self.report.imported += 1


class _SQLiteWriter:
    """Writes one batch of the staging table (ATTACHed as `staging`) into SQLite.

    The whole batch is SQL: the rows already there are joined (and merged in Python),
    the forgotten ones skipped, the new ones copied by INSERT ... SELECT, all inside
    one BEGIN IMMEDIATE transaction that therefore sees every earlier commit.
    """

    # The statuses that must stay (SubscriberStatus.SUPPRESSED, checked below the class)
    # are spelled out: these statements are constants, nothing is formatted into them.
    EXISTING = (
        "SELECT s.key, s.name, s.status, s.opt_in_at, s.confirmed_at, s.unsubscribed_at,"
        " s.consent_ip, t.id, t.name, t.status, t.opt_in_at, t.confirmed_at,"
        " t.unsubscribed_at, t.unsubscribe_method, t.consent_ip"
        " FROM staging.staged s JOIN main.subscriber t ON t.email_key = s.key"
        " WHERE s.seq > :after AND s.seq <= :last"
        " AND s.hash NOT IN (SELECT email_hash FROM main.suppression) ORDER BY s.seq"
    )
    FORGOTTEN = (
        "SELECT count(*) FROM staging.staged s WHERE s.seq > :after AND s.seq <= :last"
        " AND s.hash IN (SELECT email_hash FROM main.suppression)"
    )
    INSERT = (
        "INSERT INTO main.subscriber (email, email_key, name, status, token, source,"
        " consent_ip, unsubscribe_method, created_at, updated_at, opt_in_at, confirmed_at,"
        " unsubscribed_at)"
        " SELECT s.email, s.key, s.name, s.status, s.token, :source, s.consent_ip,"
        " CASE WHEN s.status IN ('bounced', 'complained', 'unsubscribed') THEN 'import' END,"
        " :now, :now, s.opt_in_at, s.confirmed_at,"
        " CASE WHEN s.status IN ('bounced', 'complained', 'unsubscribed')"
        " THEN coalesce(s.unsubscribed_at, :now) END"
        " FROM staging.staged s WHERE s.seq > :after AND s.seq <= :last"
        " AND NOT EXISTS (SELECT 1 FROM main.subscriber t WHERE t.email_key = s.key)"
        " AND s.hash NOT IN (SELECT email_hash FROM main.suppression)"
        " ORDER BY s.seq RETURNING status"
    )
    WOULD_INSERT = (
        "SELECT s.status FROM staging.staged s WHERE s.seq > :after AND s.seq <= :last"
        " AND NOT EXISTS (SELECT 1 FROM main.subscriber t WHERE t.email_key = s.key)"
        " AND s.hash NOT IN (SELECT email_hash FROM main.suppression)"
    )
    UPDATE = (
        "UPDATE main.subscriber SET name = ?, status = ?, opt_in_at = ?, confirmed_at = ?,"
        " unsubscribed_at = ?, unsubscribe_method = ?, consent_ip = ?, updated_at = ?"
        " WHERE id = ? AND status NOT IN ('bounced', 'complained', 'unsubscribed')"
    )

    def __init__(self, db: sqlite3.Connection, report: ImportReport, now: str) -> None:
        self.db = db
        self.report = report
        self.merge = _Merge(report, now)
        self.now = now

    def __enter__(self) -> _SQLiteWriter:
        # Checkpoints are run between batches, while the lock is free anyway (`between`).
        self.autocheckpoint = self.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        self.db.execute("PRAGMA wal_autocheckpoint=0").fetchall()
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.execute(f"PRAGMA wal_autocheckpoint={int(self.autocheckpoint)}").fetchall()

    def between(self, held: float) -> None:
        """Leave the lock free at least min(PAUSE, held), checkpointing the WAL meanwhile."""
        started = time.monotonic()
        self.db.execute("PRAGMA main.wal_checkpoint(PASSIVE)").fetchall()
        rest = min(PAUSE, held) - (time.monotonic() - started)
        if rest > 0:
            time.sleep(rest)

    def batch(self, after: int, last: int, *, write: bool) -> None:
        """Merge staged rows after..last in one transaction (only reads unless `write`)."""
        db, span = self.db, {"after": after, "last": last}
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            self.report.suppressed += db.execute(self.FORGOTTEN, span).fetchone()[0]
            updates = [
                change
                for row in db.execute(self.EXISTING, span)
                if (change := self.merge.update(row[:7], row[7:])) is not None
            ]
            if write:
                params = {**span, "source": self.report.source, "now": self.now}
                self.merge.new(status for (status,) in db.execute(self.INSERT, params))
                if updates:
                    db.executemany(self.UPDATE, updates)
            else:
                self.merge.new(status for (status,) in db.execute(self.WOULD_INSERT, span))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT" if write else "ROLLBACK")


if set(_SUPPRESSED) != {"bounced", "complained", "unsubscribed"}:  # pragma: no cover
    raise RuntimeError("SubscriberStatus.SUPPRESSED changed: update _SQLiteWriter's statements")


class _Forgotten:
    """The forgotten addresses' hashes, read again only when `suppression` changed.

    Its rows are only ever added (a forget inserts one, nothing deletes one), each
    with a new id, so its row count and highest id tell whether it changed: one
    aggregate per batch instead of sending every hash of the batch to the server.
    """

    COUNT = sa.select(sa.func.count(), sa.func.coalesce(sa.func.max(col(Suppression.id)), 0))
    ALL = sa.select(col(Suppression.id), col(Suppression.email_hash))

    def __init__(self) -> None:
        self.hashes: set[str] = set()
        self.seen: tuple[int, int] = (-1, -1)

    def read(self, conn: sa.Connection) -> set[str]:
        """All of them, read in one statement with the (count, highest id) they make."""
        rows = conn.execute(self.ALL).all()
        self.hashes = {hashed for _, hashed in rows}
        self.seen = (len(rows), max((row_id or 0 for row_id, _ in rows), default=0))
        return self.hashes

    def current(self, conn: sa.Connection) -> set[str]:
        """Up to date within `conn`'s transaction."""
        count, top = conn.execute(self.COUNT).one()
        return self.hashes if (count, top) == self.seen else self.read(conn)


class _Writer:
    """Writes batches of staged rows into PostgreSQL (COPY) or another database (Core).

    Each batch is one transaction that reads the current rows it touches (and the
    forgotten addresses) before it writes, so concurrent unsubscribes are honoured.
    """

    def __init__(
        self, engine: sa.Engine, staging: _Staging, report: ImportReport, forgotten: _Forgotten
    ) -> None:
        self.engine = engine
        self.staging = staging
        self.report = report
        self.forgotten = forgotten
        self.conn: sa.Connection | None = None  # the current batch's, for COPY
        now = utcnow()
        self.now = now.isoformat()
        self.merge = _Merge(report, now)

    def batch(self, after: int, last: int, *, write: bool) -> None:
        rows = self.staging.rows(after, last)
        if write:
            with self.engine.connect() as conn, conn.begin():
                self._merge(conn, rows, write=True)
        else:
            with self.engine.connect() as conn:  # reads only: no write lock taken
                self._merge(conn, rows, write=False)

    def _merge(self, conn: sa.Connection, rows: list[_Row], *, write: bool) -> None:
        found = self.forgotten.current(conn)
        keys = [row[0] for row in rows]
        raw = conn.connection.driver_connection if conn.dialect.name == "postgresql" else None
        if raw is not None:  # psycopg: one array parameter, not thousands of expanded ones
            with raw.cursor() as cursor:
                current = {r[0]: r[1:] for r in cursor.execute(_PG_EXISTING, (keys,))}
        else:
            current = {r[0]: r[1:] for r in conn.execute(_EXISTING, {"keys": keys})}
        new: list[tuple[Any, ...]] = []
        updates: list[dict[str, Any]] = []
        source, now = self.report.source, self.now
        for key, email, name, status, opt_in, confirmed, unsub, ip, hashed, token in rows:
            if hashed in found:  # forgotten while this import was checking
                self.report.suppressed += 1
            elif (row := current.get(key)) is None:
                inactive = status in _SUPPRESSED
                new.append(
                    (email, key, name, status, token, source, ip, "import" if inactive else None,
                     now, now, opt_in, confirmed, (unsub or now) if inactive else None)
                )  # fmt: skip
            else:
                staged = (key, name, status, _when(opt_in), _when(confirmed), _when(unsub), ip)
                if (change := self.merge.update(staged, row)) is not None:
                    updates.append(dict(zip(_UPDATE_KEYS, change, strict=True)))
        self.merge.new(row[3] for row in new)
        if not write:
            return
        if new:
            self.conn = conn
            if conn.dialect.name == "postgresql":
                self._copy(new)
            else:
                conn.execute(sa.insert(_T), [_typed(row) for row in new])
        if updates:
            conn.execute(_UPDATE, updates)

    def _copy(self, rows: list[tuple[Any, ...]]) -> None:
        """COPY the new rows (psycopg 3), on the batch's own connection and transaction."""
        if self.conn is None or (raw := self.conn.connection.driver_connection) is None:
            raise RuntimeError("COPY outside a batch")
        with raw.cursor() as cursor, cursor.copy(_COPY) as copy:
            for row in rows:
                copy.write_row(row)


_PG_EXISTING = (
    "SELECT email_key, id, name, status, opt_in_at, confirmed_at, unsubscribed_at,"
    " unsubscribe_method, consent_ip FROM subscriber WHERE email_key = ANY(%s)"
)
_COPY = (
    "COPY subscriber (email, email_key, name, status, token, source, consent_ip,"
    " unsubscribe_method, created_at, updated_at, opt_in_at, confirmed_at, unsubscribed_at)"
    " FROM STDIN"
)
_TIMES = frozenset({"created_at", "updated_at", "opt_in_at", "confirmed_at", "unsubscribed_at"})


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text is not None else None


def _typed(row: tuple[Any, ...]) -> dict[str, Any]:
    """A staged insert tuple as Core parameters (times as datetimes)."""
    return {
        name: _when(value) if name in _TIMES else value
        for name, value in zip(_INSERT_COLUMNS, row, strict=True)
    }
