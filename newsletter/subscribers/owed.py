"""One rule for the emails this package owes (confirmations, welcomes): kept in one place.

An owed email is a row whose "send at" column says when it falls due. A drain
takes up to DRAIN_BATCH due rows, claims each under CLAIM_LEASE (a sender that
dies mid-way leaves it owed again), sends them over one SMTP connection and
settles each: done, retry after the next RETRY_BACKOFF step, or refused for
good. It never raises for SMTP trouble: an unusable server postpones the rest
of the batch to the first backoff step instead of hammering it.

What differs per email stays with its module (signup.py, welcome.py): which
columns hold the state, what counts as due, how the message is rendered, and
how many attempts are worth it (`max_attempts` of `next_try`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from newsletter.db import write_session
from newsletter.errors import NewsletterError
from newsletter.mail.transport import BaseTransport, ConnectionLost, Reply, TransportFactory
from newsletter.models import Subscriber
from newsletter.subscribers.confirmation import recipient_refused

#: Waits between attempts while the server is down (then the last one, until max_attempts).
RETRY_BACKOFF = (
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(minutes=30),
    timedelta(hours=2),
)
#: A claimed email is tried again after this if its sender died mid-way.
CLAIM_LEASE = timedelta(minutes=15)
DRAIN_BATCH = 50

Job = TypeVar("Job")


class Outcome(Enum):
    """How one attempt ended, for the caller's settle step."""

    SENT = "sent"  # the server took it (or may have: never send twice)
    RETRY = "retry"  # temporary: the next backoff step, if attempts are left
    REFUSED = "refused"  # the recipient's server refused the address for good


@dataclass
class Drained:
    """What one drain did; each module maps it onto its own result type."""

    sent: int = 0
    deferred: int = 0
    refused: int = 0
    skipped: int = 0  # claimed by no one: gone, no longer wanted, or held by another sender


def next_try(now: datetime, attempts: int, max_attempts: int) -> datetime | None:
    """When to try again after failed attempt number `attempts`; None: give up."""
    if attempts >= max_attempts:
        return None
    return now + RETRY_BACKOFF[min(attempts, len(RETRY_BACKOFF)) - 1]


def postpone(
    engine: Engine,
    ids: Sequence[int],
    until: datetime,
    send_at: str,
    *still_owed: sa.ColumnElement[bool],
) -> None:
    """The server cannot be used: the rest of the batch waits too (rows still owed only).

    `send_at` names the row's "send at" column; `still_owed` adds conditions
    (a welcome must also be unclaimed).
    """
    if not ids:
        return
    with write_session(engine) as session:
        session.execute(
            sa.update(Subscriber)
            .where(
                col(Subscriber.id).in_(ids),
                col(getattr(Subscriber, send_at)).is_not(None),
                *still_owed,
            )
            .values({send_at: until})
        )


def drain(
    ids: Sequence[int],
    factory: TransportFactory,
    sender: str,
    now: datetime,
    *,
    claim: Callable[[int], Job | None],
    message: Callable[[Job], tuple[str, bytes]],
    settle: Callable[[Job, Outcome, Reply | None], None],
    postpone_rest: Callable[[list[int], datetime], None],
    what: str,
    log: logging.Logger,
    error_on_5xx: bool = False,
) -> Drained:
    """Claim, send and settle each of `ids` over one connection; never raises for SMTP.

    `message(job)` gives (recipient, bytes); `what` names the email in the log
    ("welcome email"); `error_on_5xx` logs a 5xx that is not the recipient's
    fault as an error rather than a deferral (confirmations: a visitor waits).
    """
    result = Drained()
    transport: BaseTransport | None = None
    try:
        for index, sub_id in enumerate(ids):
            job = claim(sub_id)
            if job is None:
                result.skipped += 1
                continue
            to, data = message(job)
            try:
                if transport is None:
                    transport = factory()
                reply = transport.send(sender, to, data)
            except ConnectionLost as exc:
                transport = None
                if exc.after_body:  # the server may have it: never send twice
                    log.warning("%s: connection lost after the body (%s)", what, exc)
                    settle(job, Outcome.SENT, None)
                    result.sent += 1
                else:
                    settle(job, Outcome.RETRY, None)
                    result.deferred += 1
                continue
            except NewsletterError as exc:  # the server cannot be used at all (connect, login)
                log.warning("%ss wait: %s", what, exc.message)
                settle(job, Outcome.RETRY, None)
                later = list(ids[index + 1 :])
                postpone_rest(later, now + RETRY_BACKOFF[0])
                result.deferred += 1 + len(later)
                break
            if reply.ok:
                settle(job, Outcome.SENT, reply)
                result.sent += 1
            elif recipient_refused(reply):
                log.info("%s refused for good: %s", what, reply)
                settle(job, Outcome.REFUSED, reply)
                result.refused += 1
            else:
                if error_on_5xx and 500 <= reply.code < 600:
                    log.error("the mail server refused a %s: %s", what, reply)
                else:
                    log.warning("%s deferred: %s", what, reply)
                settle(job, Outcome.RETRY, reply)
                result.deferred += 1
    finally:
        if transport is not None:
            transport.close()
    return result
