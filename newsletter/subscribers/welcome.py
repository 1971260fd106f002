"""The welcome email: sent once to each reader who confirms a signup (issue 13).

It says what the reader will receive and how often (from the settings: the
content mode, NEWSLETTER_ISSUE_PER, NEWSLETTER_MIN_INTERVAL), links the
archive, and lists the latest issue's stories as titles with links. It carries
the issue email's footer and headers (one-click List-Unsubscribe, List-Id,
Precedence) through the same `MessageTemplate` path, DKIM included.

The welcome is never sent inside a request. Confirming records that it is owed
(`welcome_send_at`); the `newsletter serve` worker sends it at once, with the
confirmation emails' backoff when the server is down, and the next
`newsletter send` sends any still owed (`confirming.send_owed_mail`, backoff ignored).
It goes once per subscriber (`welcome_sent_at`), never to imported contacts or
`subscribers add` (only a confirmed signup owes one), and never to someone who
left before it went.

State on the row, so that the worker and `newsletter send` never both send it:

    welcome_send_at   owed from then on (a future time: a backoff wait); None: nothing
                      owed (sent, given up, or never owed)
    welcome_sent_at   when it went; never set by anything else
    welcome_claimed_until
                      a sender is trying it: no other takes it until then (a lease,
                      `owed.CLAIM_LEASE`; cleared when the try is settled)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from newsletter.config import Settings
from newsletter.db import read_session, write_session
from newsletter.issues.placeholder import mark_placeholder, new_placeholder
from newsletter.issues.render import normalise_subject, render_bodies, safe_url
from newsletter.issues.templating import render_template
from newsletter.mail.message import MessageTemplate, message_date
from newsletter.mail.transport import TransportFactory, transport_factory
from newsletter.models import Issue, Story, Subscriber, SubscriberStatus, utcnow
from newsletter.subscribers import owed
from newsletter.subscribers.confirmation import email_context

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 20  # about a day and a half of tries; `newsletter send` tries regardless
LATEST_STORIES = 10

#: What each content mode sends, as the welcome says it.
RECEIVE = {
    "summary": "a short summary of each new story, with a link to the whole story on the site",
    "full": "each new story in full, with a link to it on the site",
    "title": "the title of each new story, with a link to read it on the site",
}


@dataclass(frozen=True)
class StoryLink:
    title: str
    link: str | None


@dataclass
class WelcomeResult:
    sent: int = 0
    deferred: int = 0
    dropped: int = 0  # refused for good, given up, or the reader left first


# ---- what it says -----------------------------------------------------------------------


def describe_interval(interval: timedelta) -> str:
    """'7 days', '2 weeks', '12 hours', '1 day', '30 minutes'."""
    seconds = int(interval.total_seconds())
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'' if minutes == 1 else 's'}"


def schedule(settings: Settings) -> dict[str, Any]:
    """What and how often, from the settings (issue_per and min_interval may be absent)."""
    mode = str(email_context(settings)["content_mode"])
    issue_per = str(getattr(settings, "issue_per", "send") or "send")
    interval = getattr(settings, "min_interval", None)
    if issue_per == "story":
        how_often = "one email for each new story, soon after it is published"
    else:
        how_often = "one email with all the stories published since the previous one"
    every = describe_interval(interval) if isinstance(interval, timedelta) and interval else None
    if every:
        how_often += f", at most once every {every}"
    return {
        "receive": RECEIVE.get(mode, RECEIVE["summary"]),
        "how_often": how_often,
        "issue_per": issue_per,
        "min_interval": every,
    }


def latest_stories(engine: Engine, limit: int = LATEST_STORIES) -> list[StoryLink]:
    """The newest issue's stories (newest first), links checked; [] before the first issue."""
    newest = sa.select(sa.func.max(col(Issue.id))).scalar_subquery()
    stmt = (
        sa.select(col(Story.title), col(Story.link))
        .where(col(Story.issue_id) == newest)
        .order_by(col(Story.published_at).desc().nulls_last(), col(Story.id).desc())
        .limit(limit)
    )
    with read_session(engine) as session:
        rows = session.execute(stmt).all()
    return [
        StoryLink(normalise_subject(title, 300), safe_url(link, ("http", "https")))
        for title, link in rows
    ]


