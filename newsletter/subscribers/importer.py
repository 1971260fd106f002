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

This module is the entry point and the stage loop; the stages themselves live in
`importstaging` (checking) and `importwriter` (writing), the report and the stage
names in `importreport`: import each name from its own module.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from newsletter.errors import NewsletterError
from newsletter.models import utcnow
from newsletter.subscribers.csvformats import ContactsFile, estimate_rows
from newsletter.subscribers.importreport import WRITING, ImportReport, Progress, _rejects_writer
from newsletter.subscribers.importstaging import _check, _Staging, _time_format
from newsletter.subscribers.importwriter import _Forgotten, _SQLiteWriter, _Writer

#: A write transaction holds a whole number of these rows (a kill leaves whole
#: batches), and the checking stage reports progress every BATCH file rows.
BATCH = 1000
#: Each write transaction grows (in whole BATCHes) until it holds the lock about this
#: long: far below any writer's busy timeout, long enough to amortise the commit.
BATCH_SECONDS = 0.2
MAX_UNITS = 200  # at most BATCH * MAX_UNITS rows per transaction


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
            _check(
                contacts, staging, report, forgotten, stored, write_reject, progress, total, BATCH
            )
        contacts.close()
        if sqlite:
            writer = stack.enter_context(_SQLiteWriter(db, report, stored(utcnow())))
            _write(writer.batch, staging, dry_run, writer.between, progress)
        else:
            _write(_Writer(engine, staging, report, known).batch, staging, dry_run, None, progress)
    return report
