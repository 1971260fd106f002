"""One issue through this process: passes over its due deliveries, then finish it if done.

The first pass sends to every due delivery; the later ones (up to one per
NEWSLETTER_RETRY_DELAYS entry) retry the deferred ones that fall due soon
enough, and a later `newsletter send` takes the rest. On a shared send
(PostgreSQL) a pass takes its deliveries from the batches this worker claims
(claims.Claims) rather than from a plain scan (queue.due_recipients), and the
issue is marked sent by whichever worker finds nothing left unfinished
(queue.finish_if_done).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.config import Settings
from newsletter.mail.message import MessageTemplate
from newsletter.mail.transport import TransportFactory
from newsletter.models import Issue, utcnow
from newsletter.sending import queue
from newsletter.sending.claims import Claims, shared_sends
from newsletter.sending.dispatch import Report, Sender
from newsletter.sending.pacing import Limiter
from newsletter.sending.policy import Policy, policy_from
from newsletter.sending.registry import WorkerRegistry

#: progress(total, label) -> a context whose value `tick(n)` counts n messages done.
ProgressFactory = Callable[[int, str], AbstractContextManager[Callable[[int], None]]]


@dataclass
class IssueResult:
    """What this run did with one issue, for the summary."""

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
    if issue.id is None:
        raise ValueError("deliver() needs an issue saved in the database")
    settings.require("from_address")
    started = time.monotonic()
    policy = policy or policy_from(settings)
    template = MessageTemplate(
        settings, subject=issue.subject, html=issue.html, text=issue.text, issue_id=issue.id
    )
    report = Report()
    claims = None
    if registry is not None and shared_sends(engine):
        claims = Claims(engine, registry.me.id, issue.id)
        _fresh_statistics(engine)
    if registry is not None:  # its heartbeat renews the lease of what `claims` holds
        registry.working_on(issue.id, lambda: report.sent, claims)
    for number in range(1 + len(policy.retry_delays)):
        if number:  # an in-run retry pass, when a deferred delivery falls due soon enough
            wake = queue.next_retry_at(engine, issue.id)
            if wake is None:
                break
            pause = (wake - utcnow()).total_seconds()
            if pause > policy.retry_delays[number - 1] * 1.5:
                break  # too far off: a later `newsletter send` retries it
            time.sleep(max(pause, 0.0))
        total = queue.due_count(engine, issue.id)
        if total == 0 and claims is None:
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
            worker_id=claims.worker_id if claims is not None else None,
        )
        with progress(total, label) as tick:
            sender.progress = tick
            if claims is None:
                sender.run(queue.due_recipients(engine, issue.id, now=utcnow()))
            else:
                try:
                    sender.run(claims.recipients())
                finally:
                    claims.release()  # what this pass claimed and did not start
        if report.stopped is not None:
            break
    if claims is not None:
        report.recovered += claims.reaped
    finished = queue.finish_if_done(engine, issue.id)
    others = not finished and claims is not None and queue.others_sending(engine, issue.id)
    left = 0 if finished else queue.open_count(engine, issue.id)
    elapsed = time.monotonic() - started
    return IssueResult(issue.id, issue.subject, report, resumed, finished, others, elapsed, left)


def _fresh_statistics(engine: Engine) -> None:
    """ANALYZE the tables a send updates by id, once per issue (PostgreSQL).

    Right after an issue's delivery rows are made (or a big import), the planner's
    statistics still describe the tables as nearly empty, and it joins the batch
    updates of ledger.py through every subscriber: measured 9 ms per batch of 8 at
    5,000 subscribers, growing with the list, instead of 0.2 ms by primary key.
    Autovacuum would analyze them, but only a minute or more later. A role that may
    not ANALYZE them only misses the speed-up.
    """
    try:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "ANALYZE delivery, subscriber"
            )
    except sa.exc.DBAPIError:
        pass