def site_link(engine: Engine) -> str | None:
    """The site the feed belongs to: the origin of the newest story's link (None: no story yet).

    The feed's own <link> is not stored; its stories' links are, and they sit on the site.
    """
    stmt = (
        sa.select(col(Story.link))
        .where(col(Story.link).is_not(None))
        .order_by(col(Story.first_seen_at).desc(), col(Story.id).desc())
        .limit(1)
    )
    with read_session(engine) as session:
        link = session.execute(stmt).scalar_one_or_none()
    url = safe_url(link, ("http", "https"))
    if url is None:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


def _site(engine: Engine, settings: Settings) -> tuple[str, str]:
    url = site_link(engine) or settings.base_url
    host = urlsplit(url).hostname or ""
    return url, host.removeprefix("www.") or settings.list_title


def welcome_subject(settings: Settings, context: dict[str, Any]) -> str:
    subject = normalise_subject(render_template(settings, "welcome_subject.txt", context))
    return subject or f"Welcome to {settings.list_title}"


@dataclass(frozen=True)
class WelcomeMessage:
    """The welcome rendered once per drain; `personalise` gives one reader's bytes."""

    template: MessageTemplate
    subject: str
    html: str
    text: str

    def personalise(self, email: str, name: str | None, token: str) -> bytes:
        return self.template.personalise(
            email, name, token, message_id=self.template.new_message_id(), date=message_date()
        )


def render_welcome(engine: Engine, settings: Settings) -> WelcomeMessage:
    """Render the three templates once, with the unsubscribe link left as a placeholder."""
    settings.require("postal_address")  # CAN-SPAM: the same footer as every issue
    site_url, site_name = _site(engine, settings)
    key, placeholder = new_placeholder()
    context: dict[str, Any] = {
        **email_context(settings),
        **schedule(settings),
        "archive_url": settings.url("issues"),
        "site_url": site_url,
        "site_name": site_name,
        "stories": latest_stories(engine),
        "unsubscribe_url": placeholder,
        "subject": "",
    }
    subject = welcome_subject(settings, context)
    context["subject"] = subject
    html, text = render_bodies(settings, "welcome_email", context, placeholder=placeholder)
    marked = mark_placeholder(key, html)
    template = MessageTemplate(settings, subject=subject, html=marked, text=text, issue_id=None)
    return WelcomeMessage(template, subject, html, text)


# ---- owing and sending ------------------------------------------------------------------


def owe_welcome(sub: Subscriber, settings: Settings, now: datetime) -> None:
    """Called as a signup is confirmed: a welcome is owed unless off or already sent once."""
    if settings.welcome and sub.welcome_sent_at is None and sub.welcome_send_at is None:
        sub.welcome_send_at = now
        sub.welcome_attempts = 0


@dataclass(frozen=True)
class _Claimed:
    id: int
    email: str
    name: str | None
    token: str
    attempts: int


def _unclaimed(now: datetime) -> sa.ColumnElement[bool]:
    """No sender's try holds it (or its lease ran out: that sender died)."""
    claimed_until = col(Subscriber.welcome_claimed_until)
    return sa.or_(claimed_until.is_(None), claimed_until <= now)


def _owed(now: datetime, *, ignore_backoff: bool) -> sa.ColumnElement[bool]:
    """Owed and unclaimed; due now unless `newsletter send` ignores the backoff."""
    send_at = col(Subscriber.welcome_send_at)
    due = sa.and_(send_at.is_not(None), _unclaimed(now))
    return due if ignore_backoff else sa.and_(due, send_at <= now)


