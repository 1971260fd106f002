"""The subscriber's own way in: signup with double opt-in, confirmation, expiry.

A signup never makes anyone active: it stores (or reuses) a row with a fresh
confirm token and mails a link; only a POST on that link activates. So an
address typed by a bot gets at most one email an hour and nothing more, and
someone who unsubscribed earlier comes back only with their own consent.

Who may come back through this path (the issue left it to us):

- new, pending, unsubscribed, bounced: yes, after confirming (a bounced
  mailbox that reads the confirmation email works again);
- complained or forgotten (GDPR erasure, only a hash left): never; no email
  is sent and the visitor sees the same answer as everyone else.

While a confirmation is outstanding, `confirm_token` is set and `updated_at`
is when it was issued: the link works for `CONFIRM_TTL`. A pending web signup
that was never confirmed is deleted lazily after that; any other row only
loses its token, so an old unsubscribe or bounce is never erased.

The web edge calls these; nothing here imports FastAPI.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from newsletter.addresses import clean_name, email_hash, normalise_address
from newsletter.config import Settings
from newsletter.confirmation import build_confirmation
from newsletter.db import read_session, write_session
from newsletter.errors import TokenError, TransportError
from newsletter.message import unsubscribe_url
from newsletter.models import Subscriber, SubscriberStatus, Suppression, utcnow
from newsletter.subscribers import new_token
from newsletter.transport import ConnectionLost, TransportFactory, transport_factory

log = logging.getLogger(__name__)

CONFIRM_TTL = timedelta(days=7)
RESEND_INTERVAL = timedelta(hours=1)  # at most one confirmation email per address per hour
WEB_SOURCE = "web"
TOKEN_MAX_LENGTH = 64  # Subscriber.token / confirm_token column size

#: Statuses that can never sign up again through the web.
NEVER_AGAIN = frozenset({SubscriberStatus.COMPLAINED})


def new_confirm_token() -> str:
    """128 random bits, URL-safe; never derived from the address or the row id."""
    return secrets.token_urlsafe(16)


class SignupOutcome:
    """What `request_signup` did; the visitor is shown the same page for all of them."""

    SENT = "sent"  # a confirmation email went out
    THROTTLED = "throttled"  # one was sent less than RESEND_INTERVAL ago
    ALREADY_ACTIVE = "already_active"
    REFUSED = "refused"  # complained or forgotten: never again


@dataclass(frozen=True)
class SignupResult:
    outcome: str
    email: str


@dataclass(frozen=True)
class _Issued:
    subscriber_id: int
    token: str
    created: bool
    unsubscribe_token: str  # so the confirmation itself can be stopped with one click


def _suppressed(session: Session, key: str) -> bool:
    stmt = select(Suppression.id).where(Suppression.email_hash == email_hash(key))
    return session.exec(stmt).first() is not None


def _issue_token(
    engine: Engine, email: str, key: str, name: str | None, now: datetime
) -> SignupResult | _Issued:
    """Store the pending signup in one transaction; say why not when no email is due."""
    with write_session(engine) as session:
        if _suppressed(session, key):
            return SignupResult(SignupOutcome.REFUSED, email)
        sub = session.exec(select(Subscriber).where(Subscriber.email_key == key)).first()
        if sub is None:
            sub = Subscriber(
                email=email,
                email_key=key,
                name=name,
                status=SubscriberStatus.PENDING,
                token=new_token(),
                source=WEB_SOURCE,
                confirm_token=new_confirm_token(),
                created_at=now,
                updated_at=now,
                opt_in_at=now,
            )
            session.add(sub)
            session.flush()
            assert sub.id is not None and sub.confirm_token is not None
            return _Issued(sub.id, sub.confirm_token, created=True, unsubscribe_token=sub.token)
        if sub.status in NEVER_AGAIN:
            return SignupResult(SignupOutcome.REFUSED, sub.email)
        if sub.status == SubscriberStatus.ACTIVE:
            return SignupResult(SignupOutcome.ALREADY_ACTIVE, sub.email)
        if sub.confirm_token and sub.updated_at > now - RESEND_INTERVAL:
            return SignupResult(SignupOutcome.THROTTLED, sub.email)
        # pending, unsubscribed or bounced: the status stays until they confirm
        sub.confirm_token = new_confirm_token()
        sub.updated_at = now
        session.add(sub)
        assert sub.id is not None
        return _Issued(sub.id, sub.confirm_token, created=False, unsubscribe_token=sub.token)


def _withdraw(engine: Engine, issued: _Issued) -> None:
    """Undo a token whose email could not be sent, so the visitor can simply try again."""
    with write_session(engine) as session:
        sub = session.get(Subscriber, issued.subscriber_id)
        if sub is None or sub.confirm_token != issued.token:
            return
        if issued.created and sub.status == SubscriberStatus.PENDING:
            session.delete(sub)
        else:
            sub.confirm_token = None
            session.add(sub)


def _send(settings: Settings, factory: TransportFactory, email: str, issued: _Issued) -> None:
    """Mail the confirmation link; TransportError when it surely did not leave."""
    assert settings.from_address is not None
    data = build_confirmation(
        settings,
        email,
        confirm_url(settings, issued.token),
        expires_days=CONFIRM_TTL.days,
        unsubscribe_url=unsubscribe_url(settings, issued.unsubscribe_token),
    )
    try:
        with factory() as transport:
            reply = transport.send(settings.from_address.addr_spec, email, data)
    except ConnectionLost as exc:
        if exc.after_body:  # the server may have it: keep the token, do not send twice
            log.warning("confirmation email: connection lost after the body (%s)", exc)
            return
        raise TransportError(f"the mail server dropped the connection: {exc}") from None
    if not reply.ok:
        raise TransportError(f"the mail server refused the confirmation email: {reply}")


def confirm_url(settings: Settings, token: str) -> str:
    """The link in the confirmation email (GET shows a button, POST confirms)."""
    return settings.url(f"confirm/{token}")


def request_signup(
    engine: Engine,
    settings: Settings,
    email: str,
    name: str | None = None,
    *,
    factory: TransportFactory | None = None,
    now: datetime | None = None,
) -> SignupResult:
    """Record a signup and mail the confirmation link when one is due.

    Raises AddressError (a SubscriberError) for a bad address and TransportError
    when the email could not be sent (then nothing stays recorded).
    """
    settings.require("from_address")
    addr = normalise_address(email)
    now = now or utcnow()
    expire_pending(engine, now=now)
    try:
        step = _issue_token(engine, addr.email, addr.key, clean_name(name), now)
    except sa.exc.IntegrityError:  # the same address signed up at the same instant
        return SignupResult(SignupOutcome.THROTTLED, addr.email)
    if isinstance(step, SignupResult):
        return step
    try:
        _send(settings, factory or transport_factory(settings), addr.email, step)
    except TransportError:
        _withdraw(engine, step)
        raise
    return SignupResult(SignupOutcome.SENT, addr.email)


def _valid_token(token: str) -> bool:
    # NUL: PostgreSQL refuses it in any text parameter (a 500 instead of a 404)
    return 0 < len(token) <= TOKEN_MAX_LENGTH and "\x00" not in token


def _by_confirm_token(session: Session, token: str, now: datetime) -> Subscriber | None:
    sub = session.exec(select(Subscriber).where(Subscriber.confirm_token == token)).first()
    if sub is None or sub.updated_at <= now - CONFIRM_TTL or sub.status in NEVER_AGAIN:
        return None
    return sub


def confirmation_pending(engine: Engine, token: str, *, now: datetime | None = None) -> bool:
    """Read-only: does this confirm link still work? (for the GET page)."""
    if not _valid_token(token):
        return False
    with read_session(engine) as session:
        return _by_confirm_token(session, token, now or utcnow()) is not None


def confirm_signup(
    engine: Engine, token: str, *, ip: str | None, now: datetime | None = None
) -> Subscriber:
    """Activate the holder of `token`, recording time and IP as consent; TokenError if invalid.

    The token is single-use: a second POST gets the generic "link not valid" page.
    """
    now = now or utcnow()
    if not _valid_token(token):
        raise TokenError("this link is not valid")
    with write_session(engine) as session:
        sub = _by_confirm_token(session, token, now)
        if sub is None:
            raise TokenError("this link is not valid")
        sub.status = SubscriberStatus.ACTIVE
        sub.confirm_token = None
        sub.confirmed_at = now
        sub.opt_in_at = sub.updated_at  # when this signup was asked for
        sub.consent_ip = (ip or "")[:64] or None
        sub.unsubscribed_at = None
        sub.unsubscribe_method = None
        sub.updated_at = now
        session.add(sub)
        return sub


def expire_pending(engine: Engine, *, now: datetime | None = None) -> int:
    """Drop confirm links older than CONFIRM_TTL; delete never-confirmed web signups.

    Returns how many rows were deleted. Cheap enough to call on every signup.
    """
    cutoff = (now or utcnow()) - CONFIRM_TTL
    stale = (col(Subscriber.confirm_token).is_not(None), col(Subscriber.updated_at) <= cutoff)
    with write_session(engine) as session:
        deleted = session.execute(
            sa.delete(Subscriber).where(
                *stale,
                col(Subscriber.status) == SubscriberStatus.PENDING,
                col(Subscriber.source) == WEB_SOURCE,
                col(Subscriber.confirmed_at).is_(None),
            )
        )
        session.execute(sa.update(Subscriber).where(*stale).values(confirm_token=None))
        return int(deleted.rowcount or 0)  # type: ignore[attr-defined]


def unsubscribe_status(engine: Engine, token: str) -> str | None:
    """Read-only: the status of whoever holds this unsubscribe token, None if unknown."""
    if not _valid_token(token):
        return None
    with read_session(engine) as session:
        stmt = select(Subscriber.status).where(Subscriber.token == token)
        return session.exec(stmt).first()


class RateLimiter:
    """At most `limit` hits per key in a sliding `window` (seconds); in memory, per process."""

    def __init__(
        self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Count one hit for `key`; False once it is over the limit."""
        now = self.clock()
        with self._lock:
            if len(self._hits) > 10_000:  # keep memory bounded under a flood
                self._prune(now)
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return False
            hits.append(now)
            return True

    def _prune(self, now: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
            del self._hits[key]
