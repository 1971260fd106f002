"""`newsletter send`, the whole command: feed -> Story rows -> Issue -> Delivery rows, resumably.

Order of a run: fetch and parse the feed first (a broken feed stops the run
before anything is sent or written); take the send lock (lock.py); turn
deliveries a crash left `sending` into `unknown` and reopen what
--retry-unknown/--retry-failed ask for (queue.py); finish any unfinished issue;
then make an issue of the new stories and deliver it (deliver.py). --preview,
--to and --dry-run record nothing; --baseline records the stories as sent.

NEWSLETTER_ISSUE_PER=story makes one issue per new story, oldest first, each
created (in its own transaction) only after the one before was delivered: a
crash between two issues leaves the rest of the stories new, and the next run
finishes the interrupted issue, then goes on with them. --max-stories caps the
issues of one run; the newer stories wait for the next run (none is skipped).
NEWSLETTER_MIN_INTERVAL (--min-interval) makes no new issue until that long
after the newest issue was created; such a run still records the feed's new
stories and finishes unfinished issues. It is checked once, before a run's
first new issue: with ISSUE_PER=story it spaces the runs that make issues.

On PostgreSQL there is no exclusive send lock: every `newsletter send` (on
any host) registers as a worker (registry.py) and helps with the unfinished
issues by claiming batches (claims.py); only the making of a new issue is
serialised (an advisory lock), so two workers never freeze the same stories
twice, and a worker that finds nothing new helps with the issue another one
just made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

from sqlalchemy.engine import Engine

from newsletter.config import Settings
from newsletter.errors import FeedError, LoginRefused, NewsletterError, TransportError
from newsletter.issues import create as issue_store
from newsletter.issues.feed import Feed, FeedStory, FetchResult, fetch_feed, parse_feed
from newsletter.issues.render import fill_unsubscribe
from newsletter.mail.dkim import load_key
from newsletter.mail.message import MessageTemplate, message_date
from newsletter.mail.transport import TransportFactory, transport_factory
from newsletter.mail.verp import check_verp_settings, envelope_sender
from newsletter.models import Issue, Story, utcnow
from newsletter.sending.claims import shared_sends
from newsletter.sending.deliver import IssueResult, ProgressFactory, _no_progress, deliver
from newsletter.sending.lock import SendLockHolder, creation_lock
from newsletter.sending.pacing import Limiter, SharedRateLimiter
from newsletter.sending.policy import policy_from
from newsletter.sending.queue import recover, reopen
from newsletter.sending.registry import WorkerRegistry

__all__ = ["IssueResult", "SendOptions", "SendResult", "deliver", "policy_from", "run_send"]


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
    #: --issue-per: "send" or "story" for this run (None: NEWSLETTER_ISSUE_PER)
    issue_per: str | None = None
    #: --min-interval for this run (None: NEWSLETTER_MIN_INTERVAL; zero: no minimum)
    min_interval: timedelta | None = None

    def per_story(self, settings: Settings) -> bool:
        return (self.issue_per or settings.issue_per) == "story"

    def interval(self, settings: Settings) -> timedelta | None:
        if self.min_interval is not None:
            return self.min_interval or None
        return settings.min_interval


@dataclass
class SendResult:
    """What happened, for the CLI to print; `error` is raised by the CLI after printing."""

    notes: list[str] = field(default_factory=list)
    issues: list[IssueResult] = field(default_factory=list)
    stories: Sequence[FeedStory | Story] = ()
    recipients: int = 0
    destination: str = ""
    error: NewsletterError | None = None
    #: why no new issue was made ("no new stories"), told after any resumed issue
    nothing_new: str | None = None
    #: --preview/--to with no new story: `stories` are the feed's latest instead
    latest: bool = False
    #: the minimum interval has not passed: "Not yet: the last issue went out ..." (exit 0)
    not_yet: str | None = None
    #: ids of the issues this run created (ISSUE_PER=story: up to --max-stories of them)
    issues_made: list[int] = field(default_factory=list)


def read_feed(
    engine: Engine | None, settings: Settings, *, conditional: bool = True
) -> tuple[Feed | None, FetchResult]:
    """Fetch and parse the feed; conditionally (ETag, Last-Modified) only when asked and
    the validators are known. A run that records nothing asks unconditionally: a 304
    would leave it no stories to show, as it records none for the next run either."""
    settings.require("feed_url")
    url = cast(str, settings.feed_url)  # set: require() raised otherwise
    etag = modified = None
    http = url.startswith(("http://", "https://"))
    if conditional and engine is not None and http:
        etag, modified = issue_store.feed_validators(engine, url)
    fetched = fetch_feed(url, etag=etag, last_modified=modified)
    if fetched.data is None:
        return None, fetched
    return parse_feed(fetched.data, base_url=fetched.url), fetched


def send_test_copy(
    settings: Settings,
    stories: Sequence[FeedStory | Story],
    feed: Feed,
    to: str,
    factory: TransportFactory,
) -> str:
    """--to: one copy to one address, recorded nowhere; returns the server's reply.

    Any failure (the login, the connection, a refusal) is an error naming the test copy:
    staff must never mistake a copy that did not go for one that did.
    """
    rendered = issue_store.render_preview(stories, settings, feed)
    template = MessageTemplate(
        settings, subject=rendered.subject, html=rendered.html, text=rendered.text, issue_id=None
    )
    settings.require("from_address")
    data = template.personalise(
        to, None, "test-copy", message_id=template.new_message_id(), date=message_date()
    )
    try:
        with factory() as transport:
            reply = transport.send(envelope_sender(settings, None), to, data)
    except LoginRefused as exc:
        raise LoginRefused(f"the test copy to {to} was not sent: {exc.message}") from None
    except TransportError as exc:
        raise NewsletterError(
            f"the test copy to {to} was not sent: {exc.message}",
            hint="Check NEWSLETTER_SMTP_URL and that the server is reachable; "
            "nothing was recorded.",
        ) from None
    if not reply.ok:
        raise NewsletterError(f"the test copy to {to} was refused: {reply}")
    return str(reply)


def check_settings(settings: Settings, options: SendOptions) -> None:
    """Every setting this run needs, all named at once (the CLI asks before opening the
    database); only a run that mails someone needs an SMTP URL or an outbox."""
    delivers = bool(options.to) or not (options.preview or options.dry_run or options.baseline)
    settings.require("feed_url", "from_address", "postal_address", destination=delivers)


def run_send(
    engine: Engine,
    settings: Settings,
    options: SendOptions,
    *,
    factory: TransportFactory | None = None,
    progress: ProgressFactory = _no_progress,
) -> SendResult:
    """The whole `newsletter send`. Raises NewsletterError before anything is sent."""
    check_settings(settings, options)
    load_key(settings)  # a bad DKIM key or VERP setup stops here, before any issue exists
    check_verp_settings(settings)
    # Real SMTP connections run in child processes (threads gain little under the GIL).
    use_processes = factory is None and settings.smtp is not None
    factory = factory or transport_factory(settings)
    result = SendResult()
    trial = bool(options.to or options.preview or options.dry_run)  # records nothing
    feed, fetched = read_feed(engine, settings, conditional=not trial)
    if feed is None:
        result.notes.append("The feed has not changed since the last fetch (HTTP 304).")
        feed = Feed(title="", link=None, stories=[])
    per_story = options.per_story(settings)
    plan = issue_store.plan_issue(
        engine, feed, max_stories=options.max_stories, per_story=per_story
    )
    result.recipients = plan.recipients

    if trial:
        stories: Sequence[FeedStory | Story] = plan.new
        if not stories and (options.to or options.preview):
            stories = feed.stories[: options.max_stories]
            if not stories:
                what = "preview" if options.preview else "test copy"
                raise FeedError(f"the feed has no stories: there is nothing to {what}.")
            result.latest = True
        if per_story:  # each story is an issue of its own: show (and send) the next one
            stories = stories[:1] if options.to or options.preview else stories
            if options.dry_run and stories:
                result.notes.append(
                    f"NEWSLETTER_ISSUE_PER=story: each of these {len(stories)} stories would "
                    "go out as an issue of its own, oldest first."
                )
        due = issue_store.next_issue_due(engine, options.interval(settings), utcnow())
        if options.dry_run and due is not None:
            waiting = len(plan.new) + len(plan.over_cap)
            result.notes.append(_not_yet(engine, due, waiting=waiting))
        result.stories = stories
        if options.preview and stories:
            html = issue_store.render_preview(stories, settings, feed).html
            html = fill_unsubscribe(html, settings.url("unsubscribe/preview"))
            _write_preview(options.preview, html)
            result.notes.append(f"Preview written to {options.preview}.")
        if options.to and stories:
            reply = send_test_copy(settings, stories, feed, options.to, factory)
            result.notes.append(f"Test copy sent to {options.to} ({reply}).")
        return result

    if options.baseline:
        count = issue_store.baseline(engine, feed, fetched=fetched)
        result.notes.append(f"Recorded {count} stories as already sent; nothing was sent.")
        return result

    shared = shared_sends(engine)
    with _exclusive(engine, result, shared), WorkerRegistry(engine) as me:
        limiter: Limiter | None = None
        if shared and settings.send_rate:
            limiter = SharedRateLimiter(engine, settings.send_rate)

        def run(issue: Issue, resumed: bool) -> IssueResult:
            done = deliver(
                engine,
                settings,
                issue,
                factory=factory,
                progress=progress,
                resumed=resumed,
                use_processes=use_processes,
                registry=me,
                limiter=limiter,
            )
            result.issues.append(done)
            if done.report.recovered:
                result.notes.append(
                    f"{done.report.recovered} deliveries of a worker that died mid-send are "
                    "marked unknown (not resent; use --retry-unknown to resend them)."
                )
            result.error = done.report.stopped
            return done

        _send_issues(engine, settings, options, feed, fetched, result, run, shared)
    return result


def _write_preview(path: Path, html: str) -> None:
    """Write the preview, or say in one line why it could not be written."""
    try:
        path.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise NewsletterError(
            f"cannot write the preview to {path}: {exc.strerror or exc}"
        ) from None


@contextmanager
def _exclusive(engine: Engine, result: SendResult, shared: bool) -> Iterator[None]:
    """The send lock, on databases where only one send may run at a time."""
    if shared:
        yield
        return
    with SendLockHolder(engine) as lock:
        if lock.took_over is not None:
            result.notes.append(
                f"Took over the lock of an interrupted send (pid {lock.took_over.pid})."
            )
        yield


def _send_issues(
    engine: Engine,
    settings: Settings,
    options: SendOptions,
    feed: Feed,
    fetched: FetchResult,
    result: SendResult,
    run: Callable[[Issue, bool], IssueResult],
    shared: bool,
) -> None:
    """Recover, finish unfinished issues, then make and send a new one (with `run`)."""
    lost = recover(engine)
    if lost:
        result.notes.append(
            f"{lost} deliveries were interrupted mid-send and are marked unknown "
            "(not resent; use --retry-unknown to resend them)."
        )
    reopened = reopen(engine, unknown=options.retry_unknown, failed=options.retry_failed)
    if reopened:
        result.notes.append(f"{reopened} deliveries put back in the queue.")
    if not _help_unfinished(engine, result, run):
        return
    per_story = options.per_story(settings)
    made: list[Story] = []
    while True:
        with creation_lock(engine) if shared else nullcontext():
            created = _next_issue(engine, settings, options, feed, fetched, result, made)
        if created is None:  # not due yet
            if shared:  # another worker may have just made the last issue: help with it
                _help_unfinished(engine, result, run)
            return
        if created.issue is None and made:
            return  # every new story went out, each as its own issue
        made += created.stories
        if not _new_issue(engine, options, result, run, shared, created, made):
            return
        if not per_story:
            return
        if len(result.issues_made) >= options.max_stories:
            waiting = issue_store.waiting_stories(engine)
            if waiting:
                result.notes.append(
                    f"{waiting} newer {'story waits' if waiting == 1 else 'stories wait'} "
                    f"for the next run (--max-stories {options.max_stories} issues a run)."
                )
            return


def _next_issue(
    engine: Engine,
    settings: Settings,
    options: SendOptions,
    feed: Feed,
    fetched: FetchResult,
    result: SendResult,
    made: list[Story],
) -> issue_store.Created | None:
    """Make the run's next issue, or None when the minimum interval has not passed (then
    the feed's stories are only recorded and `result` says why)."""
    if not made:  # the cadence spaces the runs that make issues, not the issues of one run
        due = issue_store.next_issue_due(engine, options.interval(settings), utcnow())
        if due is not None:
            waiting = issue_store.record_only(engine, feed, fetched=fetched)
            if waiting:
                result.not_yet = _not_yet(engine, due, waiting=waiting)
            else:
                result.nothing_new = "no new stories"
            return None
    return issue_store.create_issue(
        engine,
        settings,
        feed,
        fetched=fetched,
        max_stories=options.max_stories,
        min_stories=1 if made else options.min_stories,
        per_story=options.per_story(settings),
    )


