"""`newsletter send`: feed -> Story rows -> Issue -> Delivery rows, resumably.

Order of a run: fetch and parse the feed first (a broken feed stops the run
before anything is sent or written); take the send lock; turn deliveries a
crash left `sending` into `unknown`; finish any unfinished issue; then make
an issue of the new stories and deliver it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter import issues as issue_store
from newsletter.config import Settings
from newsletter.delivery import Policy, Report, Sender, due_recipients, recover
from newsletter.errors import NewsletterError
from newsletter.feed import Feed, FeedStory, FetchResult, fetch_feed, parse_feed
from newsletter.message import MessageTemplate, message_date
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, Story, utcnow
from newsletter.render import UNSUBSCRIBE_URL
from newsletter.sendlock import SendLockHolder
from newsletter.transport import TransportFactory, transport_factory
from newsletter.verp import envelope_sender

D = Delivery.__table__
ProgressFactory = Callable[[int, str], AbstractContextManager[Callable[[int], None]]]


@dataclass
class SendOptions:
    dry_run: bool = False
    preview: Path | None = None
    to: str | None = None
    baseline: bool = False
    max_stories: int = 10
    min_stories: int = 1
    retry_unknown: bool = False
    retry_failed: bool = False


@dataclass
class IssueResult:
    issue_id: int
    subject: str
    report: Report
    resumed: bool
    finished: bool


@dataclass
class SendResult:
    """What happened, for the CLI to print; `error` is raised by the CLI after printing."""

    notes: list[str] = field(default_factory=list)
    issues: list[IssueResult] = field(default_factory=list)
    stories: Sequence[FeedStory | Story] = ()
    recipients: int = 0
    destination: str = ""
    error: NewsletterError | None = None


def _no_progress(total: int, label: str) -> AbstractContextManager[Callable[[int], None]]:
    return nullcontext(lambda n: None)


def policy_from(settings: Settings) -> Policy:
    return Policy(
        connections=settings.smtp_connections if settings.smtp else 1,
        rate=settings.send_rate,
        retry_delays=settings.retry_delays,
        max_age=timedelta(hours=settings.retry_max_age_hours),
    )


def read_feed(engine: Engine | None, settings: Settings) -> tuple[Feed | None, FetchResult]:
    """Fetch (conditionally, when the validators are known) and parse the feed."""
    settings.require("feed_url")
    assert settings.feed_url is not None
    etag = modified = None
    if engine is not None and settings.feed_url.startswith(("http://", "https://")):
        etag, modified = issue_store.feed_validators(engine, settings.feed_url)
    fetched = fetch_feed(settings.feed_url, etag=etag, last_modified=modified)
    if fetched.data is None:
        return None, fetched
    return parse_feed(fetched.data, base_url=fetched.url), fetched


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
) -> IssueResult:
    """Send every due delivery of `issue`, with in-run retries of deferred ones."""
    assert issue.id is not None and settings.from_address is not None
    policy = policy or policy_from(settings)
    template = MessageTemplate(
        settings, subject=issue.subject, html=issue.html, text=issue.text, issue_id=issue.id
    )
    report = Report()
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
        if total == 0:
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
        )
        with progress(total, label) as tick:
            sender.progress = tick
            sender.run(due_recipients(engine, issue.id, now=utcnow()))
        if report.stopped is not None:
            break
    finished = _finish_if_done(engine, issue.id)
    return IssueResult(issue.id, issue.subject, report, resumed, finished)


def _due_count(engine: Engine, issue_id: int) -> int:
    now = utcnow()
    query = sa.select(sa.func.count()).where(
        D.c.issue_id == issue_id,
        sa.or_(
            D.c.status == DeliveryStatus.PENDING,
            sa.and_(
                D.c.status == DeliveryStatus.DEFERRED,
                sa.or_(D.c.next_attempt_at.is_(None), D.c.next_attempt_at <= now),
            ),
        ),
    )
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
    """An issue is sent once no delivery is left to attempt."""
    open_states = (DeliveryStatus.PENDING, DeliveryStatus.DEFERRED, DeliveryStatus.SENDING)
    with engine.connect() as conn, conn.execution_options(sqlite_begin="IMMEDIATE").begin():
        left = conn.execute(
            sa.select(sa.func.count()).where(D.c.issue_id == issue_id, D.c.status.in_(open_states))
        ).scalar_one()
        if left:
            return False
        conn.execute(
            sa.update(Issue.__table__)
            .where(Issue.__table__.c.id == issue_id)
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
        count = conn.execute(
            sa.update(D)
            .where(D.c.status.in_(states))
            .values(status=DeliveryStatus.PENDING, next_attempt_at=None, updated_at=utcnow())
        ).rowcount
        if issue_ids:
            conn.execute(
                sa.update(ISSUES)
                .where(ISSUES.c.id.in_(issue_ids))
                .values(status=IssueStatus.SENDING, finished_at=None)
            )
    return count


def send_test_copy(
    settings: Settings,
    stories: Sequence[FeedStory | Story],
    feed: Feed,
    to: str,
    factory: TransportFactory,
) -> str:
    """--to: one copy to one address, recorded nowhere; returns the server's reply."""
    rendered = issue_store.render_preview(stories, settings, feed)
    template = MessageTemplate(
        settings, subject=rendered.subject, html=rendered.html, text=rendered.text, issue_id=None
    )
    assert settings.from_address is not None
    data = template.personalise(
        to, None, "test-copy", message_id=template.new_message_id(), date=message_date()
    )
    with factory() as transport:
        reply = transport.send(envelope_sender(settings, None), to, data)
    if not reply.ok:
        raise NewsletterError(f"the test copy to {to} was refused: {reply}")
    return str(reply)


