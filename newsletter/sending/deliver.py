"""One issue through one worker: passes over its due deliveries, then finish it if done.

On a shared send (PostgreSQL) the deliveries come from batches this worker
claims (claims.Claims) rather than from a plain scan, and the issue is marked
sent by whichever worker finds nothing left open (under a row lock on the
issue, so that a concurrent --retry-unknown cannot be lost).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.config import Settings
from newsletter.mail.message import MessageTemplate
from newsletter.mail.transport import TransportFactory
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, utcnow
from newsletter.sending.claims import Claims, shared_sends
from newsletter.sending.dispatch import Limiter, Policy, Report, Sender, due_recipients, is_due
from newsletter.sending.registry import WorkerRegistry

D = Delivery.__table__
ProgressFactory = Callable[[int, str], AbstractContextManager[Callable[[int], None]]]


@dataclass
class IssueResult:
    issue_id: int
    subject: str
    report: Report
    resumed: bool
    finished: bool
    others_sending: bool = False  # shared send: other workers still hold some of it
    elapsed: float = 0.0  # seconds this run spent on the issue, for the summary
    left: int = 0  # deliveries still to attempt (pending or deferred) when the run ended


def _no_progress(total: int, label: str) -> AbstractContextManager[Callable[[int], None]]:
    return nullcontext(lambda n: None)


def policy_from(settings: Settings) -> Policy:
    return Policy(
        connections=settings.smtp_connections if settings.smtp else 1,
        rate=settings.send_rate,
        retry_delays=settings.retry_delays,
        max_age=timedelta(hours=settings.retry_max_age_hours),
    )


def deliver(
    engine: Engine,
    settings: Settings,
    issue: Issue,
    *,
    factory: TransportFactory,
    progress: ProgressFactory = _no_progress,
    policy: Policy | None = None,
    resumed: bool = False,
    use_processes: bool = False,
    registry: WorkerRegistry | None = None,
    limiter: Limiter | None = None,
) -> IssueResult:
    """Send every due delivery of `issue`, with in-run retries of deferred ones.

    With a `registry` on a shared-send database, this worker claims batches
    and leaves the rest to the other workers.
    """
    assert issue.id is not None and settings.from_address is not None
    started = time.monotonic()
    policy = policy or policy_from(settings)
    template = MessageTemplate(
        settings, subject=issue.subject, html=issue.html, text=issue.text, issue_id=issue.id
    )
    report = Report()
    shared = registry is not None and shared_sends(engine)
    if registry is not None:
        registry.working_on(issue.id, lambda: report.sent, None)
    for number in range(1 + len(policy.retry_delays)):
        if number:  # an in-run retry pass, when a deferred delivery falls due soon enough
            wake = _next_retry_at(engine, issue.id)
            if wake is None:
                break
            pause = (wake - utcnow()).total_seconds()
            if pause > policy.retry_delays[number - 1] * 1.5:
                break  # too far off: a later `newsletter send` retries it
            time.sleep(max(pause, 0.0))
        total = _due_count(engine, issue.id)
        if total == 0 and not shared:
            continue
        label = f"Issue {issue.id}" + (f" (retry {number})" if number else "")
        sender = Sender(
            engine,
            template,
            factory,
            issue_created=issue.created_at,
            policy=policy,
            report=report,
            use_processes=use_processes,
            limiter=limiter,
            worker_id=registry.id if shared and registry is not None else None,
        )
        claims = None
        if shared and registry is not None:
            claims = Claims(engine, registry.id, issue.id)
            registry.claims = claims
        with progress(total, label) as tick:
            sender.progress = tick
            try:
                if claims is not None:
                    sender.run(claims.recipients())
                else:
                    sender.run(due_recipients(engine, issue.id, now=utcnow()))
            finally:
                if claims is not None:
                    claims.release()
                    report.recovered += claims.reaped
        if report.stopped is not None:
            break
    finished = _finish_if_done(engine, issue.id)
    others = not finished and shared and _others_sending(engine, issue.id)
    left = 0 if finished else _open_count(engine, issue.id)
    elapsed = time.monotonic() - started
    return IssueResult(issue.id, issue.subject, report, resumed, finished, others, elapsed, left)


def _open_count(engine: Engine, issue_id: int) -> int:
    """Deliveries of the issue a later run still attempts (pending or deferred)."""
    query = sa.select(sa.func.count()).where(
        D.c.issue_id == issue_id, D.c.status.in_(tuple(DeliveryStatus.OPEN))
    )
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


def _others_sending(engine: Engine, issue_id: int) -> bool:
    """Whether other workers still hold open deliveries of the issue (they will finish it)."""
    query = sa.select(sa.func.count()).where(
        D.c.issue_id == issue_id,
        D.c.claimed_by.is_not(None),
        D.c.status.in_((DeliveryStatus.PENDING, DeliveryStatus.SENDING)),
    )
    with engine.connect() as conn:
        return conn.execute(query).scalar_one() > 0


def _due_count(engine: Engine, issue_id: int) -> int:
    now = utcnow()
    query = sa.select(sa.func.count()).where(D.c.issue_id == issue_id, is_due(now))
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


def _next_retry_at(engine: Engine, issue_id: int) -> datetime | None:
    """When the earliest deferred delivery of the issue falls due, if any is deferred."""
    query = sa.select(sa.func.min(D.c.next_attempt_at)).where(
        D.c.issue_id == issue_id, D.c.status == DeliveryStatus.DEFERRED
    )
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def _finish_if_done(engine: Engine, issue_id: int) -> bool:
    """An issue is sent once no delivery is left to attempt.

    The issue row is locked first (PostgreSQL), so a concurrent `reopen` either
    comes before the count (and is seen) or after the update (and undoes it).
    """
    ISSUES = Issue.__table__
    open_states = (DeliveryStatus.PENDING, DeliveryStatus.DEFERRED, DeliveryStatus.SENDING)
    with engine.connect() as conn, conn.execution_options(sqlite_begin="IMMEDIATE").begin():
        state = conn.execute(
            sa.select(ISSUES.c.status).where(ISSUES.c.id == issue_id).with_for_update()
        ).scalar()
        if state != IssueStatus.SENDING:
            return state == IssueStatus.SENT
        left = conn.execute(
            sa.select(sa.func.count()).where(D.c.issue_id == issue_id, D.c.status.in_(open_states))
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
    """--retry-unknown / --retry-failed: put those deliveries back to pending, on purpose."""
    states = [
        s for s, on in ((DeliveryStatus.UNKNOWN, unknown), (DeliveryStatus.FAILED, failed)) if on
    ]
    if not states:
        return 0
    ISSUES = Issue.__table__
    with engine.connect() as conn, conn.execution_options(sqlite_begin="IMMEDIATE").begin():
        issue_ids = [
            row[0]
            for row in conn.execute(
                sa.select(D.c.issue_id).where(D.c.status.in_(states)).distinct()
            )
        ]
        if issue_ids:  # the issue rows first: the lock order of _finish_if_done
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
