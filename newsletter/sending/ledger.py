"""The per-message writes of a send: mark `sending` before the server gets a message,
record its outcome after; the writes of all connections of one pass in one commit.

The Ledger turns Finished (work.py) into DeliveryStatus changes and starts
into `sending` marks, in one transaction per round of the dispatch loop. On
SQLite the statements run on the driver connection directly: through
SQLAlchemy each statement cost more than the commit itself (~200 us against
~10 us), and these run once or twice per message. On PostgreSQL the common
commit is one statement on psycopg; the rest, and other databases, run the
same statements as prebuilt SQLAlchemy Core (all in ledgersql.py), fenced by
`claimed_by` on a shared send (claims.py), and retried on a deadlock or
serialisation failure.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.engine import Connection

from newsletter.db import driver_connection
from newsletter.models import DeliveryStatus, utcnow
from newsletter.sending.ledgersql import (
    CLAIMED,
    CORE,
    PG_BOTH,
    PG_BOTH_FENCED,
    SENT,
    SQLITE,
    SQLITE_SENT,
    STATES,
)
from newsletter.sending.policy import Policy
from newsletter.sending.work import BOUNCE, REQUEUE, Finished, Recipient

log = logging.getLogger(__name__)
RETRIES = 5
_RETRYABLE = {"40P01", "40001"}  # deadlock_detected, serialization_failure

T = TypeVar("T")


def _retried(write: Callable[[], T]) -> T:
    """Run `write` again when a deadlock or serialisation failure rolled it back."""
    for attempt in range(RETRIES):
        try:
            return write()
        except Exception as exc:
            code = getattr(getattr(exc, "orig", exc), "sqlstate", None)
            if code not in _RETRYABLE or attempt == RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def _sqlite_time(value: datetime | None) -> str | None:
    """The text SQLAlchemy's SQLite DateTime stores (naive UTC), so both paths agree."""
    if value is None:
        return None
    return value.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass(frozen=True)
class Writes:
    """One commit's worth: the outcomes to record, then the deliveries to mark `sending`
    (each with the Message-ID it goes out with)."""

    finished: Sequence[Finished]
    starts: Sequence[tuple[Recipient, str]]
    now: datetime

    def only(self, start: tuple[Recipient, str]) -> Writes:
        """This one start alone, at the same time (settled row by row)."""
        return Writes([], [start], self.now)


