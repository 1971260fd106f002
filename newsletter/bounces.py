"""Bounces and complaints that arrive later: match each report to its delivery, apply the policy.

Policy (as Mailman and Keila do it):
- hard bounce (5.1.x, 5.2.1): the subscriber becomes `bounced` at once;
- soft bounce (4.x.x, 5.2.2 mailbox full, unreadable failures): `bounced` after
  3 soft bounces of distinct deliveries within 30 days;
- complaint (ARF abuse): `complained` at once, whatever the status was; the
  importer never reactivates it;
- policy (x.7.x): the sender's setup is wrong; nobody is suppressed, the admin
  is told;
- auto-replies and delay warnings: recorded and ignored.

Matching, in order of trust: the signed VERP token of the envelope recipient
(or of the original's Return-Path), the original Message-ID
(Delivery.message_id), the reported recipient address. A report whose token
fails verification is forged or altered: it matches nobody and suppresses
nobody, whatever else it claims.

Each report is stored once (BounceEvent.report_id), so re-reading a mailbox
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from newsletter.addresses import AddressError, normalise_address
from newsletter.config import Settings
from newsletter.db import read_session, write_session
from newsletter.dsn import Finding, ParsedReport, parse_report
from newsletter.models import (
    BounceEvent,
    BounceKind,
    Delivery,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from newsletter.verp import decode_token, find_token

SOFT_LIMIT = 3
SOFT_WINDOW = timedelta(days=30)
BATCH = 100  # messages per transaction (and per IMAP move)
_MAILABLE = frozenset({SubscriberStatus.ACTIVE, SubscriberStatus.PENDING})
_K = TypeVar("_K")


@dataclass
class BounceReport:
    """What one `bounces import` or `bounces fetch` did, for the command to print."""

    processed: int = 0  # reports read and recorded now
    already_seen: int = 0  # recorded by an earlier run: skipped
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    policy: int = 0
    ignored: int = 0  # auto-replies, delay warnings, successes
    unmatched: int = 0  # bounces and complaints that map to no subscriber
    forged: int = 0  # of which: a VERP token that failed verification
    suppressed_now: int = 0  # subscribers who could be mailed before this run
    not_reports: int = 0  # mail that is no report (left for a human)
    unreadable: int = 0  # could not be parsed at all (left where it was)
    policy_notes: list[str] = field(default_factory=list)
    moved: int | None = None  # IMAP only

    def count(self, kind: str) -> None:
        attr = {BounceKind.COMPLAINT: "complaints"}.get(kind, kind)
        setattr(self, attr, getattr(self, attr) + 1)

    def lines(self) -> list[str]:
        out = [
            f"processed:      {self.processed}"
            + (f" ({self.already_seen} already seen, skipped)" if self.already_seen else ""),
            f"hard bounces:   {self.hard}",
            f"soft bounces:   {self.soft}",
            f"complaints:     {self.complaints}",
            f"policy (5.7.x): {self.policy}",
            f"ignored:        {self.ignored} (auto-replies, delay warnings)",
            f"unmatched:      {self.unmatched}"
            + (f" ({self.forged} with a forged VERP token)" if self.forged else ""),
            f"suppressed now: {self.suppressed_now}",
        ]
        if self.not_reports or self.unreadable:
            out.append(
                f"not bounce reports: {self.not_reports}, unreadable: {self.unreadable}"
                " (left for a person to read)"
            )
        if self.moved is not None:
            out.append(f"moved to the processed folder: {self.moved}")
        if self.policy_notes:
            out.append(
                "Refused by policy (5.7.x): the sender's setup is wrong, nobody was suppressed."
                " Check SPF, DKIM, DMARC and the sending IP's reputation:"
            )
            out += [f"  {note}" for note in self.policy_notes]
        return out


@dataclass
class _Match:
    delivery: Delivery | None = None
    subscriber: Subscriber | None = None
    forged: bool = False
    how: str = "none"  # "verp", "message-id", "recipient" or "none"


def _tokens(settings: Settings, addresses: Iterable[str]) -> list[str]:
    return [t for a in addresses if (t := find_token(settings, a)) is not None]


def _match(session: Session, settings: Settings, report: ParsedReport) -> _Match:
    """Find the delivery (or at least the subscriber) a report is about."""
    tokens = _tokens(settings, [*report.envelope_addresses, *report.original_addresses])
    for token in tokens:
        delivery_id = decode_token(settings, token)
        delivery = session.get(Delivery, delivery_id) if delivery_id is not None else None
        if delivery is not None:
            return _Match(delivery, session.get(Subscriber, delivery.subscriber_id), how="verp")
    if tokens:
        return _Match(forged=True)
    for message_id in report.message_ids:
        found = session.exec(select(Delivery).where(Delivery.message_id == message_id)).first()
        if found is not None:
            return _Match(found, session.get(Subscriber, found.subscriber_id), how="message-id")
    return _Match()


def _subscriber_by_address(session: Session, address: str | None) -> Subscriber | None:
    if not address:
        return None
    try:
        key = normalise_address(address).key
    except AddressError:
        key = address.strip().casefold()
    return session.exec(select(Subscriber).where(Subscriber.email_key == key)).first()


def _soft_limit_reached(session: Session, subscriber_id: int) -> bool:
    """3 soft bounces of distinct deliveries within any 30-day window."""
    rows = session.exec(
        select(BounceEvent.received_at, BounceEvent.delivery_id, BounceEvent.report_id).where(
            BounceEvent.subscriber_id == subscriber_id, BounceEvent.kind == BounceKind.SOFT
        )
    ).all()
    first_seen: dict[object, datetime] = {}
    for when, delivery_id, report_id in rows:
        key = delivery_id if delivery_id is not None else report_id
        if when is not None and (key not in first_seen or when < first_seen[key]):
            first_seen[key] = when
    times = sorted(first_seen.values())
    return any(
        times[i + SOFT_LIMIT - 1] - times[i] <= SOFT_WINDOW
        for i in range(len(times) - SOFT_LIMIT + 1)
    )


def _suppress(sub: Subscriber, status: str, when: datetime, now: datetime) -> bool:
    """Set a suppressed status; True when the subscriber could be mailed until now."""
    was_mailable = sub.status in _MAILABLE
    sub.status = status
    sub.unsubscribe_method = "complaint" if status == SubscriberStatus.COMPLAINED else "bounce"
    sub.unsubscribed_at = sub.unsubscribed_at or when
    sub.updated_at = now
    return was_mailable


def _apply(session: Session, event: BounceEvent, sub: Subscriber | None, now: datetime) -> bool:
    """The policy for one recorded event; True when it suppressed a mailable subscriber."""
    if sub is None or sub.id is None:
        return False
    when = event.received_at or now
    if event.kind == BounceKind.COMPLAINT and sub.status != SubscriberStatus.COMPLAINED:
        return _suppress(sub, SubscriberStatus.COMPLAINED, when, now)
    if sub.status not in _MAILABLE:
        return False  # unsubscribed, bounced or complained already: keep their own reason
    if event.kind == BounceKind.HARD:
        return _suppress(sub, SubscriberStatus.BOUNCED, when, now)
    if event.kind == BounceKind.SOFT and _soft_limit_reached(session, sub.id):
        return _suppress(sub, SubscriberStatus.BOUNCED, when, now)
    return False


def _record(
    session: Session,
    settings: Settings,
    report: ParsedReport,
    source: str,
    now: datetime,
    out: BounceReport,
) -> None:
    """Store one report's findings and apply the policy to each."""
    seen = session.exec(
        select(BounceEvent.id).where(BounceEvent.report_id == report.report_id)
    ).first()
    if seen is not None:
        out.already_seen += 1
        return
    out.processed += 1
    match = _match(session, settings, report)
    received = report.received_at if report.received_at and report.received_at <= now else now
    for index, finding in enumerate(report.findings):
        sub = match.subscriber
        if sub is None and not match.forged:
            sub = _subscriber_by_address(session, finding.recipient)
        event = _event(report, finding, index, match, sub, source, received)
        session.add(event)
        session.flush()  # the soft-bounce count below sees this event
        out.count(finding.kind)
        if finding.kind == BounceKind.IGNORED:
            continue
        if sub is None:
            out.unmatched += 1
            out.forged += match.forged
        if finding.kind == BounceKind.POLICY:
            out.policy_notes.append(_policy_note(finding, sub, report))
        if _apply(session, event, sub, now):
            out.suppressed_now += 1
        if sub is not None:
            session.add(sub)


