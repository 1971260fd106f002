"""Which delivery a bounce or complaint report is about, and how sure we are.

Anyone can mail the bounce mailbox, so a report changes a subscriber only when
it proves it is about a message we sent to them, and then only that one
delivery:
- the signed VERP token of the envelope recipient (or of the original's
  Return-Path), HMAC-checked, names a delivery; a recipient the report names
  must be that delivery's address;
- else the original's Message-ID (Delivery.message_id), and the report must
  name the address that Message-ID was sent to.
The address a report names is never enough by itself. A token that fails
verification marks the report forged: it matches nobody, whatever else it
claims. Findings about any other address (a forged DSN may list hundreds) are
unmatched. The verdict is stored as BounceEvent.matched_by (MatchedBy).

Kept apart from record (which stores the events and applies the policy) so the
rule that decides whom a report may touch reads in one place. It only reads
the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel import Session, select

from newsletter.bounces.dsn import Finding, ParsedReport
from newsletter.config import Settings
from newsletter.mail.addresses import AddressError, normalise_address
from newsletter.mail.verp import decode_token, find_token
from newsletter.models import Delivery, Subscriber


class MatchedBy:
    """How a report was tied to a delivery (BounceEvent.matched_by)."""

    VERP = "verp"  # a valid VERP token
    MESSAGE_ID = "message-id"  # the original's Message-ID, sent to the address named
    FORGED = "forged"  # a VERP token that failed verification
    MISMATCH = "mismatch"  # a valid token or Message-ID, but about another address
    NONE = "none"  # no token, no Message-ID of ours
    ERASED = "erased"  # a valid token, but its delivery's subscriber row is gone

    UNMATCHED = (FORGED, MISMATCH, NONE, ERASED)


@dataclass
class Match:
    """The delivery and subscriber a report (or one finding of it) proved, and how."""

    delivery: Delivery | None = None
    subscriber: Subscriber | None = None
    how: str = MatchedBy.NONE


def _tokens(settings: Settings, addresses: Iterable[str]) -> list[str]:
    return [t for a in addresses if (t := find_token(settings, a)) is not None]


def _key(address: str | None) -> str | None:
    """The identity key of an address as a report spells it (None for nothing usable)."""
    if not address:
        return None
    try:
        return normalise_address(address).key
    except AddressError:
        return address.strip().strip("<>").casefold() or None


def _named(report: ParsedReport) -> set[str]:
    """Every address the report names as the one that failed."""
    spelled = [*report.named]
    for finding in report.findings:
        spelled += [finding.recipient or "", finding.original_recipient or ""]
    return {key for a in spelled if (key := _key(a))}


def _speaks_for(finding: Finding, key: str) -> bool:
    """A finding applies to the delivery's address: it names it, or names nobody."""
    if finding.recipient is None and finding.original_recipient is None:
        return True
    return key in {_key(finding.recipient), _key(finding.original_recipient)}


def match_report(session: Session, settings: Settings, report: ParsedReport) -> Match:
    """The one delivery a report proves it is about (see the module doc)."""
    tokens = _tokens(settings, [*report.envelope_addresses, *report.original_addresses])
    any_valid = False
    for token in tokens:
        delivery_id = decode_token(settings, token)
        any_valid = any_valid or delivery_id is not None
        delivery = session.get(Delivery, delivery_id) if delivery_id is not None else None
        if delivery is not None:
            sub = session.get(Subscriber, delivery.subscriber_id)
            if sub is None:  # deleted by hand: a delivery has no foreign key (migration 0007)
                return Match(how=MatchedBy.ERASED)
            return Match(delivery, sub, MatchedBy.VERP)
    if tokens and not any_valid:
        return Match(how=MatchedBy.FORGED)
    named = _named(report)
    how = MatchedBy.NONE
    for message_id in report.message_ids:
        found = session.exec(select(Delivery).where(Delivery.message_id == message_id)).first()
        if found is None:
            continue
        sub = session.get(Subscriber, found.subscriber_id)
        if sub is not None and sub.email_key in named:
            return Match(found, sub, MatchedBy.MESSAGE_ID)
        how = MatchedBy.MISMATCH  # our Message-ID, but the report is about someone else
    return Match(how=how)


def match_finding(match: Match, finding: Finding) -> Match:
    """What one finding of a matched report may act on.

    The report's match when the finding is about the matched subscriber (or names
    nobody); else no subscriber, as a mismatch (a report may list other addresses).
    """
    sub = match.subscriber
    if sub is not None and _speaks_for(finding, sub.email_key):
        return match
    return Match(how=match.how if sub is None else MatchedBy.MISMATCH)
