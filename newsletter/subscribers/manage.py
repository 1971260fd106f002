"""Subscribers one by one: add, remove, unsubscribe, list, export, forget, count.

The rule every function here keeps: nobody who unsubscribed, bounced or
complained becomes active again, and a forgotten address (only its hash is left,
in `suppression`) is never stored again. Each function owns its transaction.
"""

from __future__ import annotations

import csv
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from newsletter.db import fence_erasures, read_session, write_session
from newsletter.errors import SubscriberError
from newsletter.mail.addresses import clean_name, email_hash, normalise_address
from newsletter.models import (
    BounceEvent,
    Delivery,
    Subscriber,
    SubscriberStatus,
    Suppression,
    utcnow,
)
from newsletter.subscribers.csvformats import neutralise_cell

EXPORT_COLUMNS = (
    "email",
    "name",
    "status",
    "created_at",
    "opt_in_at",
    "confirmed_at",
    "unsubscribed_at",
    "source",
)
FORGOTTEN = "forgotten"  # Suppression.reason for a GDPR erasure


def new_token() -> str:
    """An unsubscribe token: 128 random bits, never derived from the address or id."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True)
class AddResult:
    """What `add_subscriber` did. `outcome` is one of the class constants."""

    ADDED = "added"
    ACTIVATED = "activated"  # was pending (never confirmed); an admin vouched for them
    UNCHANGED = "unchanged"
    KEPT_UNSUBSCRIBED = "kept_unsubscribed"
    SUPPRESSED = "suppressed"  # forgotten on request: refused, nothing stored

    outcome: str
    email: str
    status: str | None  # None when nothing is stored (suppressed)
    subscriber: Subscriber | None

    @property
    def active(self) -> bool:
        return self.status == SubscriberStatus.ACTIVE

    @property
    def message(self) -> str:
        return {
            self.ADDED: f"Added {self.email}.",
            self.ACTIVATED: f"Activated {self.email} (was pending).",
            self.UNCHANGED: f"{self.email} is already subscribed; nothing changed.",
            self.KEPT_UNSUBSCRIBED: (
                f"Not added: {self.email} is {self.status}, "
                "and nobody who left is ever made active again by an admin or an import."
            ),
            self.SUPPRESSED: (
                f"Not added: {self.email} was forgotten on request and stays suppressed."
            ),
        }[self.outcome]


@dataclass(frozen=True)
class RemoveResult:
    email: str
    status: str
    changed: bool  # False when it was already unsubscribed, bounced or complained

    @property
    def message(self) -> str:
        if self.changed:
            return f"Unsubscribed {self.email}."
        return f"{self.email} was already {self.status}; nothing changed."


@dataclass(frozen=True)
class ForgetResult:
    email: str
    deleted: bool  # a subscriber row existed and was erased
    deliveries: int  # delivery rows erased with it

    @property
    def message(self) -> str:
        what = "Erased" if self.deleted else "No subscriber stored for"
        return f"{what} {self.email}; its hash is kept so it is never mailed again."


def _find(session: Session, key: str) -> Subscriber | None:
    return session.exec(select(Subscriber).where(Subscriber.email_key == key)).first()


def is_suppressed(session: Session, key: str) -> bool:
    """True if the address was forgotten (its hash is in `suppression`)."""
    stmt = select(Suppression.id).where(Suppression.email_hash == email_hash(key))
    return session.exec(stmt).first() is not None


def add_subscriber(
    engine: Engine, email: str, name: str | None = None, *, source: str = "cli"
) -> AddResult:
    """Add one active subscriber, or say why not; never reactivates anyone."""
    addr = normalise_address(email)
    with write_session(engine) as session:
        if is_suppressed(session, addr.key):
            return AddResult(AddResult.SUPPRESSED, addr.email, None, None)
        sub = _find(session, addr.key)
        if sub is None:
            now = utcnow()
            sub = Subscriber(
                email=addr.email,
                email_key=addr.key,
                name=clean_name(name),
                status=SubscriberStatus.ACTIVE,
                token=new_token(),
                source=source[:200],
                created_at=now,
                updated_at=now,
            )
            session.add(sub)
            return AddResult(AddResult.ADDED, addr.email, sub.status, sub)
        if sub.status in SubscriberStatus.SUPPRESSED:
            return AddResult(AddResult.KEPT_UNSUBSCRIBED, sub.email, sub.status, sub)
        if sub.status == SubscriberStatus.PENDING:
            sub.status = SubscriberStatus.ACTIVE
            sub.name = sub.name or clean_name(name)
            sub.updated_at = utcnow()
            session.add(sub)
            return AddResult(AddResult.ACTIVATED, sub.email, sub.status, sub)
        return AddResult(AddResult.UNCHANGED, sub.email, sub.status, sub)


def _unsubscribe(sub: Subscriber, method: str, when: datetime | None = None) -> bool:
    """Mark unsubscribed unless already not mailable; True if it changed."""
    if sub.status in SubscriberStatus.SUPPRESSED:
        return False
    now = utcnow()
    sub.status = SubscriberStatus.UNSUBSCRIBED
    sub.unsubscribed_at = when or now
    sub.unsubscribe_method = method[:32]
    sub.updated_at = now
    return True


def remove_subscriber(engine: Engine, email: str, *, method: str = "admin") -> RemoveResult:
    """Unsubscribe one address; the row stays so nobody can bring it back by accident."""
    addr = normalise_address(email)
    with write_session(engine) as session:
        sub = _find(session, addr.key)
        if sub is None:
            raise SubscriberError(f"no subscriber {addr.email}")
        changed = _unsubscribe(sub, method)
        session.add(sub)
        return RemoveResult(sub.email, sub.status, changed)


def unsubscribe_by_token(engine: Engine, token: str, *, method: str) -> Subscriber | None:
    """Unsubscribe whoever holds `token` (idempotent); None if the token is unknown."""
    if not token or len(token) > 64 or "\x00" in token:  # PostgreSQL refuses NUL
        return None
    with write_session(engine) as session:
        sub = session.exec(select(Subscriber).where(Subscriber.token == token)).first()
        if sub is None:
            return None
        if _unsubscribe(sub, method):
            session.add(sub)
        return sub


def list_subscribers(engine: Engine, status: str | None = None) -> Iterator[Subscriber]:
    """Stream subscribers by id, optionally of one status (memory stays flat)."""
    if status is not None and status not in SubscriberStatus.ALL:
        raise SubscriberError(
            f"unknown status {status!r} (one of: {', '.join(SubscriberStatus.ALL)})"
        )
    stmt = select(Subscriber).order_by(col(Subscriber.id))
    if status is not None:
        stmt = stmt.where(Subscriber.status == status)
    with read_session(engine) as session:
        yield from session.exec(stmt.execution_options(yield_per=1000))


def _when(value: datetime | None) -> str:
    return value.isoformat() if value else ""


def export_csv(engine: Engine, out: TextIO) -> int:
    """Write every subscriber as CSV (re-importable, formula-safe); return the row count."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for sub in list_subscribers(engine):
        row = (
            sub.email,
            sub.name or "",
            sub.status,
            _when(sub.created_at),
            _when(sub.opt_in_at),
            _when(sub.confirmed_at),
            _when(sub.unsubscribed_at),
            sub.source or "",
        )
        writer.writerow([neutralise_cell(cell) for cell in row])
        count += 1
    return count


