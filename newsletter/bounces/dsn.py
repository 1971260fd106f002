"""Reading a bounce or complaint report: what happened, to whom, for which message (pure).

In order of trust: RFC 3464 delivery status notifications (multipart/report;
report-type=delivery-status), RFC 5965 ARF complaints (report-type=
feedback-report), then non-standard bounces (qmail, old Exchange, home-grown
MTAs) read by heuristics. Auto-replies are recognised (RFC 3834 and the usual
vendor headers) so that an out-of-office never counts as a bounce. Every report
also yields the addresses that may hold our VERP token and the Message-IDs of
the original message, which the caller uses to find the delivery, and the
addresses the report names as the failed recipient, which the caller checks
against that delivery (a report may only speak for the address we sent to).

Everything here reads attacker-controlled bytes: lists and strings taken from a
report are capped, and any failure to read one is an UnreadableReport.
"""

from __future__ import annotations

import contextlib
import email
import email.errors
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser, HeaderParser
from email.utils import getaddresses, parsedate_to_datetime

from newsletter.errors import NewsletterError
from newsletter.models import BounceKind

_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_BASIC = re.compile(r"(?<!\d)([45]\d\d)(?:[ -]|$)")
_MSGID = re.compile(r"<[^<>\s@]+@[^<>\s]+>")
_ANGLE_ADDR = re.compile(r"^[ \t]*<([^<>\s]+@[^<>\s]+)>:", re.MULTILINE)  # qmail "<a@b>:"
_USER_UNKNOWN = re.compile(
    r"user unknown|unknown user|no such user|unknown recipient|recipient not found"
    r"|does ?n[o']t exist|no mailbox|mailbox not found|invalid recipient|not a valid recipient"
    r"|account (?:is )?disabled|address (?:is )?unknown",
    re.IGNORECASE,
)
_BOUNCE_SENDER = re.compile(r"^(mailer-daemon|postmaster|mail delivery (sub)?system)\b", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (status notification|failure|has failed)|mail delivery failed"
    r"|returned mail|failure notice|could not be delivered|delivery problem|non-?delivery",
    re.IGNORECASE,
)
_AUTO_SUBJECT = re.compile(
    r"^(auto(matic)?[ -]?(reply|response|antwort)|auto:|out of (the )?office|abwesenheit"
    r"|r[ée]ponse automatique|absence|vacation|away from)",
    re.IGNORECASE,
)
#: addresses a delivery agent may write the envelope recipient into
ENVELOPE_HEADERS = (
    "Delivered-To",
    "X-Original-To",
    "Envelope-To",
    "X-Envelope-To",
    "X-Delivered-To",
    "To",
    "Cc",
)
MAX_REPORT_ID = 480
#: per report: findings (recipients) read, and addresses or Message-IDs kept
MAX_FINDINGS = 100
MAX_ADDRESSES = 50
#: each message of ours has one recipient: a report listing more than this is no report of ours,
#: and parsing 100,000 recipient blocks takes seconds
MAX_RECIPIENT_FIELDS = 1000
_RECIPIENT_FIELD = re.compile(rb"(?im)^(?:final|original)-recipient[ \t]*:")


class UnreadableReport(NewsletterError):
    """A message of the bounce mailbox that cannot be read at all (left for a person)."""

    hint = "It was left where it was; nobody was suppressed."


@dataclass(frozen=True)
class Finding:
    """What one report says about one recipient."""

    kind: str  # a BounceKind
    status_code: str | None = None  # e.g. "5.1.1"
    diagnostic: str | None = None
    recipient: str | None = None  # Final-Recipient / Original-Rcpt-To, if given
    original_recipient: str | None = None  # DSN Original-Recipient (before forwarding)