def _not_yet(engine: Engine, due: datetime, *, waiting: int) -> str:
    """The exit-0 sentence of a run the minimum interval holds back."""
    last = issue_store.last_issue_at(engine)
    ago = "" if last is None else f"went out {_ago(utcnow() - last)}, "
    stories = "1 new story waits" if waiting == 1 else f"{waiting} new stories wait"
    return f"Not yet: the last issue {ago}next one after {due:%Y-%m-%d %H:%M} UTC ({stories})."


def _ago(age: timedelta) -> str:
    """'3 days ago', '5 hours ago', '12 minutes ago': the unit a reader would use."""
    seconds = max(0, int(age.total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return "just now"


def _new_issue(
    engine: Engine,
    options: SendOptions,
    result: SendResult,
    run: Callable[[Issue, bool], IssueResult],
    shared: bool,
    created: issue_store.Created,
    made: list[Story],
) -> bool:
    """Send the issue just made (or say why none was); False when the run must stop."""
    result.stories = made
    if created.held_back:
        result.notes.append(
            f"{created.held_back} older new stories were kept for the next issue, so that "
            "this email stays under Gmail's clipping size."
        )
    for title in created.truncated_story_titles:
        result.notes.append(
            f'"{title}" alone passes Gmail\'s clipping size: it was cut at a paragraph '
            'boundary and ends with "Continue reading on the site".'
        )
    result.recipients = created.recipients
    if created.issue is None:
        result.nothing_new = created.reason
        if shared:  # another worker may have just made one: help with it
            _help_unfinished(engine, result, run)
        return False
    if created.skipped:
        result.notes.append(
            f"{created.skipped} older new stories were left out (--max-stories "
            f"{options.max_stories}) and recorded as sent."
        )
    result.issues_made.append(created.issue.id or 0)
    return run(created.issue, False).report.stopped is None


def _help_unfinished(
    engine: Engine, result: SendResult, run: Callable[[Issue, bool], IssueResult]
) -> bool:
    """Work on every unfinished issue not worked on yet; False when the run must stop."""
    seen = {done.issue_id for done in result.issues}
    for issue in issue_store.unfinished_issues(engine):
        if issue.id in seen:
            continue
        if run(issue, True).report.stopped is not None:
            return False
    return True
