"""`newsletter import`: bring a contacts export in without ever resubscribing anyone.

An import runs in two stages, so that it never holds the database's write lock
for long (a one-click unsubscribe arriving during a 600k-row import must not
wait past its busy timeout, and was once lost that way):

1. Checking: the whole file is read, each row validated and normalised, and the
   good rows staged in a private temporary SQLite file (one row per address: the
   first spelling met wins, later ones count as duplicates). The database is only
   read. An unreadable file or a malformed row anywhere raises ImportFileError
   here, so bad input leaves the database exactly as it was.
2. Writing: the staged rows are merged into `subscriber` in short transactions of
   `BATCH` rows (BEGIN IMMEDIATE on SQLite; SQLAlchemy Core executemany, or COPY
   on PostgreSQL), each committed on its own, so other writers get the lock
   between batches. Each batch re-reads the rows it touches inside its own
   transaction, so whatever another writer did in between (an unsubscribe, a
   forget) is honoured: nobody who left is ever made active again.

The guarantee when the writing stage is interrupted (Ctrl-C, kill -9, an error)
is "whole batches, resumable": every committed batch is complete and valid, the
rest is not written, and running the same import again finishes it (an import is
idempotent: rows already in are counted unchanged). `ImportIncomplete` says how
far it got. A dry run does both stages but only reads in the second, so its
report is exact and it takes no write lock at all.
"""

from __future__ import annotations

import contextlib
import csv
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from newsletter.db import write_session
from newsletter.errors import NewsletterError
from newsletter.mail.addresses import AddressError, clean_name, email_hash, normalise_address
from newsletter.models import (
    Subscriber,
    SubscriberStatus,
    Suppression,
    UTCDateTime,
    utcnow,
)
from newsletter.subscribers.csvformats import (
    Contact,
    ContactsFile,
    estimate_rows,
    neutralise_cell,
    read_contact,
)
from newsletter.subscribers.manage import new_token

BATCH = 1000  # rows per write transaction: ~10-30 ms of write lock each
CHECKING = "checking"
WRITING = "writing"
#: progress(stage, done, total): stage is CHECKING (file rows) or WRITING (staged contacts)
Progress = Callable[[str, int, int], None]
_T: sa.Table = Subscriber.__table__  # type: ignore[attr-defined]
_SUPPRESSED = SubscriberStatus.SUPPRESSED

_INSERT_COLUMNS = tuple(c.name for c in _T.columns if c.name != "id")


def _driver_insert(dialect: sa.Dialect) -> tuple[str, tuple[str, ...] | None] | None:
    """SQL and parameter order for a driver-level executemany of new subscribers.

    SQLAlchemy's per-row parameter handling (and converting the same import time
    on every row) costs about a quarter of an import; the datetimes are converted
    here once per distinct value instead. None when some other column would need
    a conversion on this dialect: then the ordinary Core insert is used.
    """
    for column in _T.columns:
        if (
            column.name in _INSERT_COLUMNS
            and not isinstance(column.type, UTCDateTime)
            and column.type.dialect_impl(dialect).bind_processor(dialect) is not None
        ):
            return None
    stmt = sa.insert(_T).inline()  # no RETURNING: nothing is read back
    compiled = stmt.compile(dialect=dialect, column_keys=list(_INSERT_COLUMNS))
    return str(compiled), tuple(compiled.positiontup or ()) if compiled.positional else None


_EXISTING = sa.select(
    _T.c.id,
    _T.c.email_key,
    _T.c.name,
    _T.c.status,
    _T.c.opt_in_at,
    _T.c.confirmed_at,
    _T.c.unsubscribed_at,
    _T.c.unsubscribe_method,
    _T.c.consent_ip,
).where(_T.c.email_key.in_(sa.bindparam("keys", expanding=True)))
_FORGOTTEN = sa.select(col(Suppression.email_hash)).where(
    col(Suppression.email_hash).in_(sa.bindparam("hashes", expanding=True))
)
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


@dataclass
class _Staged:
    """One checked contact, as staged between the two stages."""

    email: str
    key: str
    name: str | None
    status: str
    opt_in_at: datetime | None
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    consent_ip: str | None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text is not None else None