@dataclass
class ParsedReport:
    """One message of the bounce mailbox, read."""

    report_id: str  # the report's Message-ID, else a hash of the message
    format: str  # "dsn", "arf", "bounce" (non-standard), "auto-reply" or "other"
    findings: list[Finding] = field(default_factory=list)
    envelope_addresses: list[str] = field(default_factory=list)  # may hold a VERP token
    original_addresses: list[str] = field(default_factory=list)  # Return-Path etc. of ours
    message_ids: list[str] = field(default_factory=list)  # of the original message
    named: list[str] = field(default_factory=list)  # X-Failed-Recipients, the original's To
    received_at: datetime | None = None
    subject: str = ""

    @property
    def is_report(self) -> bool:
        """False for mail that is no report at all (a person wrote it): leave it for a human."""
        return self.format != "other"


def _text(value: object, cap: int = 2000) -> str:
    """A header value as one line: capped first, RFC 2047 decoded, whitespace collapsed.

    Headers are read raw (the compat32 policy) and capped before any decoding:
    the default policy's parser took 100 s and 1.5 GB on one 200,000-address To.
    """
    if value is None:
        return ""
    text = str(value)[:cap]
    if "=?" in text:
        with contextlib.suppress(ValueError, LookupError, email.errors.MessageError):
            text = str(make_header(decode_header(text)))  # else keep it as written
    return " ".join(text.split())


def _typed_address(value: str) -> str | None:
    """'rfc822; a@b' -> 'a@b'."""
    value = _text(value)
    if ";" in value:
        value = value.split(";", 1)[1]
    value = value.strip().strip("<>").strip()
    return value if "@" in value else None


def _report_id(msg: Message, raw: bytes) -> str:
    mid = _text(msg.get("Message-ID"), MAX_REPORT_ID + 1)
    if mid and len(mid) <= MAX_REPORT_ID:
        return mid
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _date(msg: Message) -> datetime | None:
    try:
        when = parsedate_to_datetime(_text(msg.get("Date"), 200))
    except (TypeError, ValueError, IndexError):
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def status_code(status: str | None, diagnostic: str | None) -> str | None:
    """The most specific enhanced status code among Status and Diagnostic-Code.

    Exim and others send `Status: 5.0.0` with the real `550 5.1.1` only in the
    diagnostic; a bare basic code becomes `5.0.0` / `4.0.0`.
    """
    found = _ENHANCED.search(status or "")
    code = ".".join(found.groups()) if found else None
    from_diag = _ENHANCED.search(diagnostic or "")
    if from_diag and (code is None or (code.endswith(".0.0") and code[0] == from_diag[1])):
        code = ".".join(from_diag.groups())
    if code is None and diagnostic:
        basic = _BASIC.search(diagnostic)
        if basic:
            code = f"{basic[1][0]}.0.0"
    return code


def classify(code: str | None, diagnostic: str | None = None) -> str:
    """The BounceKind of a failed delivery with this status code.

    x.7.x is the sender's problem (authentication, reputation, DMARC) whatever
    its class, so a run of 4.7.x throttling never suppresses readers.
    """
    if code is None:
        return BounceKind.SOFT  # a failure we cannot read: counts, but only three times
    klass, subject, detail = (int(part) for part in code.split("."))
    if klass == 2:
        return BounceKind.IGNORED
    if subject == 7:
        return BounceKind.POLICY
    if klass == 4:
        return BounceKind.SOFT
    if subject == 1 or (subject, detail) == (2, 1):
        return BounceKind.HARD
    if (subject, detail) == (0, 0) and diagnostic and _USER_UNKNOWN.search(diagnostic):
        return BounceKind.HARD
    return BounceKind.SOFT  # 5.2.2 mailbox full, 5.3.x, 5.4.x...: maybe temporary


def _blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    return [HeaderParser().parsestr(block) for block in str(payload).split("\n\n") if block]


