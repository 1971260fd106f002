"""The delivery queue of an issue: which deliveries are due, and the moves around a pass.

Due: `pending`, or `deferred` and its retry time has come (`is_due`). Around
the passes of a send: `recover` turns what a crash left `sending` into
`unknown` (the server may have it, so never back to pending), and
`settle_erased` skips what no subscriber is left for; `reopen` puts
unknown or failed deliveries back to pending on purpose (--retry-unknown,
--retry-failed); `finish_if_done` marks an issue sent once none of its
deliveries is unfinished (DeliveryStatus.UNFINISHED).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.db import write_transaction
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Subscriber,
    table_of,
    utcnow,
)
from newsletter.sending.claims import LOST, id_span, reap, shared_sends
from newsletter.sending.work import Recipient

D = table_of(Delivery)
S = table_of(Subscriber)
ISSUES = table_of(Issue)
#: Deliveries read per query by `due_recipients` (memory stays flat on any list).
PAGE = 1000


def is_due(now: datetime) -> sa.ColumnElement[bool]:
    """A delivery to attempt now: pending, or deferred and its retry time has come."""
    return sa.or_(
        D.c.status == DeliveryStatus.PENDING,
        sa.and_(
            D.c.status == DeliveryStatus.DEFERRED,
            sa.or_(D.c.next_attempt_at.is_(None), D.c.next_attempt_at <= now),
        ),
    )


def due_recipients(engine: Engine, issue_id: int, *, now: datetime) -> Iterator[Recipient]:
    """Due deliveries of the issue, by id, in pages (one sender per database: SQLite);
    each page a walk of the primary key within the issue's ids (claims.id_span)."""
    first, top = id_span(engine, issue_id)
    last = first - 1
    while True:
        query = (
            sa.select(D.c.id, S.c.id, S.c.email, S.c.name, S.c.token, D.c.attempts)
            .join(S, S.c.id == D.c.subscriber_id)
            .where(
                D.c.issue_id == issue_id,
                D.c.id > last,
                D.c.id <= top,
                is_due(now),
            )
            .order_by(D.c.id)
            .limit(PAGE)
        )
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        for row in rows:
            yield Recipient(*row)
        if len(rows) < PAGE:
            return
        last = rows[-1][0]


def due_count(engine: Engine, issue_id: int) -> int:
    """Deliveries of the issue due now (the size of the next pass, for its progress bar)."""
    query = sa.select(sa.func.count()).where(D.c.issue_id == issue_id, is_due(utcnow()))
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


def open_count(engine: Engine, issue_id: int) -> int:
    """Deliveries of the issue a later run still attempts (DeliveryStatus.OPEN)."""
    query = sa.select(sa.func.count()).where(
        D.c.issue_id == issue_id, D.c.status.in_(DeliveryStatus.OPEN)
    )
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


def next_retry_at(engine: Engine, issue_id: int) -> datetime | None:
    """When the earliest deferred delivery of the issue falls due, if any is deferred."""
    query = sa.select(sa.func.min(D.c.next_attempt_at)).where(
        D.c.issue_id == issue_id, D.c.status == DeliveryStatus.DEFERRED
    )
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def others_sending(engine: Engine, issue_id: int) -> bool:
    """Whether other workers still hold pending or in-flight deliveries of the issue
    (shared send: they will finish it)."""
    query = sa.select(sa.func.count()).where(
        D.c.issue_id == issue_id,
        D.c.claimed_by.is_not(None),
        D.c.status.in_((DeliveryStatus.PENDING, DeliveryStatus.SENDING)),
    )
    with engine.connect() as conn:
        return conn.execute(query).scalar_one() > 0


def recover(engine: Engine, issue_id: int | None = None) -> int:
    """Deliveries left `sending` by a crash become `unknown`: the server may have them.

    With one sender per database (SQLite, under the send lock) that is every
    `sending` one; on a shared send only those whose worker is dead (claims.reap).
    """
    if shared_sends(engine):
        return reap(engine, issue_id)
    query = sa.update(D).where(D.c.status == DeliveryStatus.SENDING)
    if issue_id is not None:
        query = query.where(D.c.issue_id == issue_id)
    query = query.values(status=DeliveryStatus.UNKNOWN, last_error=LOST, updated_at=utcnow())
    with write_transaction(engine) as conn:
        return conn.execute(query).rowcount


#: Delivery.last_error of a delivery settled by `settle_erased`
ERASED = "its subscriber was erased: nobody to send it to"


def settle_erased(engine: Engine) -> int:
    """Open deliveries of unfinished issues whose subscriber row is gone become `skipped`.

    A delivery has no foreign key to its subscriber (migration 0007) and `subscribers
    forget` deletes both, so only a hand edit leaves one; the claims join the
    subscriber and would never pick it, and its issue would never end.
    """
    unfinished = sa.select(ISSUES.c.id).where(ISSUES.c.status == IssueStatus.SENDING)
    with engine.connect() as conn:
        issue_ids = list(conn.execute(unfinished).scalars())
    if not issue_ids:  # the common case; a query over them all would scan every delivery
        return 0
    gone = ~sa.exists().where(S.c.id == D.c.subscriber_id)
    query = (
        sa.update(D)
        .where(D.c.issue_id.in_(issue_ids), D.c.status.in_(DeliveryStatus.OPEN), gone)
        .values(status=DeliveryStatus.SKIPPED, last_error=ERASED, updated_at=utcnow())
    )
    with write_transaction(engine) as conn:
        return conn.execute(query).rowcount


def finish_if_done(engine: Engine, issue_id: int) -> bool:
    """An issue is sent once none of its deliveries is unfinished; True when it is sent.

    The issue row is locked first (PostgreSQL), so a concurrent `reopen` either
    comes before the count (and is seen) or after the update (and undoes it).
    """
    with write_transaction(engine) as conn:
        state = conn.execute(
            sa.select(ISSUES.c.status).where(ISSUES.c.id == issue_id).with_for_update()
        ).scalar()
        if state != IssueStatus.SENDING:
            return state == IssueStatus.SENT
        left = conn.execute(
            sa.select(sa.func.count()).where(
                D.c.issue_id == issue_id, D.c.status.in_(DeliveryStatus.UNFINISHED)
            )
        ).scalar_one()
        if left:
            return False
        conn.execute(
            sa.update(ISSUES)
            .where(ISSUES.c.id == issue_id)
            .values(status=IssueStatus.SENT, finished_at=utcnow())
        )
        return True


def reopen(engine: Engine, *, unknown: bool, failed: bool) -> int:
    """--retry-unknown / --retry-failed: put those deliveries back to pending, on purpose,
    and their issues back to sending; returns how many deliveries."""
    states = [
        s for s, on in ((DeliveryStatus.UNKNOWN, unknown), (DeliveryStatus.FAILED, failed)) if on
    ]
    if not states:
        return 0
    with write_transaction(engine) as conn:
        issue_ids = [
            row[0]
            for row in conn.execute(
                sa.select(D.c.issue_id).where(D.c.status.in_(states)).distinct()
            )
        ]
        if issue_ids:  # the issue rows first: the lock order of finish_if_done
            conn.execute(
                sa.update(ISSUES)
                .where(ISSUES.c.id.in_(issue_ids))
                .values(status=IssueStatus.SENDING, finished_at=None)
            )
        return conn.execute(
            sa.update(D)
            .where(D.c.status.in_(states))
            .values(
                status=DeliveryStatus.PENDING,
                next_attempt_at=None,
                updated_at=utcnow(),
                claimed_by=None,
                lease_until=None,
            )
        ).rowcount