class _Staging:
    """The checked rows, one per address, in a private temporary SQLite file.

    `sqlite3.connect("")` makes an on-disk database that SQLite deletes when it is
    closed (or the process dies), so memory stays flat whatever the file's size,
    and the real database, SQLite or PostgreSQL, is not written while checking.
    """

    def __init__(self) -> None:
        self.db = sqlite3.connect("")
        self.db.execute(
            "CREATE TABLE staged (seq INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, email TEXT,"
            " name TEXT, status TEXT, opt_in_at TEXT, confirmed_at TEXT, unsubscribed_at TEXT,"
            " consent_ip TEXT)"
        )
        self.waiting: list[tuple[Any, ...]] = []
        self.count = 0

    def add(self, email: str, key: str, c: Contact) -> None:
        self.waiting.append(
            (
                key,
                email,
                c.name,
                c.status,
                _iso(c.opt_in_at),
                _iso(c.confirmed_at),
                _iso(c.unsubscribed_at),
                c.consent_ip,
            )
        )

    def flush(self) -> int:
        """Stage the waiting rows; return how many were duplicates of staged addresses."""
        if not self.waiting:
            return 0
        cursor = self.db.executemany(
            "INSERT OR IGNORE INTO staged (key, email, name, status, opt_in_at, confirmed_at,"
            " unsubscribed_at, consent_ip) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            self.waiting,
        )
        added = cursor.rowcount
        duplicates = len(self.waiting) - added
        self.count += added
        self.waiting.clear()
        return duplicates

    def batches(self, size: int) -> Iterator[list[_Staged]]:
        """The staged rows in file order, `size` at a time."""
        last = 0
        while True:
            rows = self.db.execute(
                "SELECT seq, email, key, name, status, opt_in_at, confirmed_at, unsubscribed_at,"
                " consent_ip FROM staged WHERE seq > ? ORDER BY seq LIMIT ?",
                (last, size),
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [
                _Staged(r[1], r[2], r[3], r[4], _when(r[5]), _when(r[6]), _when(r[7]), r[8])
                for r in rows
            ]

    def close(self) -> None:
        self.db.close()


class _Writer:
    """Merges staged contacts into `subscriber`, one batch per call, on a given connection."""

    def __init__(self, dialect: sa.Dialect, report: ImportReport) -> None:
        self.report = report
        self.conn: sa.Connection | None = None  # the current batch's, for COPY
        self.now = utcnow()
        self.driver = _driver_insert(dialect)
        bind = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
        self.to_db: Callable[[Any], Any] = (bind if self.driver else None) or (lambda v: v)
        self.now_db = self.to_db(self.now)

    def merge(self, conn: sa.Connection, batch: list[_Staged], *, write: bool) -> None:
        """Count (and, unless `write` is false, write) one batch against the current rows."""
        hashes = {email_hash(c.key): c.key for c in batch}
        found = conn.execute(_FORGOTTEN, {"hashes": list(hashes)}).scalars()
        forgotten = {hashes[h] for h in found}
        keys = [c.key for c in batch]
        existing = {row.email_key: row for row in conn.execute(_EXISTING, {"keys": keys})}
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for c in batch:
            row = existing.get(c.key)
            if c.key in forgotten:  # forgotten while this import was checking
                self.report.suppressed += 1
            elif row is None:
                inserts.append(self._new_row(c))
            elif (change := self._merge(row, c)) is not None:
                updates.append(change)
        if not write:
            return
        if inserts:
            self._insert(conn, inserts)
        if updates:
            conn.execute(_UPDATE, updates)

    def _insert(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        if conn.dialect.name == "postgresql":
            self.conn = conn
            self._copy(rows)
            return
        if self.driver is None:
            conn.execute(sa.insert(_T), rows)
            return
        sql, order = self.driver
        if order is None:  # a named paramstyle: the dicts as they are
            conn.exec_driver_sql(sql, rows)  # type: ignore[arg-type]
        else:
            conn.exec_driver_sql(sql, [tuple(map(r.__getitem__, order)) for r in rows])

    def _copy(self, rows: list[dict[str, Any]]) -> None:
        """COPY the new rows (psycopg 3), on the batch's own connection and transaction."""
        assert self.conn is not None
        raw = self.conn.connection.driver_connection
        assert raw is not None
        columns = ", ".join(_INSERT_COLUMNS)
        with raw.cursor() as cursor, cursor.copy(f"COPY subscriber ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[name] for name in _INSERT_COLUMNS])

    def _new_row(self, c: _Staged) -> dict[str, Any]:
        inactive = c.status in _SUPPRESSED
        if inactive:
            self.report.kept_unsubscribed += 1
        else:
            self.report.imported += 1
        row: dict[str, Any] = dict.fromkeys(_INSERT_COLUMNS)  # columns added later: NULL
        row.update(
            {
                "email": c.email,
                "email_key": c.key,
                "name": c.name,
                "status": c.status,
                "token": new_token(),
                "source": self.report.source,
                "consent_ip": c.consent_ip,
                "unsubscribe_method": "import" if inactive else None,
                "created_at": self.now_db,
                "updated_at": self.now_db,
                "opt_in_at": self._db_time(c.opt_in_at),
                "confirmed_at": self._db_time(c.confirmed_at),
                "unsubscribed_at": self._db_time(c.unsubscribed_at or self.now)
                if inactive
                else None,
            }
        )
        return row

    def _db_time(self, value: datetime | None) -> Any:
        if value is None:
            return None
        return self.now_db if value is self.now else self.to_db(value)

    def _merge(self, row: Any, c: _Staged) -> dict[str, Any] | None:
        """The update for a pre-existing subscriber, or None if nothing changes."""
        if row.status in _SUPPRESSED:  # never resubscribed, never edited by an import
            self.report.kept_unsubscribed += 1
            return None
        new = {
            "b_id": row.id,
            "b_name": c.name or row.name,
            "b_status": row.status,
            "b_opt_in_at": row.opt_in_at or c.opt_in_at,
            "b_confirmed_at": row.confirmed_at or c.confirmed_at,
            "b_unsubscribed_at": row.unsubscribed_at,
            "b_unsubscribe_method": row.unsubscribe_method,
            "b_consent_ip": row.consent_ip or c.consent_ip,
            "b_updated_at": self.now,
        }
        if c.status in _SUPPRESSED:  # the file says they left: honour it
            new.update(
                b_status=c.status,
                b_unsubscribed_at=c.unsubscribed_at or self.now,
                b_unsubscribe_method="import",
            )
        else:
            new["b_status"] = SubscriberStatus.ACTIVE
        old = (row.name, row.status, row.opt_in_at, row.confirmed_at, row.consent_ip)
        if old == (
            new["b_name"],
            new["b_status"],
            new["b_opt_in_at"],
            new["b_confirmed_at"],
            new["b_consent_ip"],
        ):
            self.report.unchanged += 1
            return None
        self.report.updated += 1
        return new


_Batch = _Writer  # the name tests/system/test_postgres_schema.py spies on (`_Batch._copy`)


def _check(
    contacts: ContactsFile,
    staging: _Staging,
    report: ImportReport,
    forgotten: set[str],
    write_reject: Callable[[list[str], str], None],
    progress: Progress | None,
    total: int,
) -> None:
    """Stage 1: read, validate and stage every row; the database is not written."""
    cols, header = contacts.columns, contacts.header
    for line, cells in contacts.rows():
        report.rows += 1
        contact = read_contact(cells, cols, header)
        if contact.problem is None:
            try:
                email, key = normalise_address(contact.email)
            except AddressError as exc:
                contact.problem = exc.reason
        if contact.problem is not None:
            report.reject(line, contact.email, contact.problem)
            write_reject(cells, contact.problem)
            continue
        if forgotten and email_hash(key) in forgotten:
            report.suppressed += 1
            continue
        contact.name = clean_name(contact.name)
        staging.add(email, key, contact)
        if len(staging.waiting) >= BATCH:
            report.duplicates += staging.flush()
            if progress is not None:
                progress(CHECKING, report.rows, max(total, report.rows))
    report.duplicates += staging.flush()
    if progress is not None:
        progress(CHECKING, report.rows, report.rows)


def _write(
    engine: sa.Engine,
    staging: _Staging,
    report: ImportReport,
    dry_run: bool,
    progress: Progress | None,
) -> None:
    """Stage 2: merge the staged rows, one short committed transaction per batch."""
    writer: _Writer | None = None
    done = 0
    try:
        for batch in staging.batches(BATCH):
            if dry_run:
                with engine.connect() as conn:  # reads only: no write lock taken
                    writer = writer or _Writer(conn.dialect, report)
                    writer.merge(conn, batch, write=False)
            else:
                with write_session(engine) as session:
                    conn = session.connection()
                    writer = writer or _Writer(conn.dialect, report)
                    writer.merge(conn, batch, write=True)
            done += len(batch)
            if progress is not None:
                progress(WRITING, done, staging.count)
    except BaseException as exc:
        if done == 0 or dry_run:
            raise  # nothing was committed: the database is as it was
        raise ImportIncomplete(done, staging.count, exc) from exc
    if progress is not None:
        progress(WRITING, staging.count, staging.count)


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
    with ContactsFile(path) as contacts, contextlib.closing(_Staging()) as staging:
        report = ImportReport(
            path=path,
            source=(source or path.name).strip()[:200] or path.name[:200],
            dry_run=dry_run,
            encoding=contacts.encoding,
            delimiter=contacts.delimiter,
            rejects_path=rejects,
        )
        with engine.connect() as conn:
            forgotten = set(conn.execute(sa.select(col(Suppression.email_hash))).scalars())
        total = estimate_rows(path) if progress is not None else 0
        with _rejects_writer(rejects, contacts.header) as write_reject:
            _check(contacts, staging, report, forgotten, write_reject, progress, total)
        _write(engine, staging, report, dry_run, progress)
    return report