def run_send(
    engine: Engine,
    settings: Settings,
    options: SendOptions,
    *,
    factory: TransportFactory | None = None,
    progress: ProgressFactory = _no_progress,
) -> SendResult:
    """The whole `newsletter send`. Raises NewsletterError before anything is sent."""
    settings.require("feed_url", "from_address", "postal_address")
    # Real SMTP connections run in child processes (threads gain little under the GIL).
    use_processes = factory is None and settings.smtp is not None
    factory = factory or transport_factory(settings)
    result = SendResult()
    feed, fetched = read_feed(engine, settings)
    if feed is None:
        result.notes.append("The feed has not changed since the last fetch (HTTP 304).")
        feed = Feed(title="", link=None, stories=[])
    plan = issue_store.plan_issue(engine, feed, max_stories=options.max_stories)
    result.recipients = plan.recipients

    if options.to or options.preview or options.dry_run:
        stories: Sequence[FeedStory | Story] = plan.new
        if not stories and (options.to or options.preview):
            stories = feed.stories[: options.max_stories]
            result.notes.append("No new stories: using the latest stories of the feed instead.")
        result.stories = stories
        if options.preview and stories:
            html = issue_store.render_preview(stories, settings, feed).html
            html = html.replace(UNSUBSCRIBE_URL, settings.url("unsubscribe/preview"))
            options.preview.write_text(html, encoding="utf-8")
            result.notes.append(f"Preview written to {options.preview}.")
        if options.to and stories:
            reply = send_test_copy(settings, stories, feed, options.to, factory)
            result.notes.append(f"Test copy sent to {options.to} ({reply}).")
        return result

    if options.baseline:
        count = issue_store.baseline(engine, feed, fetched=fetched)
        result.notes.append(f"Recorded {count} stories as already sent; nothing was sent.")
        return result

    with SendLockHolder(engine) as lock:
        if lock.took_over is not None:
            result.notes.append(
                f"Took over the lock of an interrupted send (pid {lock.took_over.pid})."
            )
        lost = recover(engine)
        if lost:
            result.notes.append(
                f"{lost} deliveries were interrupted mid-send and are marked unknown "
                "(not resent; use --retry-unknown to resend them)."
            )
        reopened = reopen(engine, unknown=options.retry_unknown, failed=options.retry_failed)
        if reopened:
            result.notes.append(f"{reopened} deliveries put back in the queue.")
        for issue in issue_store.unfinished_issues(engine):
            done = deliver(
                engine,
                settings,
                issue,
                factory=factory,
                progress=progress,
                resumed=True,
                use_processes=use_processes,
            )
            result.issues.append(done)
            if done.report.stopped is not None:
                result.error = done.report.stopped
                return result
        created = issue_store.create_issue(
            engine,
            settings,
            feed,
            fetched=fetched,
            max_stories=options.max_stories,
            min_stories=options.min_stories,
        )
        result.stories = created.stories
        result.recipients = created.recipients
        if created.issue is None:
            result.notes.append(f"Nothing new to send: {created.reason}.")
            return result
        if created.skipped:
            result.notes.append(
                f"{created.skipped} older new stories were left out (--max-stories "
                f"{options.max_stories}) and recorded as sent."
            )
        done = deliver(
            engine,
            settings,
            created.issue,
            factory=factory,
            progress=progress,
            use_processes=use_processes,
        )
        result.issues.append(done)
        result.error = done.report.stopped
    return result
