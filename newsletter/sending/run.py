"""`newsletter send`, the whole command: feed -> Story rows -> Issue -> Delivery rows, resumably.

Order of a run: fetch and parse the feed first (a broken feed stops the run
before anything is sent or written). --preview, --to and --dry-run record
nothing and end there; --baseline records the stories as sent. Otherwise take
the send lock (lock.py) and walk the run's issues (sequence.py: recover,
finish the unfinished ones, then make the new ones, as NEWSLETTER_ISSUE_PER and
NEWSLETTER_MIN_INTERVAL say), delivering each (deliver.py).

On PostgreSQL there is no exclusive send lock: every `newsletter send` (on
any host) registers as a worker (registry.py) and helps with the unfinished
issues by claiming batches (claims.py); only the making of a new issue is
serialised (an advisory lock), so two workers never freeze the same stories
twice, and a worker that finds nothing new helps with the issue another one
just made.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from sqlalchemy.engine import Engine

from newsletter import phases
from newsletter.config import Settings
from newsletter.errors import FeedError, LoginRefused, NewsletterError, TransportError
from newsletter.issues import create as issue_store
from newsletter.issues.feed import Feed, FeedStory, parse_feed
from newsletter.issues.fetch import FetchResult, fetch_feed
from newsletter.issues.placeholder import fill_unsubscribe
from newsletter.mail.dkimkey import load_key
from newsletter.mail.message import MessageTemplate, message_date
from newsletter.mail.transport import TransportFactory, transport_factory
from newsletter.mail.verp import check_verp_settings, envelope_sender
from newsletter.models import Issue, Story, utcnow
from newsletter.sending.claims import shared_sends
from newsletter.sending.deliver import IssueResult, ProgressFactory, _no_progress, deliver
from newsletter.sending.lock import SendLockHolder
from newsletter.sending.options import SendOptions, SendResult
from newsletter.sending.pacing import Limiter, SharedRateLimiter
from newsletter.sending.registry import WorkerRegistry
from newsletter.sending.sequence import IssueSequence, not_yet_sentence


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
    with phases.phase(phases.FEED):
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
            result.notes.append(not_yet_sentence(engine, due, waiting=waiting))
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
            with phases.phase(phases.DELIVERY):
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

        IssueSequence(engine, settings, options, feed, fetched, result, run, shared).run()
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
