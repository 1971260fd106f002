"""Sending the confirmation emails signups owe, with retry and backoff, off the request path.

`newsletter serve` runs a `ConfirmationWorker` thread that drains them (and the
welcome emails of confirmed signups); `newsletter send` calls `send_owed_mail`.
The shared claim/send/settle loop is newsletter.subscribers.owed; recording a
signup and following its link is newsletter.subscribers.signup.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from newsletter.config import Settings
from newsletter.db import read_session, write_session
from newsletter.mail.transport import Reply, TransportFactory, transport_factory
from newsletter.models import Subscriber, utcnow
from newsletter.subscribers import owed
from newsletter.subscribers.confirmation import build_confirmation
from newsletter.subscribers.welcome import (
    WelcomeResult,
    next_welcome_at,
    send_owed_welcomes,
)

# The logger keeps the name it had before this module was split out of signup.py.
log = logging.getLogger("newsletter.subscribers.signup")

CONFIRM_TTL = timedelta(days=7)
MAX_ATTEMPTS = 10  # about 11 hours of tries (owed.next_try); then the visitor signs up again


def confirm_url(settings: Settings, token: str) -> str:
    """The link in the confirmation email (GET shows a button, POST confirms)."""
    return settings.url(f"confirm/{token}")


@dataclass
class DrainResult:
    sent: int = 0
    deferred: int = 0
    refused: int = 0  # permanently, by the recipient's server: recorded on the row
    expired: int = 0


@dataclass(frozen=True)
class _Claimed:
    id: int
    email: str
    confirm_token: str
    unsubscribe_token: str
    attempts: int


def _due(now: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    return (
        col(Subscriber.confirm_send_at).is_not(None),
        col(Subscriber.confirm_send_at) <= now,
        col(Subscriber.confirm_token).is_not(None),
    )


def _claim(engine: Engine, sub_id: int, now: datetime) -> _Claimed | None:
    """Take one owed confirmation (a lease, so a crash retries it later); None if gone."""
    with write_session(engine) as session:
        sub = session.exec(select(Subscriber).where(Subscriber.id == sub_id, *_due(now))).first()
        if sub is None or sub.confirm_token is None:
            return None
        issued = sub.confirm_issued_at
        if issued is None or issued <= now - CONFIRM_TTL or sub.confirm_used_at is not None:
            sub.confirm_send_at = None  # the link is dead or used: nothing to send
            session.add(sub)
            return None
        attempts = (sub.confirm_attempts or 0) + 1
        sub.confirm_attempts = attempts
        sub.confirm_send_at = now + owed.CLAIM_LEASE
        session.add(sub)
        return _Claimed(sub_id, sub.email, sub.confirm_token, sub.token, attempts)


def _settle(
    engine: Engine, job: _Claimed, now: datetime, outcome: owed.Outcome, reply: Reply | None
) -> None:
    """Record how the attempt ended: done, retry later (backoff) or refused for good."""
    with write_session(engine) as session:
        sub = session.get(Subscriber, job.id)
        if sub is None or sub.confirm_token != job.confirm_token:
            return  # a newer signup replaced the link meanwhile
        retry = outcome is owed.Outcome.RETRY
        sub.confirm_send_at = owed.next_try(now, job.attempts, MAX_ATTEMPTS) if retry else None
        error = str(reply) if outcome is owed.Outcome.REFUSED else None
        sub.confirm_error = error[:200] if error else None
        session.add(sub)


def _message(settings: Settings, job: _Claimed) -> tuple[str, bytes]:
    data = build_confirmation(
        settings,
        job.email,
        confirm_url(settings, job.confirm_token),
        expires_days=CONFIRM_TTL.days,
        unsubscribe_token=job.unsubscribe_token,
    )
    return job.email, data


def send_owed_confirmations(
    engine: Engine,
    settings: Settings,
    factory: TransportFactory | None = None,
    *,
    now: datetime | None = None,
    only_id: int | None = None,
    limit: int = owed.DRAIN_BATCH,
) -> DrainResult:
    """Send up to `limit` owed confirmation emails over one connection; never raises for SMTP.

    A refused address is recorded (`confirm_error`); a temporary failure, a
    dropped connection or an unreachable server waits for the next backoff step.
    """
    sender = settings.sender  # MissingSettings when NEWSLETTER_FROM is unset
    when = now or utcnow()
    stmt = (
        sa.select(col(Subscriber.id)).where(*_due(when)).order_by(col(Subscriber.confirm_send_at))
    )
    if only_id is not None:
        stmt = stmt.where(col(Subscriber.id) == only_id)
    with read_session(engine) as session:
        ids = list(session.execute(stmt.limit(limit)).scalars())
    if not ids:
        return DrainResult()
    drained = owed.drain(
        ids,
        factory or transport_factory(settings),
        sender.addr_spec,
        when,
        claim=lambda sub_id: _claim(engine, sub_id, when),
        message=lambda job: _message(settings, job),
        settle=lambda job, outcome, reply: _settle(engine, job, when, outcome, reply),
        postpone_rest=lambda later, until: owed.postpone(engine, later, until, "confirm_send_at"),
        what="confirmation email",
        log=log,
        error_on_5xx=True,
    )
    return DrainResult(drained.sent, drained.deferred, drained.refused, drained.skipped)


def next_owed_at(engine: Engine) -> datetime | None:
    """When the next owed confirmation falls due (None: nothing owed)."""
    stmt = sa.select(sa.func.min(Subscriber.confirm_send_at)).where(
        col(Subscriber.confirm_token).is_not(None)
    )
    with read_session(engine) as session:
        return session.execute(stmt).scalar_one_or_none()


class ConfirmationWorker:
    """A thread of `newsletter serve` that sends owed confirmations, and the welcome
    emails of confirmed signups (newsletter.subscribers.welcome), as they fall due.

    `wake()` after recording a signup: it starts the thread if needed and
    sends at once. A failing database or server is logged, never fatal.
    """

    IDLE = 30.0  # seconds between looks when nothing is due (other processes may owe mail)

    def __init__(
        self, engine: Engine, settings: Settings, factory: TransportFactory | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.factory = factory
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="confirmations", daemon=True)
                self._thread.start()

    def wake(self) -> None:
        self.start()
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _welcomes(self) -> float:
        """Send the owed welcome emails; the seconds until the next one is due."""
        if not self.settings.welcome:
            return self.IDLE
        result = send_owed_welcomes(self.engine, self.settings, self.factory)
        if result.sent or result.dropped:
            return 0.0  # there may be more
        due = next_welcome_at(self.engine)
        if due is None:
            return self.IDLE
        return min(self.IDLE, max((due - utcnow()).total_seconds(), 0.5))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            wait = self.IDLE
            try:
                result = send_owed_confirmations(self.engine, self.settings, self.factory)
                if result.sent or result.refused or result.expired:
                    wait = 0.0  # there may be more
                else:
                    due = next_owed_at(self.engine)
                    if due is not None:
                        wait = min(self.IDLE, max((due - utcnow()).total_seconds(), 0.5))
            except Exception:  # a locked or vanished database: try again later
                log.exception("sending confirmation emails failed")
            try:
                wait = min(wait, self._welcomes())
            except Exception:  # a template or setting mistake must not stop the confirmations
                log.exception("sending welcome emails failed")
            if wait:
                self._wake.wait(wait)


@dataclass
class OwedMail:
    """What `send_owed_mail` did: the confirmation emails and the welcomes it sent."""

    confirmations: DrainResult
    welcomes: WelcomeResult


def send_owed_mail(
    engine: Engine, settings: Settings, factory: TransportFactory | None = None
) -> OwedMail:
    """After `newsletter send`: owed confirmation emails (when due) and every owed welcome
    (backoff waits ignored). sending/ may not import subscribers/, so the CLI calls this."""
    factory = factory or transport_factory(settings)
    confirmations = send_owed_confirmations(engine, settings, factory)
    welcomes = WelcomeResult()
    if settings.welcome:
        welcomes = send_owed_welcomes(engine, settings, factory, ignore_backoff=True)
    return OwedMail(confirmations, welcomes)
