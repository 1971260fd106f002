"""`newsletter import`: bring a contacts export in without ever resubscribing anyone.

The whole import is one transaction (BEGIN IMMEDIATE): a bad row is rejected
and reported, but an unreadable file, an error or Ctrl-C leaves the database as
it was. A dry run does the same work and rolls back, so its report is exact.

Rows stream from the file and are written in batches with SQLAlchemy Core
(executemany; an ORM object per row is ~9x slower), so memory does not grow
with the file. On PostgreSQL new rows are streamed with COPY instead, in the
same transaction. Duplicates across batches are found through the database itself:
a row this import inserted carries its `created_at`, and pre-existing rows
already met are remembered in a temporary table, not in Python.
"""

from __future__ import annotations

import contextlib
import csv
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from newsletter.addresses import AddressError, clean_name, email_hash, normalise_address
from newsletter.csvformats import Contact, ContactsFile, neutralise_cell, read_contact
from newsletter.db import write_session
from newsletter.models import (
    Subscriber,
    SubscriberStatus,
    Suppression,
    UTCDateTime,
    utcnow,
)
from newsletter.subscribers import new_token

BATCH = 1000
Progress = Callable[[int], None]
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


_SEEN = sa.Table(
    "newsletter_import_seen",
    sa.MetaData(),
    sa.Column("k", sa.String(320), primary_key=True),
    prefixes=["TEMPORARY"],
)
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
    _T.c.created_at,
).where(_T.c.email_key.in_(sa.bindparam("keys", expanding=True)))
_ALREADY_SEEN = sa.select(_SEEN.c.k).where(_SEEN.c.k.in_(sa.bindparam("keys", expanding=True)))
_UPDATE = (
    _T.update()
    .where(_T.c.id == sa.bindparam("b_id"))
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


class _DryRun(Exception):
    """Raised inside the transaction so that a dry run rolls everything back."""


@contextlib.contextmanager
def _rejects_writer(
    path: Path | None, header: list[str]
) -> Iterator[Callable[[list[str], str], None]]:
    """A writer of rejected rows + reason; the file appears only if the import finishes."""
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


class _Batch:
    """The state of one import: counts, the import time, and the rows waiting to be written."""

    def __init__(self, conn: sa.Connection, report: ImportReport) -> None:
        self.conn = conn
        self.report = report
        self.now = utcnow()  # also marks the rows this import inserts
        self.forgotten = set(conn.execute(sa.select(Suppression.email_hash)).scalars())
        self.pending: dict[str, tuple[str, Contact]] = {}
        self.driver = _driver_insert(conn.dialect)
        bind = UTCDateTime().dialect_impl(conn.dialect).bind_processor(conn.dialect)
        self.to_db: Callable[[Any], Any] = (bind if self.driver else None) or (lambda v: v)
        self.now_db = self.to_db(self.now)

    def add(self, email: str, key: str, contact: Contact) -> None:
        if key in self.pending:
            self.report.duplicates += 1
        elif self.forgotten and email_hash(key) in self.forgotten:
            self.report.suppressed += 1
        else:
            self.pending[key] = (email, contact)

    def flush(self) -> None:
        if not self.pending:
            return
        keys = list(self.pending)
        existing = {row.email_key: row for row in self.conn.execute(_EXISTING, {"keys": keys})}
        seen = self._seen_before([k for k, r in existing.items() if r.created_at != self.now])
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for key, (email, contact) in self.pending.items():
            row = existing.get(key)
            if row is None:
                inserts.append(self._new_row(email, key, contact))
            elif row.created_at == self.now or key in seen:
                self.report.duplicates += 1
            elif (change := self._merge(row, contact)) is not None:
                updates.append(change)
        if inserts:
            self._insert(inserts)
        if updates:
            self.conn.execute(_UPDATE, updates)
        self.pending.clear()

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        if self.conn.dialect.name == "postgresql":
            self._copy(rows)
            return
        if self.driver is None:
            self.conn.execute(sa.insert(_T), rows)
            return
        sql, order = self.driver
        if order is None:  # a named paramstyle: the dicts as they are
            self.conn.exec_driver_sql(sql, rows)  # type: ignore[arg-type]
        else:
            self.conn.exec_driver_sql(sql, [tuple(map(r.__getitem__, order)) for r in rows])

    def _copy(self, rows: list[dict[str, Any]]) -> None:
        """COPY the new rows (psycopg 3), on the import's own connection and transaction."""
        raw = self.conn.connection.driver_connection
        assert raw is not None
        columns = ", ".join(_INSERT_COLUMNS)
        with raw.cursor() as cursor, cursor.copy(f"COPY subscriber ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[name] for name in _INSERT_COLUMNS])

    def _seen_before(self, keys: list[str]) -> set[str]:
        """Which of these pre-existing keys an earlier batch met; remember the others."""
        if not keys:
            return set()
        seen = set(self.conn.execute(_ALREADY_SEEN, {"keys": keys}).scalars())
        fresh = [{"k": k} for k in keys if k not in seen]
        if fresh:
            self.conn.execute(sa.insert(_SEEN), fresh)
        return seen

    def _new_row(self, email: str, key: str, c: Contact) -> dict[str, Any]:
        inactive = c.status in _SUPPRESSED
        if inactive:
            self.report.kept_unsubscribed += 1
        else:
            self.report.imported += 1
        row: dict[str, Any] = dict.fromkeys(_INSERT_COLUMNS)  # columns added later: NULL
        row.update(
            {
                "email": email,
                "email_key": key,
                "name": c.name,
                "status": c.status,
                "token": new_token(),
                "source": self.report.source,
                "consent_ip": c.consent_ip,
                "unsubscribe_method": "import" if inactive else None,
                "confirm_token": None,
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

    def _merge(self, row: sa.Row[Any], c: Contact) -> dict[str, Any] | None:
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


def import_contacts(
    engine: sa.Engine,
    path: str | Path,
    *,
    dry_run: bool = False,
    source: str | None = None,
    rejects_path: str | Path | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Import a contacts CSV in one transaction; see `ImportReport` for what is counted.

    An unreadable file raises ImportFileError before the database is touched.
    `progress(rows_done)` is called after each batch; whatever it raises rolls
    the import back.
    """
    path = Path(path)
    rejects = Path(rejects_path) if rejects_path is not None else None
    with ContactsFile(path) as contacts:
        report = ImportReport(
            path=path,
            source=(source or path.name).strip()[:200] or path.name[:200],
            dry_run=dry_run,
            encoding=contacts.encoding,
            delimiter=contacts.delimiter,
            rejects_path=rejects,
        )
        cols, header = contacts.columns, contacts.header
        with _rejects_writer(rejects, header) as write_reject:
            try:
                with write_session(engine) as session:
                    conn = session.connection()
                    _SEEN.create(conn)
                    batch = _Batch(conn, report)
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
                        contact.name = clean_name(contact.name)
                        batch.add(email, key, contact)
                        if len(batch.pending) >= BATCH:
                            batch.flush()
                            if progress is not None:
                                progress(report.rows)
                    batch.flush()
                    _SEEN.drop(conn)
                    if progress is not None:
                        progress(report.rows)
                    if dry_run:
                        raise _DryRun
            except _DryRun:
                pass
    return report
