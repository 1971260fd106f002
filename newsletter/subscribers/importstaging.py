"""Import stage 1: read and check a contacts file, staging its rows in a private SQLite file.

The database is only read here (see `newsletter.subscribers.importer`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from newsletter.mail.addresses import AddressError, clean_name, normalise_address
from newsletter.models import UTCDateTime
from newsletter.subscribers.csvformats import ContactsFile
from newsletter.subscribers.csvrows import row_reader
from newsletter.subscribers.importreport import CHECKING, ImportReport, Progress

STAGE_ROWS = 5000  # checked rows staged per executemany


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


def _check(
    contacts: ContactsFile,
    staging: _Staging,
    report: ImportReport,
    forgotten: set[str],
    stored: Callable[[datetime], str],
    write_reject: Callable[[list[str], str], None],
    progress: Progress | None,
    total: int,
    every: int,
) -> None:
    """Stage 1: read, validate and stage every row; the database is not written.

    `progress` is called every `every` file rows (the importer's BATCH).

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
        if progress is not None and rows % every == 0:
            report.rows, report.suppressed = rows, suppressed
            progress(CHECKING, rows, max(total, rows))
    staging.add(waiting)
    report.duplicates = staging.finish()
    report.rows, report.suppressed = rows, suppressed
    if progress is not None:
        progress(CHECKING, rows, rows)
