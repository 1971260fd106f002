"""The per-message writes of a send: mark `sending` before the server gets a message,
record its outcome after; the writes of all connections of one pass in one commit.

The Ledger turns Finished (work.py) into DeliveryStatus changes and starts
into `sending` marks, in one transaction per round of the dispatch loop. On
SQLite the statements run on the driver connection directly: through
SQLAlchemy each statement cost more than the commit itself (~200 us against
~10 us), and these run once or twice per message. Other databases use the
same statements as prebuilt SQLAlchemy Core, fenced by `claimed_by` on a
shared send (claims.py), and retried on a deadlock or serialisation failure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Subscriber,
    SubscriberStatus,
    table_of,
    utcnow,
)
from newsletter.sending.policy import Policy
from newsletter.sending.work import BOUNCE, REQUEUE, Finished, Recipient

D = table_of(Delivery)
S = table_of(Subscriber)
RETRIES = 5
_RETRYABLE = {"40P01", "40001"}  # deadlock_detected, serialization_failure

_P = sa.bindparam
_ACTIVE = sa.select(S.c.id).where(S.c.id == _P("sid"), S.c.status == SubscriberStatus.ACTIVE)
_FENCE = D.c.claimed_by == _P("me")  # shared sends: only the claimer may start it
_CORE = {
    "start": sa.update(D)
    .where(D.c.id == _P("did"), D.c.status.in_(DeliveryStatus.OPEN), _ACTIVE.exists())
    .values(
        status=DeliveryStatus.SENDING,
        message_id=_P("mid"),
        attempts=D.c.attempts + 1,
        updated_at=_P("now"),
    ),
    "skip": sa.update(D)
    .where(D.c.id == _P("did"), D.c.status.in_(DeliveryStatus.OPEN))
    .values(status=DeliveryStatus.SKIPPED, updated_at=_P("now"), last_error=_P("why")),
    "finish": sa.update(D)
    .where(D.c.id == _P("did"))
    .values(
        status=_P("status"),
        last_error=_P("error"),
        updated_at=_P("now"),
        sent_at=_P("sent_at"),
        next_attempt_at=_P("next_at"),
        claimed_by=None,
        lease_until=None,
    ),
    "bounce": sa.update(S)
    .where(S.c.id == _P("sid"), S.c.status == SubscriberStatus.ACTIVE)
    .values(status=SubscriberStatus.BOUNCED, updated_at=_P("now")),
}
_CLAIMED = {
    **_CORE,
    "start": _CORE["start"].where(_FENCE),
    "skip": _CORE["skip"].where(_FENCE),
}
#: The same statements for SQLite's driver; the states are bound like any value
#: (`_STATES`), so that they come from the enums as in the Core statements.
_SQLITE = {
    "start": "UPDATE delivery SET status = :sending, message_id = :mid,"
    " attempts = attempts + 1, updated_at = :now"
    " WHERE id = :did AND status IN (:pending, :deferred) AND EXISTS"
    " (SELECT 1 FROM subscriber WHERE id = :sid AND status = :active)",
    "skip": "UPDATE delivery SET status = :skipped, updated_at = :now, last_error = :why"
    " WHERE id = :did AND status IN (:pending, :deferred)",
    "finish": "UPDATE delivery SET status = :status, last_error = :error, updated_at = :now,"
    " sent_at = :sent_at, next_attempt_at = :next_at WHERE id = :did",
    "bounce": "UPDATE subscriber SET status = :bounced, updated_at = :now"
    " WHERE id = :sid AND status = :active",
}
#: A plain `sent` outcome, the common case, recorded for many rows at once.
_SQLITE_SENT = (
    "UPDATE delivery SET status = ?, last_error = NULL, updated_at = ?, sent_at = ?,"
    " next_attempt_at = NULL WHERE id = ?"
)
_SENT = DeliveryStatus.SENT.value
#: The same bulk writes for psycopg (PostgreSQL); `claimed_by` is cleared as in "finish".
_PG_SENT = (
    "UPDATE delivery SET status = %(sent)s, last_error = NULL, updated_at = %(now)s,"
    " sent_at = %(now)s, next_attempt_at = NULL, claimed_by = NULL, lease_until = NULL"
    " WHERE id = ANY(%(done)s)"
)
_PG_START = (
    "UPDATE delivery AS d SET status = %(sending)s, message_id = v.mid,"
    " attempts = d.attempts + 1, updated_at = %(now)s"
    " FROM unnest(%(ids)s::bigint[], %(mids)s::text[]) AS v(id, mid)"
    " WHERE d.id = v.id AND d.status IN (%(pending)s, %(deferred)s) AND EXISTS"
    " (SELECT 1 FROM subscriber AS s WHERE s.id = d.subscriber_id AND s.status = %(active)s)"
)
_PG_START_FENCED = _PG_START + " AND d.claimed_by = %(me)s RETURNING d.id"
_PG_START += " RETURNING d.id"
#: The common commit in one statement, run on its own (autocommit): the `sent` outcomes
#: and the sending marks in one round trip instead of four (BEGIN, two UPDATEs, COMMIT).
#: The two UPDATEs touch different rows (a delivery is finished only after it was started).
_PG_BOTH = f"WITH done AS ({_PG_SENT} RETURNING 1) {{start}}"
_PG_BOTH_FENCED = _PG_BOTH.format(start=_PG_START_FENCED)
_PG_BOTH = _PG_BOTH.format(start=_PG_START)
_STATES = {
    "pending": DeliveryStatus.PENDING.value,  # pending and deferred: DeliveryStatus.OPEN
    "deferred": DeliveryStatus.DEFERRED.value,
    "sending": DeliveryStatus.SENDING.value,
    "skipped": DeliveryStatus.SKIPPED.value,
    "active": SubscriberStatus.ACTIVE.value,
    "bounced": SubscriberStatus.BOUNCED.value,
}


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
            raw = conn.connection.driver_connection
            if raw is not None:
                raw.execute(f"PRAGMA synchronous={'FULL' if on else 'NORMAL'}")
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
            if postgres and all(done.status == _SENT for done in finished):
                return self._one_statement(conn, writes)
            return _retried(lambda: self._transaction(conn, writes))

    def _transaction(self, conn: Connection, writes: Writes) -> list[bool | None]:
        with conn.begin():
            if conn.dialect.name == "postgresql":
                return self._apply_postgres(conn, writes)
            return self._apply(self._core_runner(conn), writes)

    def _one_statement(self, conn: Connection, writes: Writes) -> list[bool | None]:
        """The common commit on PostgreSQL (only `sent` outcomes): one statement in its
        own transaction (`_PG_BOTH`). A start it could not mark (its subscriber left, or
        it is no longer ours) is settled after, in a transaction of its own: not marked,
        it was not sent, so nothing is lost in between."""
        raw = conn.connection.driver_connection
        if raw is None:
            raise RuntimeError("the PostgreSQL connection is closed")
        ordered = sorted(writes.starts, key=lambda start: start[0].delivery_id)
        params = {
            **_STATES,
            "sent": _SENT,
            "now": writes.now,
            "done": sorted(d.recipient.delivery_id for d in writes.finished),
            "ids": [r.delivery_id for r, _ in ordered],
            "mids": [m for _, m in ordered],
            "me": self.worker_id,
        }
        statement = _PG_BOTH if self.worker_id is None else _PG_BOTH_FENCED

        def run() -> set[int]:
            raw.autocommit = True  # the statement is its transaction (synchronous_commit on)
            try:
                return {row[0] for row in raw.execute(statement, params).fetchall()}
            finally:
                raw.autocommit = False

        taken = _retried(run)
        allowed: list[bool | None] = []
        for start in writes.starts:
            if start[0].delivery_id in taken:
                allowed.append(True)
            else:
                rest = Writes([], [start], writes.now)
                allowed.append(_retried(partial(self._transaction, conn, rest))[0])
        return allowed

    def _apply_postgres(self, conn: Connection, writes: Writes) -> list[bool | None]:
        """`_apply` on psycopg directly: the plain `sent` outcomes in one UPDATE, the
        sending marks in one UPDATE ... FROM unnest(...) RETURNING; the rare rest (other
        outcomes, starts that did not take) row by row through Core, in the same
        transaction. Through Core each statement cost a round trip and its compile."""
        finished, starts, now = writes.finished, writes.starts, writes.now
        raw = conn.connection.driver_connection
        if raw is None:
            raise RuntimeError("the PostgreSQL connection is closed")
        cursor = raw.cursor()
        sent = sorted(d.recipient.delivery_id for d in finished if d.status == _SENT)
        if sent:
            cursor.execute(_PG_SENT, {"sent": _SENT, "now": now, "done": sent})
        run = self._core_runner(conn)
        for done in finished:
            if done.status != _SENT:
                self._finish(run, done, now)
        if not starts:
            return []
        ordered = sorted(starts, key=lambda start: start[0].delivery_id)
        params = {
            **_STATES,
            "now": now,
            "ids": [r.delivery_id for r, _ in ordered],
            "mids": [m for _, m in ordered],
            "me": self.worker_id,
        }
        cursor.execute(_PG_START if self.worker_id is None else _PG_START_FENCED, params)
        taken = {row[0] for row in cursor.fetchall()}
        allowed: list[bool | None] = []
        for start in starts:
            if start[0].delivery_id in taken:
                allowed.append(True)
            else:  # its subscriber left (skip it), or it is no longer ours or open
                allowed.append(self._apply(run, Writes([], [start], now))[0])
        return allowed

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
        statements = _CORE if self.worker_id is None else _CLAIMED

        def run(name: str, params: dict[str, Any]) -> int:
            return conn.execute(statements[name], params).rowcount

        return run

    def _commit_sqlite(self, conn: Connection, writes: Writes) -> list[bool | None]:
        finished, starts, now = writes.finished, writes.starts, writes.now
        raw = conn.connection.driver_connection  # sqlite3, autocommit (see db.py)
        if raw is None:
            raise RuntimeError("the SQLite connection is closed")
        cursor = raw.cursor()

        def run(name: str, params: dict[str, Any]) -> int:
            for key in ("now", "sent_at", "next_at"):
                if key in params:
                    params[key] = _sqlite_time(params[key])
            return cursor.execute(_SQLITE[name], params | _STATES).rowcount

        cursor.execute("BEGIN IMMEDIATE")
        try:
            stamp = _sqlite_time(now)
            rest = self._sent_in_bulk(cursor, finished, stamp)
            for done in rest:
                self._finish(run, done, now)
            allowed = self._start_in_bulk(cursor, starts, stamp)
            for i, ok in enumerate(allowed):
                if ok is None:  # not started: its subscriber left, or it is not open
                    allowed[i] = self._apply(run, Writes([], [starts[i]], now))[0]
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
        sent = [(done.recipient.delivery_id,) for done in finished if done.status == _SENT]
        if sent:
            cursor.executemany(_SQLITE_SENT, [(_SENT, stamp, stamp, did) for (did,) in sent])
        return [done for done in finished if done.status != _SENT]

    @staticmethod
    def _start_in_bulk(
        cursor: Any, starts: Sequence[tuple[Recipient, str]], stamp: str | None
    ) -> list[bool | None]:
        """Mark all starts `sending` in one executemany; True where the mark took (read
        back by message id: executemany gives one total row count), None elsewhere."""
        if not starts:
            return []
        params = [
            dict(_STATES, did=r.delivery_id, sid=r.subscriber_id, mid=m, now=stamp)
            for r, m in starts
        ]
        cursor.executemany(_SQLITE["start"], params)
        ids = [r.delivery_id for r, _ in starts]
        marks = ",".join("?" * len(ids))
        taken = {
            row[0]
            for row in cursor.execute(
                f"SELECT message_id FROM delivery WHERE id IN ({marks}) AND status = ?",  # noqa: S608 - only placeholders
                [*ids, _STATES["sending"]],
            )
        }
        return [True if m in taken else None for _, m in starts]
