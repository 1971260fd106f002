"""`newsletter status`: subscribers by status, the last issues and their delivery counts,
and the `newsletter send` workers alive now (heartbeat within the lease) with their rates."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.bounces.record import bounce_counts_by_issue, unmatched_report_count
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    SendLock,
    SendWorker,
    table_of,
    utcnow,
)
from newsletter.sending.lease import LEASE
from newsletter.subscribers.manage import counts_by_status
from newsletter.subscribers.welcome import welcomes_owed

D = table_of(Delivery)


@dataclass
class IssueLine:
    issue_id: int
    created_at: datetime
    status: str
    subject: str
    counts: dict[str, int]
    last_errors: dict[str, str] = field(default_factory=dict)  # delivery status -> last error
    bounces: dict[str, int] = field(default_factory=dict)  # hard/soft/complaint/policy reports


@dataclass
class WorkerLine:
    worker_id: str  # host:pid:random
    host: str
    pid: int
    issue_id: int | None
    sent: int
    started_at: datetime
    heartbeat_at: datetime

    @property
    def rate(self) -> float:
        """Messages per second since the worker started (as of its last heartbeat)."""
        seconds = (self.heartbeat_at - self.started_at).total_seconds()
        return self.sent / seconds if seconds > 0 else 0.0


@dataclass
class StatusReport:
    subscribers: dict[str, int]
    issues: list[IssueLine]
    sending: str | None  # who holds the send lock, if anyone
    workers: list[WorkerLine] = field(default_factory=list)  # alive now
    unmatched_bounces: int = 0  # bounce reports that proved no delivery of ours: nobody suppressed
    welcomes_owed: int = 0  # confirmed readers still waiting for their welcome email


def status_report(engine: Engine, *, limit: int = 5) -> StatusReport:
    subscribers = counts_by_status(engine)
    with engine.connect() as conn:
        ISSUES = table_of(Issue)
        rows = conn.execute(
            sa.select(ISSUES.c.id, ISSUES.c.created_at, ISSUES.c.status, ISSUES.c.subject)
            .order_by(ISSUES.c.id.desc())
            .limit(limit)
        ).all()
        lines = []
        for issue_id, created_at, state, subject in rows:
            counts: dict[str, int] = dict(
                conn.execute(
                    sa.select(D.c.status, sa.func.count())
                    .where(D.c.issue_id == issue_id)
                    .group_by(D.c.status)
                ).all()
            )
            line = IssueLine(
                issue_id,
                created_at,
                state,
                subject,
                {s: counts.get(s, 0) for s in DeliveryStatus.ALL},
            )
            # pending too: a run stopped by the server (a refused login, a refused
            # connection) puts the delivery it was on back to pending, with the reason
            for kind in (
                DeliveryStatus.PENDING,
                DeliveryStatus.DEFERRED,
                DeliveryStatus.FAILED,
                DeliveryStatus.UNKNOWN,
            ):
                error = conn.execute(
                    sa.select(D.c.last_error)
                    .where(
                        D.c.issue_id == issue_id, D.c.status == kind, D.c.last_error.is_not(None)
                    )
                    .order_by(D.c.updated_at.desc())
                    .limit(1)
                ).scalar()
                if error:
                    line.last_errors[kind] = error
            lines.append(line)
        lock = conn.execute(sa.select(table_of(SendLock))).first()
        workers = _workers(conn)
    by_issue = bounce_counts_by_issue(engine)
    for line in lines:
        line.bounces = by_issue.get(line.issue_id, {})
    sending = f"pid {lock.pid} on {lock.host}" if lock else None
    report = StatusReport(subscribers, lines, sending, workers)
    report.unmatched_bounces = unmatched_report_count(engine)
    report.welcomes_owed = welcomes_owed(engine)
    return report


def _workers(conn: sa.Connection) -> list[WorkerLine]:
    W = table_of(SendWorker)
    rows = conn.execute(
        sa.select(
            W.c.id, W.c.host, W.c.pid, W.c.issue_id, W.c.sent, W.c.started_at, W.c.heartbeat_at
        )
        .where(W.c.heartbeat_at >= utcnow() - LEASE)
        .order_by(W.c.started_at)
    ).all()
    return [WorkerLine(*row) for row in rows]
