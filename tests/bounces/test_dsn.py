"""Reading reports (newsletter.bounces.dsn) and VERP tokens (newsletter.mail.verp), no database."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from newsletter.bounces.dsn import classify, parse_report, status_code
from newsletter.config import load_settings
from newsletter.errors import ConfigError
from newsletter.mail.verp import decode_token, envelope_sender, find_token, make_token
from tests.support.bouncesite import FIXTURES

ENV = {
    "NEWSLETTER_FROM": "AASR <news@endseclusion.org>",
    "NEWSLETTER_BOUNCE_ADDRESS": "bounces@endseclusion.org",
    "NEWSLETTER_SECRET_KEY": "dsn-test-secret-0123456789",
}


def settings(**env: str):  # type: ignore[no-untyped-def]
    return load_settings(environ={**ENV, **env}, env_file=Path("/nonexistent/.env"))


def fixture(name: str) -> bytes:
    """A fixture with placeholders filled by fixed values (no database here)."""
    text = (FIXTURES / name).read_text()
    text = re.sub(r"\{\{VERP:[^}]+\}\}", "bounces+" + make_token(settings(), 42) + "@x", text)
    text = re.sub(r"\{\{MSGID:([^@]+)@[^}]+\}\}", r"<orig.\1@endseclusion.org>", text)
    return text.encode()


# ---- VERP ----------------------------------------------------------------------


def test_verp_address_round_trips_and_survives_lower_and_upper_case() -> None:
    s = settings()
    sender = envelope_sender(s, 12345)
    local, _, domain = sender.partition("@")
    assert domain == "endseclusion.org" and local.startswith("bounces+")
    assert re.fullmatch(r"bounces\+[a-z2-7]{16}12345", local) and len(local) < 64
    token = find_token(s, sender.upper())
    assert token is not None and decode_token(s, token) == 12345
    assert decode_token(s, token.lower()) == 12345


@pytest.mark.parametrize("tamper", ["id", "tag", "key", "zeros", "junk"])
def test_altered_or_forged_tokens_decode_to_none(tamper: str) -> None:
    s = settings()
    token = make_token(s, 7)
    forged = {
        "id": token[:16] + "8",  # someone else's delivery
        "tag": ("b" if token[0] != "b" else "c") + token[1:],
        "key": make_token(settings(NEWSLETTER_SECRET_KEY="another-secret-0123456789"), 7),
        "zeros": token[:16] + "007",
        "junk": "hello",
    }[tamper]
    assert decode_token(s, forged) is None


def test_test_copies_use_the_plain_bounce_address_and_no_setting_means_from() -> None:
    assert envelope_sender(settings(), None) == "bounces@endseclusion.org"
    plain = load_settings(
        environ={"NEWSLETTER_FROM": ENV["NEWSLETTER_FROM"]}, env_file=Path("/nonexistent/.env")
    )
    assert envelope_sender(plain, 3) == "news@endseclusion.org"


def test_bounce_address_without_secret_key_names_the_setting() -> None:
    s = load_settings(
        environ={k: v for k, v in ENV.items() if k != "NEWSLETTER_SECRET_KEY"},
        env_file=Path("/nonexistent/.env"),
    )
    with pytest.raises(ConfigError, match="NEWSLETTER_SECRET_KEY"):
        envelope_sender(s, 1)


def test_envelope_sender_is_fast() -> None:
    s = settings()
    start = time.perf_counter()
    for delivery_id in range(20_000):
        envelope_sender(s, delivery_id)
    assert (time.perf_counter() - start) / 20_000 < 50e-6  # well under the send's per-message cost


def test_find_token_ignores_other_addresses() -> None:
    s = settings()
    assert find_token(s, "bounces@endseclusion.org") is None
    assert find_token(s, "bounces+abc@elsewhere.org") is None
    assert find_token(s, "news+abc@endseclusion.org") is None
    assert find_token(s, "<Bounces+ABC@EndSeclusion.org>") == "abc"


# ---- status codes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "diagnostic", "code", "kind"),
    [
        ("5.1.1", "smtp; 550 5.1.1 User unknown", "5.1.1", "hard"),
        ("5.1.10", "smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound", "5.1.10", "hard"),
        ("5.1.0", "", "5.1.0", "hard"),
        ("5.2.1", "smtp; 550 5.2.1 Mailbox disabled", "5.2.1", "hard"),
        ("5.2.2", "smtp; 552 5.2.2 Mailbox full", "5.2.2", "soft"),
        ("4.4.1", "", "4.4.1", "soft"),
        ("4.2.2", "smtp; 452 4.2.2 Over quota", "4.2.2", "soft"),
        ("5.0.0", "smtp; 550 5.1.1 <a@b>: no such user here", "5.1.1", "hard"),
        ("5.0.0", "smtp; 550 Unknown user", "5.0.0", "hard"),
        ("5.0.0", "smtp; 554 Rejected", "5.0.0", "soft"),
        ("5.7.1", "smtp; 550 5.7.1 DMARC policy", "5.7.1", "policy"),
        ("4.7.28", "smtp; 421 4.7.28 rate limited", "4.7.28", "policy"),
        ("5.7.26", "smtp; 550-5.7.26 unauthenticated", "5.7.26", "policy"),
        ("", "smtp; 550 mailbox unavailable", "5.0.0", "soft"),
        ("", "", None, "soft"),
        ("2.0.0", "", "2.0.0", "ignored"),
    ],
)
def test_status_code_and_kind(status: str, diagnostic: str, code: str | None, kind: str) -> None:
    assert status_code(status, diagnostic) == code
    assert classify(code, diagnostic) == kind


# ---- each fixture --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "kind", "code", "recipient"),
    [
        ("postfix-user-unknown.eml", "dsn", "hard", "5.1.1", "gone.postfix@example.org"),
        ("exim-no-such-user.eml", "dsn", "hard", "5.1.1", "gone.exim@example.com"),
        ("gmail-address-not-found.eml", "dsn", "hard", "5.1.1", "gone.gmail@gmail.com"),
        ("outlook-recipient-not-found.eml", "dsn", "hard", "5.1.10", "gone.outlook@outlook.com"),
        ("yahoo-arf-complaint.eml", "arf", "complaint", None, "complainer@yahoo.com"),
        ("postfix-mailbox-full.eml", "dsn", "soft", "5.2.2", "full@example.org"),
        ("policy-dmarc-reject.eml", "dsn", "policy", "5.7.1", "strict@example.com"),
        ("out-of-office.eml", "auto-reply", "ignored", None, None),
        ("qmail-verp-only.eml", "bounce", "hard", "5.1.1", None),
        ("forged-verp-token.eml", "bounce", "hard", "5.1.1", "victim@example.org"),
    ],
)
def test_fixture_reads_as_expected(
    name: str, fmt: str, kind: str, code: str | None, recipient: str | None
) -> None:
    report = parse_report(fixture(name))
    assert report.format == fmt
    assert [(f.kind, f.status_code, f.recipient) for f in report.findings] == [
        (kind, code, recipient)
    ]
    assert report.received_at is not None


def test_where_the_original_message_id_and_verp_address_are_found() -> None:
    gmail = parse_report(fixture("gmail-address-not-found.eml"))
    assert gmail.message_ids == ["<orig.gone.gmail@endseclusion.org>"]
    yahoo = parse_report(fixture("yahoo-arf-complaint.eml"))
    assert any(a.startswith("bounces+") for a in yahoo.original_addresses)
    qmail = parse_report(fixture("qmail-verp-only.eml"))
    assert any(a.startswith("bounces+") for a in qmail.envelope_addresses)


def test_a_person_writing_is_not_a_report() -> None:
    report = parse_report((FIXTURES / "person-reply.eml").read_bytes())
    assert not report.is_report and report.findings == []


def test_delay_warnings_and_multi_recipient_reports() -> None:
    raw = b"""From: MAILER-DAEMON@mx.example.org
Subject: Delayed Mail (still being retried)
Message-ID: <delay1@mx.example.org>
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; slow@example.org
Action: delayed
Status: 4.4.1

Final-Recipient: rfc822; gone@example.org
Action: failed
Status: 5.1.1

--b--
"""
    report = parse_report(raw)
    assert [(f.kind, f.recipient) for f in report.findings] == [
        ("ignored", "slow@example.org"),
        ("hard", "gone@example.org"),
    ]
    assert report.report_id == "<delay1@mx.example.org>"


def test_report_without_message_id_gets_a_stable_hash() -> None:
    raw = fixture("qmail-verp-only.eml")
    assert parse_report(raw).report_id == parse_report(raw).report_id
    assert parse_report(raw).report_id.startswith("sha256:")