def _claim(engine: Engine, sub_id: int, now: datetime, ignore_backoff: bool) -> _Claimed | None:
    """Take one owed welcome under a lease; None if it is gone or no longer wanted."""
    owed_now = _owed(now, ignore_backoff=ignore_backoff)
    with write_session(engine) as session:
        sub = session.exec(select(Subscriber).where(Subscriber.id == sub_id, owed_now)).first()
        if sub is None:  # gone, sent, not due yet, or another sender holds it
            return None
        if sub.status != SubscriberStatus.ACTIVE:
            sub.welcome_send_at = None  # they left before it went: never welcome them now
            session.add(sub)
            return None
        attempts = (sub.welcome_attempts or 0) + 1
        sub.welcome_attempts = attempts
        sub.welcome_claimed_until = now + owed.CLAIM_LEASE
        session.add(sub)
        return _Claimed(sub_id, sub.email, sub.name, sub.token, attempts)


def _settle(engine: Engine, job: _Claimed, now: datetime, outcome: owed.Outcome) -> None:
    """Record how the attempt ended: sent, retry after the backoff, or nothing owed."""
    with write_session(engine) as session:
        sub = session.get(Subscriber, job.id)
        if sub is None:
            return
        sub.welcome_claimed_until = None
        if outcome is owed.Outcome.SENT:
            sub.welcome_sent_at = now
            sub.welcome_send_at = None
        else:  # the next try; or, refused for good or tried long enough, nothing owed
            retry = outcome is owed.Outcome.RETRY
            sub.welcome_send_at = owed.next_try(now, job.attempts, MAX_ATTEMPTS) if retry else None
        session.add(sub)


def _postpone(engine: Engine, ids: list[int], until: datetime, now: datetime) -> None:
    """The rest of the batch waits too (unclaimed ones only: a claimed one has a lease)."""
    owed.postpone(engine, ids, until, "welcome_send_at", _unclaimed(now))


def send_owed_welcomes(
    engine: Engine,
    settings: Settings,
    factory: TransportFactory | None = None,
    *,
    now: datetime | None = None,
    ignore_backoff: bool = False,
    limit: int = owed.DRAIN_BATCH,
) -> WelcomeResult:
    """Send up to `limit` owed welcomes over one connection; never raises for SMTP trouble.

    `ignore_backoff`: send those waiting for their next try too (`newsletter send`).
    """
    sender = settings.sender  # MissingSettings when NEWSLETTER_FROM is unset
    now = now or utcnow()
    result = WelcomeResult()
    stmt = (
        sa.select(col(Subscriber.id))
        .where(_owed(now, ignore_backoff=ignore_backoff))
        .order_by(col(Subscriber.welcome_send_at))
        .limit(limit)
    )
    with read_session(engine) as session:
        ids = list(session.execute(stmt).scalars())
    if not ids:
        return result
    message = render_welcome(engine, settings)
    drained = owed.drain(
        ids,
        factory or transport_factory(settings),
        sender.addr_spec,
        now,
        claim=lambda sub_id: _claim(engine, sub_id, now, ignore_backoff),
        message=lambda job: (job.email, message.personalise(job.email, job.name, job.token)),
        settle=lambda job, outcome, _reply: _settle(engine, job, now, outcome),
        postpone_rest=lambda later, until: _postpone(engine, later, until, now),
        what="welcome email",
        log=log,
    )
    return WelcomeResult(drained.sent, drained.deferred, drained.refused)


def next_welcome_at(engine: Engine) -> datetime | None:
    """When the next owed welcome falls due (None: none owed); a claimed one when its
    lease ends, should its sender die."""
    send_at, claimed_until = col(Subscriber.welcome_send_at), col(Subscriber.welcome_claimed_until)
    due = sa.case((claimed_until > send_at, claimed_until), else_=send_at)
    stmt = sa.select(sa.func.min(due)).where(send_at.is_not(None))
    with read_session(engine) as session:
        return session.execute(stmt).scalar_one_or_none()


def welcomes_owed(engine: Engine) -> int:
    """How many confirmed readers still wait for their welcome (for `newsletter status`)."""
    stmt = sa.select(sa.func.count()).where(col(Subscriber.welcome_send_at).is_not(None))
    with read_session(engine) as session:
        return int(session.execute(stmt).scalar_one())
