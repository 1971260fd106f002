"""Bounces and complaints that arrive later: record each report, apply the policy.

Policy (as Mailman and Keila do it):
- hard bounce (5.1.x, 5.2.1): the subscriber becomes `bounced` at once;
- soft bounce (4.x.x, 5.2.2 mailbox full, unreadable failures): `bounced` after
  3 soft bounces of distinct deliveries within 30 days;
- complaint (ARF abuse): `complained` at once, whatever the status was; the
  importer never reactivates it;
- policy (x.7.x): the sender's setup is wrong; nobody is suppressed, the admin
  is told;
- auto-replies and delay warnings: recorded and ignored.

Which delivery a report is about is decided in match (VERP token or
Message-ID, never the address alone); this module stores one BounceEvent per
finding with that verdict and applies the policy only to the matched
subscriber. Unmatched reports suppress nobody; `bounces import` and `status`
count them for the admin.

Messages larger than MAX_MESSAGE_BYTES are skipped unread (bounces are small):
the mailbox readers never hold more than that much of one message.

Each report is stored once (BounceEvent.report_id), so re-reading a mailbox
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from newsletter.bounces.dsn import Finding, ParsedReport, UnreadableReport, parse_report
from newsletter.bounces.match import Match, MatchedBy, match_finding, match_report
from newsletter.config import Settings
from newsletter.db import read_session, write_session
from newsletter.models import (
    BounceEvent,
    BounceKind,
    Subscriber,
    SubscriberStatus,
    table_of,
    utcnow,
)

SOFT_LIMIT = 3
SOFT_WINDOW = timedelta(days=30)
BATCH = 100  # messages per transaction (and per IMAP move)
MAX_MESSAGE_BYTES = 10 * 1024 * 1024  # a report is a few KB; a 40 MB one is no bounce
MAX_NOTES = 20  # per kind of note in the printed report
_MAILABLE = frozenset({SubscriberStatus.ACTIVE, SubscriberStatus.PENDING})
_K = TypeVar("_K")


@dataclass(frozen=True)
class TooLarge:
    """Stands for a message over MAX_MESSAGE_BYTES: skipped, never read whole."""

    size: int  # its size in bytes, or at least this many when the rest was not read


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
    mismatched: int = 0  # of which: a valid token or Message-ID sent to another address
    suppressed_now: int = 0  # subscribers who could be mailed before this run
    not_reports: int = 0  # mail that is no report (left for a human)
    unreadable: int = 0  # could not be parsed at all (left where it was)
    too_large: int = 0  # over MAX_MESSAGE_BYTES: skipped unread (left where it was)
    policy_notes: list[str] = field(default_factory=list)
    unmatched_notes: list[str] = field(default_factory=list)
    skipped_notes: list[str] = field(default_factory=list)  # too large or unreadable
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
            f"unmatched:      {self.unmatched}" + self._unmatched_detail(),
            f"suppressed now: {self.suppressed_now}",
        ]
        if self.not_reports or self.unreadable or self.too_large:
            out.append(
                f"not bounce reports: {self.not_reports}, unreadable: {self.unreadable},"
                f" too large: {self.too_large} (left for a person to read)"
            )
        if self.moved is not None:
            out.append(f"moved to the processed folder: {self.moved}")
        if self.policy_notes:
            out.append(
                "Refused by policy (5.7.x): the sender's setup is wrong, nobody was suppressed."
                " Check SPF, DKIM, DMARC and the sending IP's reputation:"
            )
            out += _capped(self.policy_notes)
        if self.unmatched_notes:
            out.append(
                "Unmatched (no valid VERP token, no Message-ID we sent to that address):"
                " nobody was suppressed:"
            )
            out += _capped(self.unmatched_notes)
        if self.skipped_notes:
            out.append("Skipped, left where they were:")
            out += _capped(self.skipped_notes)
        return out

    def _unmatched_detail(self) -> str:
        parts = []
        if self.forged:
            parts.append(f"{self.forged} with a forged VERP token")
        if self.mismatched:
            parts.append(f"{self.mismatched} about another address than the delivery's")
        return f" ({', '.join(parts)})" if parts else ""


def _capped(notes: list[str]) -> list[str]:
    lines = [f"  {note}" for note in notes[:MAX_NOTES]]
    if len(notes) > MAX_NOTES:
        lines.append(f"  ... and {len(notes) - MAX_NOTES} more")
    return lines


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
    """Store one report's findings; apply the policy to those about the matched delivery."""
    seen = session.exec(
        select(BounceEvent.id).where(BounceEvent.report_id == report.report_id)
    ).first()
    if seen is not None:
        out.already_seen += 1
        return
    out.processed += 1
    match = match_report(session, settings, report)
    received = report.received_at if report.received_at and report.received_at <= now else now
    for index, finding in enumerate(report.findings):
        found = match_finding(match, finding)
        sub, how = found.subscriber, found.how
        event = _event(report, finding, index, found)
        event.source, event.received_at = source[:500], received
        session.add(event)
        session.flush()  # the soft-bounce count below sees this event
        out.count(finding.kind)
        if finding.kind == BounceKind.IGNORED:
            continue
        if sub is None:
            out.unmatched += 1
            out.forged += how == MatchedBy.FORGED
            out.mismatched += how == MatchedBy.MISMATCH
            out.unmatched_notes.append(_unmatched_note(finding, how, source))
        if finding.kind == BounceKind.POLICY:
            out.policy_notes.append(_policy_note(finding, sub, report))
        if _apply(session, event, sub, now):
            out.suppressed_now += 1
        if sub is not None:
            session.add(sub)