def _dsn_findings(part: Message) -> list[Finding]:
    findings = []
    for block in _blocks(part):
        if not any(block.get(n) for n in ("Final-Recipient", "Original-Recipient", "Action")):
            continue  # the per-message block
        action = _text(block.get("Action")).lower()
        original = _typed_address(_text(block.get("Original-Recipient")))
        recipient = _typed_address(_text(block.get("Final-Recipient"))) or original
        diagnostic = _text(block.get("Diagnostic-Code"))[:1000] or None
        code = status_code(_text(block.get("Status")), diagnostic)
        if action in ("delivered", "relayed", "expanded", "delayed"):
            kind = BounceKind.IGNORED  # a delay is a warning: the final report follows
        else:
            kind = classify(code, diagnostic)
        findings.append(Finding(kind, code, diagnostic, recipient, original))
        if len(findings) >= MAX_FINDINGS:
            break  # a report speaks for one delivery at most: the rest is noise
    return findings


def _arf_findings(part: Message) -> tuple[list[Finding], list[str]]:
    fields: dict[str, str] = {}
    for block in _blocks(part):
        for name, value in block.items():
            fields.setdefault(name.lower(), _text(value))
    feedback = fields.get("feedback-type", "abuse").lower()
    kind = {
        "abuse": BounceKind.COMPLAINT,
        "fraud": BounceKind.COMPLAINT,
        "auth-failure": BounceKind.POLICY,
    }.get(feedback, BounceKind.IGNORED)
    recipient = _typed_address(fields.get("original-rcpt-to", ""))
    envelope = [a for a in [fields.get("original-mail-from", "").strip("<> ")] if "@" in a]
    diagnostic = f"feedback-type: {feedback}; {fields.get('user-agent', '')}".strip("; ")
    return [Finding(kind, None, diagnostic[:1000], recipient)], envelope


def _original_headers(msg: Message) -> list[Message]:
    """The headers of the message that bounced (message/rfc822 or text/rfc822-headers)."""
    found: list[Message] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                found.append(payload[0])
        elif ctype in ("text/rfc822-headers", "message/global-headers"):
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                found.append(BytesHeaderParser().parsebytes(raw))
    return found


def _addresses(msg: Message, names: tuple[str, ...]) -> list[str]:
    values = [_text(v, 10_000) for name in names for v in (msg.get_all(name) or [])[:10]]
    found = [addr[:320] for _, addr in getaddresses(values) if "@" in addr]
    return found[:MAX_ADDRESSES]


def _extend(target: list[str], items: list[str]) -> None:
    """Add new items, keeping at most MAX_ADDRESSES."""
    for item in items:
        if len(target) >= MAX_ADDRESSES:
            return
        if item not in target:
            target.append(item)


def _body_text(msg: Message, limit: int = 200_000) -> str:
    """The readable text of a message (plain parts, else HTML), for heuristics."""
    chunks: list[str] = []
    size = 0
    for part in msg.walk():
        if size >= limit:
            break
        if part.get_content_maintype() != "text" or part.get_content_disposition() == "attachment":
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        payload = payload[: limit * 4]  # at most 4 bytes a character
        try:
            text = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
        except LookupError:  # a charset nobody knows
            text = payload.decode("latin-1")
        chunks.append(text)
        size += len(text)
    return "\n".join(chunks)[:limit]


def is_auto_reply(msg: Message) -> bool:
    """RFC 3834 Auto-Submitted, vendor headers, or an out-of-office subject."""
    auto = _text(msg.get("Auto-Submitted")).lower()
    if auto.startswith("auto-replied"):
        return True
    if any(msg.get(h) for h in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress")):
        return True
    if _text(msg.get("Precedence")).lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT.search(_text(msg.get("Subject"))))


def _looks_like_bounce(msg: Message) -> bool:
    """From the mailer-daemon, or a failure subject sent with a null Return-Path."""
    sender = _text(msg.get("From"))
    names = [sender, *(addr for _, addr in getaddresses([sender]))]
    if any(_BOUNCE_SENDER.search(name) for name in names):
        return True
    null_sender = msg.get("Return-Path") is not None and not _text(msg.get("Return-Path")).strip(
        "<> "
    )
    return null_sender and bool(_BOUNCE_SUBJECT.search(_text(msg.get("Subject"))))


