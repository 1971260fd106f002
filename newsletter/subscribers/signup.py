"""The subscriber's own way in: signup with double opt-in, confirmation, expiry.

A signup never makes anyone active: it stores (or reuses) a row with a fresh
confirm token and records that a confirmation email is owed; only a POST on
the link in that email activates. So an address typed by a bot gets at most
one email an hour (per mailbox: `name+anything@` counts as `name@`) and
nothing more, and someone who unsubscribed earlier comes back only with their
own consent.

The email itself is sent off the request path, by
newsletter.subscribers.confirming (import its names from there): `newsletter
serve` runs a `ConfirmationWorker` thread that drains the owed confirmations
(`send_owed_confirmations`) with retry and backoff, so a relay that hangs
never stalls a page, `/health` or a one-click unsubscribe. A confirmation the
recipient's server refuses for good (5.1.x, "no such user") is recorded on
the row; the next signup of that address is told to check the address.

Who may come back through this path (the issue left it to us):

- new, pending, unsubscribed, bounced: yes, after confirming (a bounced
  mailbox that reads the confirmation email works again);
- complained or forgotten (GDPR erasure, only a hash left): never; no email
  is sent and the visitor sees the same answer as everyone else.

A confirm link has its own clock, `confirm_issued_at`: it works for
`CONFIRM_TTL` whatever else later writes to the row. Once used it stays on the
row with `confirm_used_at`, so following it again says "already confirmed"
(and changes nothing). A pending web signup that was never confirmed is
deleted lazily after the TTL; any other row only loses its token, so an old
unsubscribe or bounce is never erased.

The web edge calls these; nothing here imports FastAPI. The per-IP limit on
signups is the edge's own (newsletter.web.throttle): only it knows the IP.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from newsletter.config import Settings
from newsletter.db import read_session, write_session
from newsletter.errors import TokenError
from newsletter.mail.addresses import clean_name, email_hash, normalise_address
from newsletter.mail.transport import TransportFactory
from newsletter.models import Subscriber, SubscriberStatus, Suppression, utcnow
from newsletter.subscribers.confirming import CONFIRM_TTL, send_owed_confirmations
from newsletter.subscribers.manage import new_token
from newsletter.subscribers.welcome import (
    owe_welcome,
)

RESEND_INTERVAL = timedelta(hours=1)  # at most one confirmation email per mailbox per hour
WEB_SOURCE = "web"
TOKEN_MAX_LENGTH = 64  # Subscriber.token / confirm_token column size

#: Statuses that can never sign up again through the web.
NEVER_AGAIN = frozenset({SubscriberStatus.COMPLAINED})
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")


def new_confirm_token() -> str:
    """128 random bits, URL-safe; never derived from the address or the row id."""
    return secrets.token_urlsafe(16)


def mailbox_key(key: str) -> str:
    """The mailbox behind an address key: `name+tag@domain` -> `name@domain` (case-folded)."""
    local, _, domain = key.casefold().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


class SignupOutcome:
    """What `request_signup` did; the visitor sees the same page for all but UNDELIVERABLE."""

    QUEUED = "queued"  # a confirmation email is owed; the worker sends it
    SENT = "sent"  # sent at once (send_now=True)
    THROTTLED = "throttled"  # one went to this mailbox less than RESEND_INTERVAL ago
    ALREADY_ACTIVE = "already_active"
    REFUSED = "refused"  # complained or forgotten: never again
    #: the last confirmation to this address was refused for good by its mail server
    UNDELIVERABLE = "undeliverable"


@dataclass(frozen=True)
class SignupResult:
    outcome: str
    email: str


class ConfirmOutcome:
    CONFIRMED = "confirmed"
    ALREADY = "already_confirmed"  # the link was used before: nothing changes


def _suppressed(session: Session, key: str) -> bool:
    stmt = select(Suppression.id).where(Suppression.email_hash == email_hash(key))
    return session.exec(stmt).first() is not None


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _mailbox_recently_mailed(session: Session, key: str, now: datetime) -> bool:
    """Was a confirmation issued to any `name(+tag)@domain` of this mailbox within the hour?"""
    box = mailbox_key(key)
    local, _, domain = box.rpartition("@")
    pattern = f"{_like_escape(local)}+%@{_like_escape(domain)}"
    stmt = select(Subscriber.id).where(
        sa.or_(
            col(Subscriber.email_key) == box,
            col(Subscriber.email_key).like(pattern, escape="\\"),
        ),
        col(Subscriber.confirm_issued_at) > now - RESEND_INTERVAL,
    )
    return session.exec(stmt).first() is not None


def _owe_confirmation(sub: Subscriber, now: datetime) -> None:
    """A fresh link, owed by mail from now on."""
    sub.confirm_token = new_confirm_token()
    sub.confirm_issued_at = now
    sub.confirm_used_at = None
    sub.confirm_send_at = now
    sub.confirm_attempts = 0
    sub.confirm_error = None
    sub.updated_at = now


def _forget_refused(session: Session, sub: Subscriber) -> None:
    """After telling the visitor: a never-confirmed web row goes, any other loses its link."""
    if sub.status == SubscriberStatus.PENDING and sub.source == WEB_SOURCE and not sub.confirmed_at:
        session.delete(sub)
        return
    sub.confirm_token = sub.confirm_issued_at = sub.confirm_send_at = None
    sub.confirm_error = None
    session.add(sub)


def _record_signup(
    engine: Engine, email: str, key: str, name: str | None, now: datetime
) -> tuple[str, int | None]:
    """Store the pending signup and the owed email in one transaction: (outcome, row id)."""
    with write_session(engine) as session:
        if _suppressed(session, key):
            return SignupOutcome.REFUSED, None
        sub = session.exec(select(Subscriber).where(Subscriber.email_key == key)).first()
        if sub is not None:
            if sub.status in NEVER_AGAIN:
                return SignupOutcome.REFUSED, None
            if sub.status == SubscriberStatus.ACTIVE:
                return SignupOutcome.ALREADY_ACTIVE, None
            if sub.confirm_error:
                _forget_refused(session, sub)
                return SignupOutcome.UNDELIVERABLE, None
        if _mailbox_recently_mailed(session, key, now):
            return SignupOutcome.THROTTLED, None
        if sub is None:
            sub = Subscriber(
                email=email,
                email_key=key,
                name=name,
                status=SubscriberStatus.PENDING,
                token=new_token(),
                source=WEB_SOURCE,
                created_at=now,
                opt_in_at=now,
            )
        # pending, unsubscribed or bounced: the status stays until they confirm
        _owe_confirmation(sub, now)
        session.add(sub)
        session.flush()
        return SignupOutcome.QUEUED, sub.id


def request_signup(
    engine: Engine,
    settings: Settings,
    email: str,
    name: str | None = None,
    *,
    factory: TransportFactory | None = None,
    now: datetime | None = None,
    send_now: bool = True,
) -> SignupResult:
    """Record a signup and that its confirmation email is owed; send it too if `send_now`.

    The web edge passes send_now=False and lets its worker send (no SMTP inside
    a request). Raises AddressError (a SubscriberError) for a bad address.
    """
    settings.require("from_address")
    addr = normalise_address(email)
    now = now or utcnow()
    expire_pending(engine, now=now)
    try:
        outcome, sub_id = _record_signup(engine, addr.email, addr.key, clean_name(name), now)
    except sa.exc.IntegrityError:  # the same address signed up at the same instant
        return SignupResult(SignupOutcome.THROTTLED, addr.email)
    if outcome == SignupOutcome.QUEUED and send_now:
        drained = send_owed_confirmations(engine, settings, factory, now=now, only_id=sub_id)
        if drained.sent:
            outcome = SignupOutcome.SENT
    return SignupResult(outcome, addr.email)


# ---- confirming -----------------------------------------------------------------------


def _valid_token(token: str) -> bool:
    # the alphabet of token_urlsafe: also keeps NUL away from PostgreSQL (a 500, not a 404)
    return 0 < len(token) <= TOKEN_MAX_LENGTH and _TOKEN_CHARS.fullmatch(token) is not None


def _by_confirm_token(session: Session, token: str, now: datetime) -> Subscriber | None:
    sub = session.exec(select(Subscriber).where(Subscriber.confirm_token == token)).first()
    if sub is None or sub.status in NEVER_AGAIN:
        return None
    if sub.confirm_issued_at is None or sub.confirm_issued_at <= now - CONFIRM_TTL:
        return None
    return sub


def confirmation_state(engine: Engine, token: str, *, now: datetime | None = None) -> str | None:
    """Read-only, for the GET page: None (unknown or expired), "pending" or ALREADY."""
    if not _valid_token(token):
        return None
    with read_session(engine) as session:
        sub = _by_confirm_token(session, token, now or utcnow())
    if sub is None:
        return None
    return ConfirmOutcome.ALREADY if sub.confirm_used_at is not None else "pending"


def confirmation_pending(engine: Engine, token: str, *, now: datetime | None = None) -> bool:
    """Read-only: does this confirm link still confirm something?"""
    return confirmation_state(engine, token, now=now) == "pending"


def confirm_signup(
    engine: Engine,
    token: str,
    *,
    ip: str | None,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> str:
    """Activate the holder of `token`, recording time and IP as consent; TokenError if invalid.

    The token is single-use: a second POST changes nothing and returns ALREADY.
    With `settings` (the web edge), a welcome email is owed in the same transaction
    unless NEWSLETTER_WELCOME is off or this reader was welcomed before; the
    worker sends it, never the request.
    """
    now = now or utcnow()
    if not _valid_token(token):
        raise TokenError("this link is not valid")
    with write_session(engine) as session:
        sub = _by_confirm_token(session, token, now)
        if sub is None:
            raise TokenError("this link is not valid")
        if sub.confirm_used_at is not None:
            return ConfirmOutcome.ALREADY
        sub.status = SubscriberStatus.ACTIVE
        sub.confirm_used_at = now
        sub.confirm_send_at = None
        sub.confirmed_at = now
        sub.opt_in_at = sub.confirm_issued_at  # when this signup was asked for
        sub.consent_ip = (ip or "")[:64] or None
        sub.unsubscribed_at = None
        sub.unsubscribe_method = None
        sub.updated_at = now
        if settings is not None:
            owe_welcome(sub, settings, now)
        session.add(sub)
        return ConfirmOutcome.CONFIRMED


def expire_pending(engine: Engine, *, now: datetime | None = None) -> int:
    """Drop confirm links older than CONFIRM_TTL; delete never-confirmed web signups.

    Returns how many rows were deleted. Cheap enough to call on every signup.
    """
    cutoff = (now or utcnow()) - CONFIRM_TTL
    stale = (
        col(Subscriber.confirm_token).is_not(None),
        sa.or_(
            col(Subscriber.confirm_issued_at).is_(None),
            col(Subscriber.confirm_issued_at) <= cutoff,
        ),
    )
    with write_session(engine) as session:
        deleted = session.execute(
            sa.delete(Subscriber).where(
                *stale,
                col(Subscriber.status) == SubscriberStatus.PENDING,
                col(Subscriber.source) == WEB_SOURCE,
                col(Subscriber.confirmed_at).is_(None),
            )
        )
        session.execute(
            sa.update(Subscriber)
            .where(*stale)
            .values(confirm_token=None, confirm_send_at=None, confirm_used_at=None)
        )
        # Session.execute is typed as Result; a DELETE gives a CursorResult, which counts
        return int(deleted.rowcount or 0)  # type: ignore[attr-defined]


def unsubscribe_status(engine: Engine, token: str) -> str | None:
    """Read-only: the status of whoever holds this unsubscribe token, None if unknown."""
    if not _valid_token(token):
        return None
    with read_session(engine) as session:
        stmt = select(Subscriber.status).where(Subscriber.token == token)
        return session.exec(stmt).first()