def _event(
    report: ParsedReport,
    finding: Finding,
    index: int,
    match: _Match,
    sub: Subscriber | None,
    source: str,
    received: datetime,
) -> BounceEvent:
    delivery = match.delivery
    return BounceEvent(
        report_id=report.report_id if index == 0 else f"{report.report_id}#{index}",
        kind=finding.kind,
        status_code=finding.status_code,
        diagnostic=finding.diagnostic,
        recipient=(finding.recipient or (sub.email if sub else None) or "")[:320] or None,
        delivery_id=delivery.id if delivery else None,
        subscriber_id=sub.id if sub else None,
        issue_id=delivery.issue_id if delivery else None,
        source=source[:500],
        received_at=received,
    )


def _policy_note(finding: Finding, sub: Subscriber | None, report: ParsedReport) -> str:
    who = sub.email if sub else finding.recipient or "unknown recipient"
    return f"{who}: {finding.status_code or '?'} {finding.diagnostic or report.subject}"[:300]


def _chunks(items: Iterable[_K], size: int) -> Iterator[list[_K]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def process_messages(
    engine: Engine,
    settings: Settings,
    messages: Iterable[tuple[_K, str, bytes]],
    *,
    now: datetime | None = None,
    on_commit: Callable[[Sequence[_K]], None] | None = None,
) -> BounceReport:
    """Read, match and record `(key, source, raw bytes)` messages; apply the policy.

    One transaction per batch; `on_commit(keys)` is then called with the keys of
    the messages that are recorded (or were already): the IMAP fetcher moves
    exactly those, so mail that is no report, or unreadable, stays where it is.
    """
    out = BounceReport()
    now = now or utcnow()
    for chunk in _chunks(messages, BATCH):
        done: list[_K] = []
        with write_session(engine) as session:
            for key, source, raw in chunk:
                try:
                    report = parse_report(raw)
                except Exception:  # noqa: BLE001 - one broken message must not stop the rest
                    out.unreadable += 1
                    continue
                if not report.is_report:
                    out.not_reports += 1
                    continue
                _record(session, settings, report, source, now, out)
                done.append(key)
        if on_commit is not None and done:
            on_commit(done)
    return out


def bounce_counts_by_issue(engine: Engine) -> dict[int, dict[str, int]]:
    """{issue id: {"hard": n, "soft": n, "complaint": n, "policy": n}} for `newsletter status`.

    Counts deliveries (one per subscriber per issue), so a mailbox that reports
    the same failure twice does not count it twice. Issues without any are absent.
    """
    kinds = (BounceKind.HARD, BounceKind.SOFT, BounceKind.COMPLAINT, BounceKind.POLICY)
    table = BounceEvent.__table__  # type: ignore[attr-defined]
    query = (
        sa.select(table.c.issue_id, table.c.kind, sa.func.count(sa.distinct(table.c.delivery_id)))
        .where(table.c.issue_id.is_not(None), table.c.kind.in_(kinds))
        .group_by(table.c.issue_id, table.c.kind)
    )
    counts: dict[int, dict[str, int]] = {}
    with read_session(engine) as session:
        for issue_id, kind, number in session.execute(query):
            counts.setdefault(issue_id, dict.fromkeys(kinds, 0))[kind] = number
    return counts
