"""`newsletter import`: bring a contacts export in without ever resubscribing anyone.

An import runs in two stages, so that it never holds the database's write lock
for long (a one-click unsubscribe arriving during a 600k-row import must not
wait past its busy timeout, and was once lost that way):

1. Checking: the whole file is read, each row validated and normalised, and the
   good rows staged in a private temporary SQLite file (one row per address: the
   first spelling met wins, later ones count as duplicates). The database is only
   read. An unreadable file or a malformed row anywhere raises ImportFileError
   here, so bad input leaves the database exactly as it was.
2. Writing: the staged rows are merged into `subscriber` in short transactions,
   each a whole number of `BATCH` rows sized to hold the lock about
   `BATCH_SECONDS` (on SQLite: BEGIN IMMEDIATE and INSERT ... SELECT from the
   staging file attached to the same connection; on PostgreSQL: COPY), each
   committed on its own. On SQLite the lock is then left free for `PAUSE` (the
   WAL is checkpointed meanwhile), so a waiting writer always gets it between
   batches. Each batch re-reads the rows it touches inside its own transaction,
   so whatever another writer did in between (an unsubscribe, a forget) is
   honoured: nobody who left is ever made active again.

Speed (issue 14; `benchmarks/import.py`): the check is one pass over the CSV,
one tuple per row, with the address's domain validated once per domain; the
staging file takes big executemany batches with no journal, no fsync and no
index (repeats are dropped afterwards in one sort); no row passes through the
ORM or SQLAlchemy's parameter handling.

The guarantee when the writing stage is interrupted (Ctrl-C, kill -9, an error)
is "whole batches, resumable": every committed batch is complete and valid, the
rest is not written, and running the same import again finishes it (an import is
idempotent: rows already in are counted unchanged). `ImportIncomplete` says how
far it got. A dry run does both stages but only reads in the second, so its
report is exact and it takes no write lock at all.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from newsletter.errors import NewsletterError
from newsletter.mail.addresses import AddressError, clean_name, normalise_address
from newsletter.models import (
    Subscriber,
    SubscriberStatus,
    Suppression,
    UTCDateTime,
    table_of,
    utcnow,
)
from newsletter.subscribers.csvformats import (
    ContactsFile,
    estimate_rows,
    neutralise_cell,
    row_reader,
)

#: A write transaction holds a whole number of these rows (a kill leaves whole
#: batches), and the checking stage reports progress every BATCH file rows.
BATCH = 1000
#: Each write transaction grows (in whole BATCHes) until it holds the lock about this
#: long: far below any writer's busy timeout, long enough to amortise the commit.
BATCH_SECONDS = 0.2
MAX_UNITS = 200  # at most BATCH * MAX_UNITS rows per transaction
#: SQLite: the write lock is left free this long (at most as long as it was held)
#: between batches. A writer waiting on SQLite's busy handler retries at least every
#: 100 ms, so a pause this long always lets it in; a shorter one could miss it.
PAUSE = 0.1
STAGE_ROWS = 5000  # checked rows staged per executemany
CHECKING = "checking"
WRITING = "writing"
#: progress(stage, done, total): stage is CHECKING (file rows) or WRITING (staged contacts)
Progress = Callable[[str, int, int], None]
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


class ImportIncomplete(NewsletterError):
    """The writing stage stopped after some batches were committed (see the module doc)."""

    hint = "Run the same import again to finish it: rows already imported stay as they are."

    def __init__(self, written: int, total: int, cause: BaseException) -> None:
        what = "interrupted" if isinstance(cause, KeyboardInterrupt) else f"stopped ({cause})"
        super().__init__(
            f"import {what} after writing {written} of {total} contacts "
            "(in whole batches; the rest were not written)"
        )
        self.written = written
        self.total = total


@dataclass
class ImportReport:
    """What an import did (or, in a dry run, would do).

    imported: new active subscribers; updated: existing ones whose data changed
    (name, opt-in time, pending -> active, or unsubscribed because the file says
    so); unchanged; duplicates: rows repeating an address met earlier in the
    file; rejected: rows not imported (see `reasons`); kept_unsubscribed: rows
    whose contact is not mailable and stays so (unsubscribed/bounced/complained
    here already, or recorded as such from the file's status column);
    suppressed: forgotten addresses (GDPR), not stored at all.
    """

    path: Path
    source: str
    dry_run: bool = False
    encoding: str = ""
    delimiter: str = ","
    rows: int = 0
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    rejected: int = 0
    kept_unsubscribed: int = 0
    suppressed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    rejects_path: Path | None = None

    def reject(self, line: int, value: str, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason] += 1
        if len(self.examples) < 10:
            self.examples.append(f"line {line}: {value[:60]!r}: {reason}")

    def lines(self) -> list[str]:
        """The report as printed by the CLI."""
        delim = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}[self.delimiter]
        head = "Dry run (nothing written)" if self.dry_run else "Imported"
        out = [
            f"{head}: {self.path.name} ({self.rows} rows, {self.encoding}, {delim}-separated; "
            f"source {self.source!r})",
            f"  imported           {self.imported}",
            f"  updated            {self.updated}",
            f"  unchanged          {self.unchanged}",
            f"  duplicates         {self.duplicates}",
            f"  rejected           {self.rejected}",
        ]
        out += [f"    {count} x {reason}" for reason, count in self.reasons.most_common(10)]
        out += [
            f"  kept unsubscribed  {self.kept_unsubscribed}",
            f"  suppressed         {self.suppressed}",
        ]
        if self.examples:
            out.append("Rejected rows (first ones):")
            out += [f"  {example}" for example in self.examples]
        if self.rejects_path is not None:
            out.append(f"Rejected rows written to {self.rejects_path}")
        return out


@contextlib.contextmanager
def _rejects_writer(
    path: Path | None, header: list[str]
) -> Iterator[Callable[[list[str], str], None]]:
    """A writer of rejected rows + reason; the file appears only once the file is all read."""
    if path is None:
        yield lambda cells, reason: None
        return
    part = path.with_name(path.name + ".part")
    try:
        with part.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\r\n")
            writer.writerow([*header, "reason"])
            yield lambda cells, reason: writer.writerow(
                [neutralise_cell(c) for c in (*cells, reason)]
            )
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)


def new_tokens(count: int) -> list[str]:
    """`count` unsubscribe tokens like `manage.new_token` (128 random bits, 22 characters).

    Drawn in one read of the OS's random source and encoded in one call: each 16
    random bytes are laid out in 18 (two zero bytes after them), so every token's 24
    Base64 characters line up, and their first 22 are exactly `token_urlsafe(16)`.
    """
    raw = os.urandom(16 * count)
    padded = bytearray(18 * count)
    for i in range(16):
        padded[i::18] = raw[i::16]
    text = base64.urlsafe_b64encode(padded).decode("ascii")
    return [text[i : i + 22] for i in range(0, 24 * count, 24)]


def _token_stream() -> Iterator[str]:
    while True:
        yield from new_tokens(4096)


def _time_format(dialect: sa.Dialect) -> Callable[[datetime], str]:
    """How a staged time is written: as the database stores it (SQLite), else ISO 8601.

    On SQLite the staged text goes into `subscriber` as it is (INSERT ... SELECT), so
    it must be exactly what SQLAlchemy writes for a UTCDateTime; this is checked here.
    """
    if dialect.name != "sqlite":
        return datetime.isoformat
    bind = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)

    def stored(value: datetime) -> str:  # "2023-01-14 10:22:01.000000" (+00:00 cut off)
        utc = value if value.tzinfo is UTC else value.astimezone(UTC)
        return utc.isoformat(" ", "microseconds")[:26]

    samples = (datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=UTC), datetime(999, 1, 1, tzinfo=UTC))
    if bind is None or any(bind(t) != stored(t) for t in samples):  # pragma: no cover
        raise RuntimeError("SQLite DATETIME storage format changed: adapt _time_format")
    return stored


class _Staging:
    """The checked rows, one per address, in a private temporary SQLite database.

    It is attached as `staging` (`ATTACH ''`) to the very connection that writes a
    SQLite database, so the writing stage is INSERT ... SELECT and no row passes
    through Python; for another database, to a connection of its own. Either way it
    is an on-disk file that SQLite unlinks at once (a killed process leaves nothing):
    memory stays flat whatever the file's size. Nothing here needs to survive a
    crash, hence no journal and no fsync.

    Rows are appended as they are checked, with no index (a unique index filled in
    file order costs a cache miss per row once it outgrows the cache: 10 us a row at
    1M rows); `finish` then drops the repeats in one sort, keeping the first.
    """

    def __init__(self, db: sqlite3.Connection, *, own: bool) -> None:
        self.db = db
        self.own = own  # close the connection at the end, else just detach
        db.execute("ATTACH DATABASE '' AS staging")
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-8192"):
            db.execute(f"PRAGMA staging.{pragma}").fetchall()
        db.execute(
            "CREATE TABLE staging.staged (seq INTEGER PRIMARY KEY, key TEXT NOT NULL,"
            " email TEXT NOT NULL, name TEXT, status TEXT NOT NULL, opt_in_at TEXT,"
            " confirmed_at TEXT, unsubscribed_at TEXT, consent_ip TEXT, hash TEXT NOT NULL,"
            " token TEXT NOT NULL)"
        )
        self.count = 0

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        """Stage rows (key, email, name, status, opt_in_at, confirmed_at, unsubscribed_at,
        consent_ip, hash, token), repeats included."""
        if not rows:
            return
        self.db.execute("BEGIN")
        try:
            self.db.executemany(
                "INSERT INTO staging.staged (key, email, name, status, opt_in_at, confirmed_at,"
                " unsubscribed_at, consent_ip, hash, token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self.count += len(rows)

    def finish(self) -> int:
        """Drop every row whose address came earlier in the file; return how many."""
        dropped = self.db.execute(
            "DELETE FROM staging.staged WHERE seq IN (SELECT seq FROM (SELECT seq,"
            " row_number() OVER (PARTITION BY key ORDER BY seq) AS n FROM staging.staged)"
            " WHERE n > 1)"
        ).rowcount
        self.count -= dropped
        return dropped

    def span(self, after: int, size: int) -> int:
        """The seq that ends the `size` staged rows after seq `after` (seq has gaps)."""
        row = self.db.execute(
            "SELECT seq FROM staging.staged WHERE seq > ? ORDER BY seq LIMIT 1 OFFSET ?",
            (after, size - 1),
        ).fetchone()
        if row is None:
            row = self.db.execute("SELECT coalesce(max(seq), 0) FROM staging.staged").fetchone()
        return int(row[0])

    def rows(self, after: int, last: int) -> list[tuple[Any, ...]]:
        """Staged rows after..last, in file order, in `add`'s order."""
        return self.db.execute(
            "SELECT key, email, name, status, opt_in_at, confirmed_at, unsubscribed_at,"
            " consent_ip, hash, token FROM staging.staged WHERE seq > ? AND seq <= ?"
            " ORDER BY seq",
            (after, last),
        ).fetchall()

    def close(self) -> None:
        if self.own:
            self.db.close()
        else:
            self.db.execute("DETACH DATABASE staging")


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
_Batch = _Writer  # the name tests/system/test_postgres_schema.py spies on (`_Batch._copy`)
_TIMES = frozenset({"created_at", "updated_at", "opt_in_at", "confirmed_at", "unsubscribed_at"})


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text is not None else None


def _typed(row: tuple[Any, ...]) -> dict[str, Any]:
    """A staged insert tuple as Core parameters (times as datetimes)."""
    return {
        name: _when(value) if name in _TIMES else value
        for name, value in zip(_INSERT_COLUMNS, row, strict=True)
    }


def _check(
    contacts: ContactsFile,
    staging: _Staging,
    report: ImportReport,
    forgotten: set[str],
    stored: Callable[[datetime], str],
    write_reject: Callable[[list[str], str], None],
    progress: Progress | None,
    total: int,
) -> None:
    """Stage 1: read, validate and stage every row; the database is not written.

    The hot loop of an import: one tuple per row, no other object, and the
    locals bound once (each row costs a few microseconds).
    """
    read = row_reader(contacts.columns, contacts.header)
    sha256 = hashlib.sha256
    tokens = _token_stream()
    waiting: list[tuple[Any, ...]] = []
    rows = suppressed = 0
    for line, cells in contacts.rows():
        rows += 1
        raw, name, status, opt_in, confirmed, unsub, ip, problem = read(cells)
        if problem is None:
            try:
                email, key = normalise_address(raw)
            except AddressError as exc:
                problem = exc.reason
        if problem is not None:
            report.reject(line, raw, problem)
            write_reject(cells, problem)
        elif (hashed := sha256(key.encode()).hexdigest()) in forgotten:
            suppressed += 1
        else:
            waiting.append(
                (key, email, clean_name(name), status,
                 stored(opt_in) if opt_in else None,
                 stored(confirmed) if confirmed else None,
                 stored(unsub) if unsub else None,
                 ip, hashed, next(tokens))
            )  # fmt: skip
            if len(waiting) >= STAGE_ROWS:
                staging.add(waiting)
                waiting.clear()
        if progress is not None and rows % BATCH == 0:
            report.rows, report.suppressed = rows, suppressed
            progress(CHECKING, rows, max(total, rows))
    staging.add(waiting)
    report.duplicates = staging.finish()
    report.rows, report.suppressed = rows, suppressed
    if progress is not None:
        progress(CHECKING, rows, rows)


def _write(
    batch: Callable[..., None],
    staging: _Staging,
    dry_run: bool,
    between: Callable[[float], None] | None,
    progress: Progress | None,
) -> None:
    """Stage 2: merge the staged rows, one short committed transaction per batch.

    A batch is a whole number of BATCH rows, grown or shrunk so that each holds the
    lock about BATCH_SECONDS; `between(held)` then runs with the lock free.
    """
    done, units, after, total = 0, 1, 0, staging.count
    try:
        while done < total:
            size = min(BATCH * units, total - done)
            last = staging.span(after, size)
            started = time.monotonic()
            batch(after, last, write=not dry_run)
            held = time.monotonic() - started
            done, after = done + size, last
            if progress is not None:
                progress(WRITING, done, total)
            target = units * BATCH_SECONDS / max(held, 1e-4)
            units = max(1, min(int(target), units * 4, MAX_UNITS))
            if between is not None and done < total and not dry_run:
                between(held)
    except BaseException as exc:
        if done == 0 or dry_run:
            raise  # nothing was committed: the database is as it was
        raise ImportIncomplete(done, total, exc) from exc
    if progress is not None:
        progress(WRITING, total, total)


def import_contacts(
    engine: sa.Engine,
    path: str | Path,
    *,
    dry_run: bool = False,
    source: str | None = None,
    rejects_path: str | Path | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Import a contacts CSV (see the module doc); see `ImportReport` for what is counted.

    A file that cannot be read, anywhere in it, raises ImportFileError before the
    database is written. `progress(stage, done, total)` is called after each batch
    of each stage (CHECKING counts file rows, WRITING staged contacts) and once
    at the end of each with done == total; whatever it raises stops the import
    like Ctrl-C does (ImportIncomplete if some batches were already committed).
    """
    path = Path(path)
    rejects = Path(rejects_path) if rejects_path is not None else None
    with contextlib.ExitStack() as stack:
        contacts = stack.enter_context(ContactsFile(path))
        report = ImportReport(
            path=path,
            source=(source or path.name).strip()[:200] or path.name[:200],
            dry_run=dry_run,
            encoding=contacts.encoding,
            delimiter=contacts.delimiter,
            rejects_path=rejects,
        )
        known = _Forgotten()
        with engine.connect() as conn:
            forgotten = known.read(conn)
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:  # staged beside the database, on the connection that will write it
            raw = stack.enter_context(contextlib.closing(engine.raw_connection()))
            db = raw.driver_connection
            if not isinstance(db, sqlite3.Connection):  # pragma: no cover - another driver
                raise TypeError(f"the sqlite3 module's connection expected, not {db!r}")
            staging = stack.enter_context(contextlib.closing(_Staging(db, own=False)))
        else:
            db = sqlite3.connect(":memory:", isolation_level=None)
            staging = stack.enter_context(contextlib.closing(_Staging(db, own=True)))
        stored = _time_format(engine.dialect)
        total = estimate_rows(path) if progress is not None else 0
        with _rejects_writer(rejects, contacts.header) as write_reject:
            _check(contacts, staging, report, forgotten, stored, write_reject, progress, total)
        contacts.close()
        if sqlite:
            writer = stack.enter_context(_SQLiteWriter(db, report, stored(utcnow())))
            _write(writer.batch, staging, dry_run, writer.between, progress)
        else:
            _write(_Writer(engine, staging, report, known).batch, staging, dry_run, None, progress)
    return report