_WHY = {
    MatchedBy.FORGED: "forged VERP token",
    MatchedBy.MISMATCH: "token or Message-ID of a delivery to another address",
    MatchedBy.NONE: "no VERP token or Message-ID of ours",
    MatchedBy.ERASED: "a delivery to a subscriber no longer stored",
}


def _unmatched_note(finding: Finding, how: str, source: str) -> str:
    what = " ".join(filter(None, [finding.kind, finding.status_code]))
    who = finding.recipient or "no recipient named"
    return f"{source}: {what} {who} ({_WHY[how]})"[:300]


def _event(report: ParsedReport, finding: Finding, index: int, match: Match) -> BounceEvent:
    delivery, sub = match.delivery, match.subscriber
    return BounceEvent(
        report_id=report.report_id if index == 0 else f"{report.report_id}#{index}",
        kind=finding.kind,
        status_code=finding.status_code,
        diagnostic=finding.diagnostic,
        recipient=(finding.recipient or (sub.email if sub else None) or "")[:320] or None,
        delivery_id=delivery.id if delivery else None,
        subscriber_id=sub.id if sub else None,
        issue_id=delivery.issue_id if delivery else None,
        matched_by=match.how,
    )


def _policy_note(finding: Finding, sub: Subscriber | None, report: ParsedReport) -> str:
    who = sub.email if sub else finding.recipient or "unknown recipient"
    return f"{who}: {finding.status_code or '?'} {finding.diagnostic or report.subject}"[:300]


def _read(source: str, raw: bytes | TooLarge, out: BounceReport) -> ParsedReport | None:
    """One message read, or None (counted and noted) when it is no report to record."""
    if isinstance(raw, TooLarge):
        out.too_large += 1
        out.skipped_notes.append(
            f"{source}: {raw.size:,} bytes or more, over the {MAX_MESSAGE_BYTES:,}-byte limit"
            " for a report: not read"
        )
        return None
    try:
        report = parse_report(raw)
    except UnreadableReport as exc:
        out.unreadable += 1
        out.skipped_notes.append(f"{source}: {exc.message}")
        return None
    if not report.is_report:
        out.not_reports += 1
        return None
    return report


def process_messages(
    engine: Engine,
    settings: Settings,
    messages: Iterable[tuple[_K, str, bytes | TooLarge]],
    *,
    now: datetime | None = None,
    on_commit: Callable[[Sequence[_K]], None] | None = None,
) -> BounceReport:
    """Read, match and record `(key, source, raw bytes)` messages; apply the policy.

    Messages are taken one at a time and parsed outside any transaction (only
    the small parsed reports of a batch are kept), so memory stays bounded by
    one message and the database is locked only while a batch is recorded.
    `on_commit(keys)` is then called with the keys of the messages recorded (or
    seen before): the IMAP fetcher moves exactly those, so mail that is no
    report, unreadable or too large stays where it is.
    """
    out = BounceReport()
    now = now or utcnow()
    iterator = iter(messages)
    while True:
        batch: list[tuple[_K, str, ParsedReport]] = []
        taken = 0
        for key, source, raw in islice(iterator, BATCH):
            taken += 1
            report = _read(source, raw, out)
            del raw  # only the parsed report stays
            if report is not None:
                batch.append((key, source, report))
        if batch:
            with write_session(engine) as session:
                for _, source, report in batch:
                    _record(session, settings, report, source, now, out)
            if on_commit is not None:
                on_commit([key for key, _, _ in batch])
        if taken < BATCH:
            return out


def unmatched_report_count(engine: Engine) -> int:
    """Bounces and complaints recorded that changed nobody (no proof they were ours)."""
    table = table_of(BounceEvent)
    query = sa.select(sa.func.count()).where(
        table.c.subscriber_id.is_(None), table.c.kind != BounceKind.IGNORED
    )
    with read_session(engine) as session:
        return int(session.execute(query).scalar_one())


def bounce_counts_by_issue(engine: Engine) -> dict[int, dict[str, int]]:
    """{issue id: {"hard": n, "soft": n, "complaint": n, "policy": n}} for `newsletter status`.

    Counts deliveries (one per subscriber per issue), so a mailbox that reports
    the same failure twice does not count it twice. Issues without any are absent.
    """
    kinds = (BounceKind.HARD, BounceKind.SOFT, BounceKind.COMPLAINT, BounceKind.POLICY)
    table = table_of(BounceEvent)
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