def _heuristic_findings(msg: Message) -> tuple[list[Finding], list[str]]:
    """A non-standard bounce: the first enhanced (or basic) code in its text."""
    body = _body_text(msg)
    recipients = _ANGLE_ADDR.findall(body)
    recipient = recipients[0] if len(set(recipients)) == 1 else None
    diagnostic = None
    for line in body.splitlines():
        if _ENHANCED.search(line) or _BASIC.search(line.strip()):
            diagnostic = _text(line)[:1000]
            break
    code = status_code(None, diagnostic)
    unknown = _USER_UNKNOWN.search(body)
    if code is None and unknown:  # "user unknown" and no code at all: a dead address
        code, diagnostic = "5.0.0", diagnostic or _text(unknown[0])
    kind = classify(code, diagnostic or body[:2000])
    ids = _MSGID.findall("\n".join(ln for ln in body.splitlines() if "message-id" in ln.lower()))
    return [Finding(kind, code, diagnostic, recipient)], ids


def parse_report(raw: bytes) -> ParsedReport:
    """Read one message of the bounce mailbox; UnreadableReport when it cannot be read.

    The email package raises many kinds of errors on hostile input (bad
    charsets, broken encodings, deep nesting): none of them may stop an import.
    """
    try:
        return _parse(raw)
    except NewsletterError:
        raise
    except (
        ValueError,  # also UnicodeError and email.errors.HeaderParseError
        LookupError,  # unknown charsets, KeyError, IndexError
        TypeError,
        AttributeError,
        AssertionError,
        RecursionError,
        email.errors.MessageError,
    ) as exc:
        raise UnreadableReport(f"unreadable message ({type(exc).__name__})") from None


def _parse(raw: bytes) -> ParsedReport:
    fields = _RECIPIENT_FIELD.finditer(raw)
    if sum(1 for _ in itertools.islice(fields, MAX_RECIPIENT_FIELDS + 1)) > MAX_RECIPIENT_FIELDS:
        raise UnreadableReport(f"over {MAX_RECIPIENT_FIELDS:,} recipients listed: not read")
    msg = email.message_from_bytes(raw)  # compat32: headers stay raw until read (see _text)
    report = ParsedReport(
        report_id=_report_id(msg, raw),
        format="other",
        envelope_addresses=_addresses(msg, ENVELOPE_HEADERS),
        received_at=_date(msg),
        subject=_text(msg.get("Subject"))[:200],
    )
    _extend(report.named, _addresses(msg, ("X-Failed-Recipients",)))
    for original in _original_headers(msg)[:MAX_ADDRESSES]:
        _extend(report.original_addresses, _addresses(original, ("Return-Path", "Sender")))
        _extend(report.message_ids, _MSGID.findall(_text(original.get("Message-ID"))[:1000]))
        _extend(report.named, _addresses(original, ("To",)))
    # Exchange quotes no original headers, but answers the original's Message-ID
    _extend(report.message_ids, _MSGID.findall(_text(msg.get("In-Reply-To"))[:1000]))
    if msg.get_content_type() == "multipart/report":
        for part in msg.walk():
            ctype = part.get_content_type()
            if ctype in ("message/delivery-status", "message/global-delivery-status"):
                report.format = "dsn"
                report.findings += _dsn_findings(part)
            elif ctype == "message/feedback-report":
                report.format = "arf"
                findings, envelope = _arf_findings(part)
                report.findings += findings
                _extend(report.original_addresses, envelope)
        del report.findings[MAX_FINDINGS:]
        if report.format == "dsn" and not report.findings:
            report.findings.append(Finding(BounceKind.SOFT))
        if report.format != "other":
            return report
    if _looks_like_bounce(msg):
        report.format = "bounce"
        report.findings, ids = _heuristic_findings(msg)
        _extend(report.message_ids, ids)
    elif is_auto_reply(msg):
        report.format = "auto-reply"
        report.findings = [Finding(BounceKind.IGNORED, diagnostic="auto-reply")]
    return report