def forget_subscriber(engine: Engine, email: str) -> ForgetResult:
    """GDPR erasure: delete the row, its deliveries and its bounce reports (they hold
    the address), keep only a hash as suppression.

    Deliveries have no foreign key to rely on (migration 0007): `fence_erasures` keeps
    this apart from the making of an issue's deliveries, whose INSERT then either came
    first, and its rows are deleted here, or comes after, and no longer sees this row.
    """
    addr = normalise_address(email)
    digest = email_hash(addr.key)
    with write_session(engine) as session:
        fence_erasures(session)
        sub = _find(session, addr.key)
        deliveries = 0
        if sub is not None:
            theirs = sa.select(col(Delivery.id)).where(col(Delivery.subscriber_id) == sub.id)
            recipient = sa.func.lower(col(BounceEvent.recipient))
            session.execute(
                sa.delete(BounceEvent).where(
                    sa.or_(
                        col(BounceEvent.subscriber_id) == sub.id,
                        col(BounceEvent.delivery_id).in_(theirs),
                        recipient.in_(sorted({addr.key, addr.email.lower()})),
                    )
                )
            )
            # Deliveries before the row: the order in which a bounce report's keys lock
            # them (delivery, then subscriber), so the two never wait for each other.
            stmt = sa.delete(Delivery).where(col(Delivery.subscriber_id) == sub.id)
            result = session.execute(stmt)
            # Session.execute is typed as Result; a DELETE gives a CursorResult, which counts
            deliveries = result.rowcount or 0  # type: ignore[attr-defined]
            session.execute(sa.delete(Subscriber).where(col(Subscriber.id) == sub.id))
            session.expunge(sub)
        if not is_suppressed(session, addr.key):
            session.add(Suppression(email_hash=digest, reason=FORGOTTEN))
        return ForgetResult(addr.email, sub is not None, deliveries)


def counts_by_status(engine: Engine) -> dict[str, int]:
    """Subscribers per status, every status present (0 when none)."""
    counts = dict.fromkeys(SubscriberStatus.ALL, 0)
    column = col(Subscriber.status)
    stmt = sa.select(column, sa.func.count()).group_by(column)
    with read_session(engine) as session:
        for status, count in session.execute(stmt):
            counts[status] = count
    return counts
