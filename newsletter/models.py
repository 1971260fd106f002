"""The tables, named after the data flow: Story -> Issue -> Delivery, and Subscriber.

Schema changes go through Alembic migrations (newsletter/migrations); these
classes must match the latest migration (a test checks it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum, nonmember
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def table_of(model: type[SQLModel]) -> sa.Table:
    """The Core table behind a model, for SQLAlchemy Core queries, typed: SQLModel's metaclass
    sets `__table__` when the class is made, where no type checker can see it."""
    table: sa.Table = model.__table__  # type: ignore[attr-defined]  # set by the metaclass
    return table


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC (naive in SQLite, aware in PostgreSQL) and always returns aware UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: store timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(nullable: bool = True, **kw: Any) -> Any:
    """A nullable UTC timestamp column (Field is typed Any so it fits any annotation)."""
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, **kw)


class SubscriberStatus(StrEnum):
    """Where a subscriber stands; the values are what the `status` column stores."""

    PENDING = "pending"  # signed up, not yet confirmed (double opt-in)
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"

    #: Statuses that must never be mailed again, whatever is imported later.
    SUPPRESSED = nonmember(frozenset({UNSUBSCRIBED, BOUNCED, COMPLAINED}))
    ALL = nonmember((PENDING, ACTIVE, UNSUBSCRIBED, BOUNCED, COMPLAINED))


class Subscriber(SQLModel, table=True):
    __tablename__ = "subscriber"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320)  # as given (trimmed, NFC, domain lower-cased)
    email_key: str = Field(max_length=320, unique=True, index=True)  # case-folded identity
    name: str | None = Field(default=None, max_length=200)
    status: str = Field(default=SubscriberStatus.ACTIVE, max_length=16, index=True)
    token: str = Field(max_length=64, unique=True, index=True)  # unsubscribe link token
    source: str | None = Field(default=None, max_length=200)
    consent_ip: str | None = Field(default=None, max_length=64)
    unsubscribe_method: str | None = Field(default=None, max_length=32)
    confirm_token: str | None = Field(default=None, max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    opt_in_at: datetime | None = _when()
    confirmed_at: datetime | None = _when()
    unsubscribed_at: datetime | None = _when()
    # the confirm link's own clock: a later write to the row never extends it
    confirm_issued_at: datetime | None = _when()
    confirm_used_at: datetime | None = _when()  # "already confirmed"
    # a confirmation email is owed from this time on (the serve worker sends it); None: none owed
    confirm_send_at: datetime | None = _when(index=True)
    confirm_attempts: int | None = Field(default=None)
    confirm_error: str | None = Field(default=None, max_length=200)  # a permanent refusal
    # the welcome email (issue 13): owed from welcome_send_at on (None: none owed), once;
    # welcome_sent_at: when it went; welcome_claimed_until: a sender's try holds it till then
    welcome_send_at: datetime | None = _when(index=True)
    welcome_sent_at: datetime | None = _when()
    welcome_claimed_until: datetime | None = _when()
    welcome_attempts: int | None = Field(default=None)


class Suppression(SQLModel, table=True):
    """A forgotten address: only its hash stays, so an import can never bring it back."""

    __tablename__ = "suppression"

    id: int | None = Field(default=None, primary_key=True)
    email_hash: str = Field(max_length=64, unique=True, index=True)
    reason: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class StoryState(StrEnum):
    """Where a feed story stands; the values are what the `state` column stores."""

    NEW = "new"  # seen in the feed, not yet in an issue
    ISSUED = "issued"  # frozen into an issue
    SKIPPED = "skipped"  # recorded as sent without sending (--baseline, over --max-stories)


class Story(SQLModel, table=True):
    __tablename__ = "story"

    id: int | None = Field(default=None, primary_key=True)
    uid: str = Field(max_length=500, unique=True, index=True)  # stable identity
    guid: str | None = Field(default=None, max_length=1000)
    link: str | None = Field(default=None, max_length=2000)
    title: str = Field(max_length=1000)
    author: str | None = Field(default=None, max_length=200)
    summary_html: str = ""
    content_html: str = ""
    image_url: str | None = Field(default=None, max_length=2000)
    image_alt: str | None = Field(default=None, max_length=500)
    published_at: datetime | None = _when()
    first_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    state: str = Field(default=StoryState.NEW, max_length=16, index=True)
    issue_id: int | None = Field(default=None, foreign_key="issue.id", index=True)


class IssueStatus(StrEnum):
    """An issue is `sending` until none of its deliveries is unfinished, then `sent`
    (sending.queue.finish_if_done; --retry-unknown/--retry-failed reopen it)."""

    SENDING = "sending"  # deliveries are being worked through
    SENT = "sent"  # no delivery left to attempt


class Issue(SQLModel, table=True):
    """One edition: frozen subject and rendered bodies, sent identically on resume."""

    __tablename__ = "issue"

    id: int | None = Field(default=None, primary_key=True)
    subject: str = Field(max_length=1000)
    html: str  # inlined HTML with the per-subscriber placeholders left in
    text: str
    status: str = Field(default=IssueStatus.SENDING, max_length=16, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = _when()


class DeliveryStatus(StrEnum):
    """The one state machine of a delivery (the values are what the `status` column stores):

        pending --(commit)--> sending --SMTP--> sent / deferred / failed / unknown
        pending / deferred --(subscriber left)--> skipped;  deferred --(due)--> sending

    A crash leaves `sending` -> unknown, never pending (the server may have it);
    only --retry-unknown / --retry-failed put unknown / failed back to pending.
    """

    PENDING = "pending"  # not tried yet
    SENDING = "sending"  # handed to the server; no reply recorded yet
    SENT = "sent"  # the server said 250
    DEFERRED = "deferred"  # 4xx: try again later
    FAILED = "failed"  # permanent failure
    UNKNOWN = "unknown"  # the connection died after the body: may have been delivered
    SKIPPED = "skipped"  # subscriber left before their turn came

    #: Still to attempt (by this run or a later one).
    OPEN = nonmember(frozenset({PENDING, DEFERRED}))
    #: Not yet decided: to attempt, or in flight. An issue is sent when none is left.
    UNFINISHED = nonmember(frozenset({PENDING, DEFERRED, SENDING}))
    #: Decided for good: no run changes them unless told to (--retry-unknown/--retry-failed).
    FINAL = nonmember(frozenset({SENT, FAILED, UNKNOWN, SKIPPED}))
    ALL = nonmember((PENDING, SENDING, SENT, DEFERRED, FAILED, UNKNOWN, SKIPPED))


class Delivery(SQLModel, table=True):
    __tablename__ = "delivery"
    __table_args__ = (
        # No index on status: it changes twice per send (see migration 0005). No
        # foreign keys: checked row by row, they cost most of an issue's INSERT (0007).
        sa.UniqueConstraint("issue_id", "subscriber_id", name="uq_delivery_issue_subscriber"),
    )

    id: int | None = Field(default=None, primary_key=True)
    issue_id: int
    subscriber_id: int = Field(index=True)
    status: str = Field(default=DeliveryStatus.PENDING, max_length=16)
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=1000)
    message_id: str | None = Field(default=None, max_length=300)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = _when()
    next_attempt_at: datetime | None = _when()
    # Multi-worker sends (PostgreSQL): who claimed this delivery, until when.
    claimed_by: str | None = Field(default=None, max_length=200)
    lease_until: datetime | None = _when()


class SendLock(SQLModel, table=True):
    """Who is sending now, so that two `newsletter send` runs never mail twice."""

    __tablename__ = "send_lock"

    name: str = Field(primary_key=True, max_length=32)
    owner: str = Field(max_length=200)  # host:pid:random
    host: str = Field(max_length=200)
    pid: int
    pid_space: str | None = Field(default=None, max_length=200)  # see sending.lease.pid_space
    acquired_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    heartbeat_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class FeedState(SQLModel, table=True):
    """Validators of the last fetch, for conditional GETs (ETag / Last-Modified)."""

    __tablename__ = "feed_state"

    url: str = Field(primary_key=True, max_length=2000)
    etag: str | None = Field(default=None, max_length=500)
    last_modified: str | None = Field(default=None, max_length=100)
    checked_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SendWorker(SQLModel, table=True):
    """A `newsletter send` process working on an issue (several may share one on PostgreSQL)."""

    __tablename__ = "send_worker"

    id: str = Field(primary_key=True, max_length=200)  # host:pid:random, random per process
    host: str = Field(max_length=200)
    pid: int
    pid_space: str | None = Field(default=None, max_length=200)  # see sending.lease.pid_space
    issue_id: int | None = Field(default=None, foreign_key="issue.id", index=True)
    sent: int = 0
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    heartbeat_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class RateBudget(SQLModel, table=True):
    """A send rate shared by every worker: each reserves its next slot here."""

    __tablename__ = "rate_budget"

    name: str = Field(primary_key=True, max_length=32)
    next_slot_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class BounceKind:
    HARD = "hard"  # 5.1.x, 5.2.1: suppress at once
    SOFT = "soft"  # 4.x.x, mailbox full: suppress after 3 within 30 days
    COMPLAINT = "complaint"  # ARF abuse report: suppress at once, forever
    POLICY = "policy"  # 5.7.x: the sender's setup; suppress nobody, tell the admin
    IGNORED = "ignored"  # auto-replies and anything that is not a bounce


class BounceEvent(SQLModel, table=True):
    """One bounce or complaint report, mapped to its delivery where possible."""

    __tablename__ = "bounce_event"

    id: int | None = Field(default=None, primary_key=True)
    report_id: str = Field(max_length=500, unique=True, index=True)  # idempotent re-imports
    kind: str = Field(max_length=16, index=True)
    status_code: str | None = Field(default=None, max_length=16)  # e.g. 5.1.1
    diagnostic: str | None = Field(default=None, max_length=1000)
    recipient: str | None = Field(default=None, max_length=320)
    delivery_id: int | None = Field(default=None, foreign_key="delivery.id", index=True)
    subscriber_id: int | None = Field(default=None, foreign_key="subscriber.id", index=True)
    issue_id: int | None = Field(default=None, foreign_key="issue.id", index=True)
    # verp | message-id | forged | mismatch | none (bounces.match.MatchedBy); NULL: older
    matched_by: str | None = Field(default=None, max_length=16)
    source: str | None = Field(default=None, max_length=500)
    received_at: datetime | None = _when()
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