class Ledger:
    """The writes of one send, for dispatch.Sender (the lock makes it safe to share)."""

    def __init__(
        self, issue_created: datetime, policy: Policy, *, worker_id: str | None = None
    ) -> None:
        self.lock = threading.Lock()
        self.issue_created = issue_created
        self.policy = policy
        self.worker_id = worker_id  # set on shared sends: starts need our claim

    @staticmethod
    def durable(conn: Connection, on: bool = True) -> None:
        """Make every commit on `conn` reach the disk before it returns (or stop).

        The `sending` marks must survive a power loss, or a message that went out
        could be found `pending` after the reboot and sent again. SQLite's WAL with
        synchronous=NORMAL (db.py, right for everything else) may lose the last
        commits on power loss; FULL syncs the WAL at each commit. On PostgreSQL
        synchronous_commit must be on (the server default) for the same reason.
        """
        if conn.dialect.name == "sqlite":  # on the driver: no SQLAlchemy transaction
            driver_connection(conn).execute(f"PRAGMA synchronous={'FULL' if on else 'NORMAL'}")
        elif conn.dialect.name == "postgresql" and on:
            conn.exec_driver_sql("SET synchronous_commit TO on")
            conn.commit()

    def commit(
        self,
        conn: Connection,
        finished: Sequence[Finished],
        starts: Sequence[tuple[Recipient, str]],
    ) -> list[bool | None]:
        """Record `finished`, then mark each start as sending, in one transaction
        (on PostgreSQL in one statement; see `_one_statement` for the rare rest).

        Returns, per start, whether it may be sent: True; False when its
        subscriber left (the delivery is now skipped); None when it is no longer
        ours to send (another worker took the claim over, or it is not open).
        No message may be handed to a connection before its mark is committed.
        """
        if not finished and not starts:
            return []
        writes = Writes(finished, starts, utcnow())
        with self.lock:
            if conn.dialect.name == "sqlite":
                return self._commit_sqlite(conn, writes)
            postgres = conn.dialect.name == "postgresql"
            if postgres and all(done.status == SENT for done in finished):
                return self._one_statement(conn, writes)
            return _retried(lambda: self._transaction(conn, writes))

    def _transaction(self, conn: Connection, writes: Writes) -> list[bool | None]:
        with conn.begin():
            if conn.dialect.name == "postgresql":
                return self._apply_postgres(conn, writes)
            return self._apply(self._core_runner(conn), writes)

    def _mark(self, raw: Any, writes: Writes) -> set[int]:
        """`PG_BOTH` on psycopg: the `sent` outcomes of `writes` and its sending marks in
        one statement; the ids it marked. Through Core each statement cost a round trip
        and its compile."""
        ordered = sorted(writes.starts, key=lambda start: start[0].delivery_id)
        params = {
            **STATES,
            "sent": SENT,
            "now": writes.now,
            "done": sorted(d.recipient.delivery_id for d in writes.finished),
            "ids": [r.delivery_id for r, _ in ordered],
            "mids": [m for _, m in ordered],
            "me": self.worker_id,
        }
        statement = PG_BOTH if self.worker_id is None else PG_BOTH_FENCED
        return {row[0] for row in raw.execute(statement, params).fetchall()}

    def _one_statement(self, conn: Connection, writes: Writes) -> list[bool | None]:
        """The common commit on PostgreSQL (only `sent` outcomes): `_mark` in its own
        transaction (autocommit: one round trip, synchronous_commit on). A start it could
        not mark (its subscriber left, or it is no longer ours) is settled after, in a
        transaction of its own: not marked, it was not sent, so nothing is lost between."""
        raw = driver_connection(conn)

        def run() -> set[int]:
            raw.autocommit = True
            try:
                taken = self._mark(raw, writes)
            except BaseException:
                with contextlib.suppress(Exception):  # a lost connection: keep its error
                    raw.autocommit = False
                raise
            raw.autocommit = False
            return taken

        taken = _retried(run)
        allowed: list[bool | None] = []
        for start in writes.starts:
            if start[0].delivery_id in taken:
                allowed.append(True)
                continue
            try:
                allowed.append(_retried(partial(self._transaction, conn, writes.only(start)))[0])
            except Exception:
                # The others' marks are committed: they must still go out, so no raise
                # here. This one's transaction rolled back: it is not sent now, and stays
                # open for a later pass; a broken connection fails the next commit.
                log.exception("could not settle delivery %s", start[0].delivery_id)
                allowed.append(None)
        return allowed

    def _apply_postgres(self, conn: Connection, writes: Writes) -> list[bool | None]:
        """Inside the caller's transaction: the other outcomes row by row through Core,
        `_mark` for the `sent` ones and the starts, and the starts it left over row by
        row (their subscriber left, or they are no longer ours or open)."""
        run = self._core_runner(conn)
        for done in writes.finished:
            if done.status != SENT:
                self._finish(run, done, writes.now)
        sent = [done for done in writes.finished if done.status == SENT]
        if not sent and not writes.starts:
            return []
        taken = self._mark(driver_connection(conn), Writes(sent, writes.starts, writes.now))
        return [
            True if start[0].delivery_id in taken else self._apply(run, writes.only(start))[0]
            for start in writes.starts
        ]

    def _apply(self, run: Any, writes: Writes) -> list[bool | None]:
        """Through Core (or `run`), row by row: the general path, and the rare rows
        the bulk statements leave over."""
        now = writes.now
        for done in writes.finished:
            self._finish(run, done, now)
        allowed: list[bool | None] = []
        for start, message_id in writes.starts:
            params = {"did": start.delivery_id, "sid": start.subscriber_id, "now": now}
            if self.worker_id is not None:
                params["me"] = self.worker_id
            if run("start", {**params, "mid": message_id}) > 0:
                allowed.append(True)
            elif run("skip", {**params, "why": "subscriber no longer active"}) > 0:
                allowed.append(False)
            else:
                allowed.append(None)
        return allowed

    def _finish(self, run: Any, done: Finished, now: datetime) -> None:
        status, error = done.status, done.error
        next_at = None
        if status == DeliveryStatus.DEFERRED and now - self.issue_created > self.policy.max_age:
            status, error = DeliveryStatus.FAILED, f"gave up after {self.policy.max_age}: {error}"
        if status == DeliveryStatus.DEFERRED:
            next_at = now + timedelta(seconds=done.retry_in or 0)
        if status == BOUNCE:
            status = DeliveryStatus.FAILED
            run("bounce", {"sid": done.recipient.subscriber_id, "now": now})
        if status == REQUEUE:
            status = DeliveryStatus.PENDING
        run(
            "finish",
            {
                "did": done.recipient.delivery_id,
                "status": status,
                "error": error,
                "now": now,
                "sent_at": now if status == DeliveryStatus.SENT else None,
                "next_at": next_at,
            },
        )

    def _core_runner(self, conn: Connection) -> Any:
        statements = CORE if self.worker_id is None else CLAIMED

        def run(name: str, params: dict[str, Any]) -> int:
            return conn.execute(statements[name], params).rowcount

        return run

    def _commit_sqlite(self, conn: Connection, writes: Writes) -> list[bool | None]:
        finished, starts, now = writes.finished, writes.starts, writes.now
        cursor = driver_connection(conn).cursor()  # sqlite3, autocommit (see db.py)

        def run(name: str, params: dict[str, Any]) -> int:
            for key in ("now", "sent_at", "next_at"):
                if key in params:
                    params[key] = _sqlite_time(params[key])
            return cursor.execute(SQLITE[name], params | STATES).rowcount

        cursor.execute("BEGIN IMMEDIATE")
        try:
            stamp = _sqlite_time(now)
            rest = self._sent_in_bulk(cursor, finished, stamp)
            for done in rest:
                self._finish(run, done, now)
            allowed = self._start_in_bulk(cursor, starts, stamp)
            for i, ok in enumerate(allowed):
                if ok is None:  # not started: its subscriber left, or it is not open
                    allowed[i] = self._apply(run, writes.only(starts[i]))[0]
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
        return allowed

    @staticmethod
    def _sent_in_bulk(
        cursor: Any, finished: Sequence[Finished], stamp: str | None
    ) -> list[Finished]:
        """Record every plain `sent` in one executemany; returns the others (per row)."""
        sent = [(done.recipient.delivery_id,) for done in finished if done.status == SENT]
        if sent:
            cursor.executemany(SQLITE_SENT, [(SENT, stamp, stamp, did) for (did,) in sent])
        return [done for done in finished if done.status != SENT]

    @staticmethod
    def _start_in_bulk(
        cursor: Any, starts: Sequence[tuple[Recipient, str]], stamp: str | None
    ) -> list[bool | None]:
        """Mark all starts `sending` in one executemany; True where the mark took (read
        back by message id: executemany gives one total row count), None elsewhere."""
        if not starts:
            return []
        params = [
            dict(STATES, did=r.delivery_id, sid=r.subscriber_id, mid=m, now=stamp)
            for r, m in starts
        ]
        cursor.executemany(SQLITE["start"], params)
        ids = [r.delivery_id for r, _ in starts]
        marks = ",".join("?" * len(ids))
        taken = {
            row[0]
            for row in cursor.execute(
                f"SELECT message_id FROM delivery WHERE id IN ({marks}) AND status = ?",  # noqa: S608 - only placeholders
                [*ids, STATES["sending"]],
            )
        }
        return [True if m in taken else None for _, m in starts]
