"""Forged bounce and complaint reports (issue 11): anyone can mail the bounce mailbox.

Only a valid VERP token, or a Message-ID we sent to the very address the report
names, may change a subscriber, and then only that one delivery. Every other
report is recorded as unmatched, suppresses nobody, and is counted by
`bounces import` and `status`. The reports are built here in the shapes real
MTAs send (RFC 3464 DSN, RFC 5965 ARF, a qmail text bounce) and go through the
real CLI into a real SQLite database that has sent one issue.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.mail.verp import envelope_sender
from newsletter.sending.options import SendOptions
from newsletter.sending.run import run_send
from tests.support.bouncesite import (
    BOUNCE_ENV,
    Site,
    cli,
    report_numbers,
    sent_site,
    write_maildir,
    write_mbox,
)
from tests.support.helpers import with_subscribers

BOUNCES = "bounces@endseclusion.org"
VICTIM = "victim@example.org"
ATTACKER = "attacker@example.net"  # a subscriber: knows their own token and Message-ID
READERS = [VICTIM, ATTACKER, "reader@example.org"]


def dsn(
    *,
    to: str = BOUNCES,
    recipients: tuple[str, ...] = (VICTIM,),
    status: str = "5.1.1",
    original_id: str | None = None,
    original_return_path: str | None = None,
    report_id: str = "<forged-dsn@mx.example.org>",
) -> bytes:
    """A Postfix-shaped DSN; `to` is the envelope recipient (where a VERP token sits)."""
    blocks = "".join(
        f"Final-Recipient: rfc822; {r}\nAction: failed\nStatus: {status}\n"
        f"Diagnostic-Code: smtp; 550 {status} <{r}>: Recipient address rejected\n\n"
        for r in recipients
    )
    original = ""
    if original_id or original_return_path:
        original = (
            "--b\nContent-Type: text/rfc822-headers\n\n"
            + (f"Return-Path: <{original_return_path}>\n" if original_return_path else "")
            + "From: AASR <news@endseclusion.org>\n"
            + f"To: {recipients[0]}\n"
            + (f"Message-ID: {original_id}\n" if original_id else "")
            + "Subject: New from AASR\n\n"
        )
    return (
        f"Return-Path: <>\nDelivered-To: {to}\nTo: {to}\n"
        "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        f"Message-ID: {report_id}\nDate: Tue, 2 Dec 2025 10:00:00 +0000\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n'
        "MIME-Version: 1.0\n\n"
        "--b\nContent-Type: text/plain\n\nI'm sorry to have to inform you...\n\n"
        "--b\nContent-Type: message/delivery-status\n\n"
        f"Reporting-MTA: dns; mx.example.org\n\n{blocks}"
        f"{original}--b--\n"
    ).encode()


def arf(
    *,
    to: str = "fbl@endseclusion.org",
    recipient: str = VICTIM,
    mail_from: str = "news@endseclusion.org",
    original_id: str | None = None,
    report_id: str = "<forged-arf@arf.example.com>",
) -> bytes:
    """An RFC 5965 abuse report; `mail_from` is the original's envelope sender."""
    return (
        f"From: Feedback Loop <fbl@arf.example.com>\nTo: {to}\nDelivered-To: {to}\n"
        f"Subject: FW: New from AASR\nMessage-ID: {report_id}\n"
        "Date: Wed, 3 Dec 2025 14:00:00 +0000\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="f"\n\n'
        "--f\nContent-Type: text/plain\n\nThis is an email abuse report.\n\n"
        "--f\nContent-Type: message/feedback-report\n\n"
        f"Feedback-Type: abuse\nUser-Agent: Forger/1.0\nVersion: 1\n"
        f"Original-Mail-From: <{mail_from}>\nOriginal-Rcpt-To: {recipient}\n\n"
        "--f\nContent-Type: message/rfc822\n\n"
        f"Return-Path: <{mail_from}>\nFrom: AASR <news@endseclusion.org>\nTo: {recipient}\n"
        + (f"Message-ID: {original_id}\n" if original_id else "")
        + "Subject: New from AASR\n\n(the newsletter)\n--f--\n"
    ).encode()


def flipped(address: str) -> str:
    """The VERP address with one character of its HMAC tag changed."""
    local, _, domain = address.partition("@")
    base, _, token = local.partition("+")
    char = "a" if token[3] != "a" else "b"
    return f"{base}+{token[:3]}{char}{token[4:]}@{domain}"


@pytest.fixture
def readers() -> list[str]:
    """The victim, the attacker and a bystander (for the `site` of conftest.py)."""
    return READERS


def verp(site: Site, email: str) -> str:
    return envelope_sender(site.settings, site.delivery(email)[0])


def msgid(site: Site, email: str) -> str:
    return site.delivery(email)[1]


#: forgery shape -> (report builder, how BounceEvent.matched_by records it)
Forgery = Callable[[Site], bytes]
FORGERIES: dict[str, tuple[Forgery, Forgery, str]] = {
    "no token": (lambda s: dsn(), lambda s: arf(), "none"),
    "token of another delivery": (
        lambda s: dsn(to=verp(s, ATTACKER)),
        lambda s: arf(mail_from=verp(s, ATTACKER)),
        "mismatch",
    ),
    "token with a flipped character": (
        lambda s: dsn(to=flipped(verp(s, VICTIM))),
        lambda s: arf(mail_from=flipped(verp(s, VICTIM))),
        "forged",
    ),
    "a Message-ID we never sent": (
        lambda s: dsn(original_id="<20251202.forged@endseclusion.org>"),
        lambda s: arf(original_id="<20251202.forged@endseclusion.org>"),
        "none",
    ),
    "a Message-ID sent to someone else": (
        lambda s: dsn(original_id=msgid(s, ATTACKER)),
        lambda s: arf(original_id=msgid(s, ATTACKER)),
        "mismatch",
    ),
}


def _events(site: Site) -> list[dict[str, object]]:
    return site.events("kind", "recipient", "subscriber_id", "delivery_id", "matched_by")


def _statuses(site: Site) -> dict[str, str]:
    with site.engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT email, status FROM subscriber")).all())  # type: ignore[arg-type]


@pytest.mark.parametrize("report", ["dsn", "arf"])
@pytest.mark.parametrize("shape", list(FORGERIES))
def test_a_forged_report_suppresses_nobody(site: Site, shape: str, report: str) -> None:
    make_dsn, make_arf, matched_by = FORGERIES[shape]
    raw = make_dsn(site) if report == "dsn" else make_arf(site)
    before = _statuses(site)

    result = cli(site, "bounces", "import", str(write_mbox(site.path / "f.mbox", [raw])))

    assert result.exit_code == 0, result.output
    assert _statuses(site) == before  # the victim, and the attacker too
    numbers = report_numbers(result.output)
    assert numbers["unmatched"] == 1 and numbers["suppressed now"] == 0
    assert f"{VICTIM} (" in result.output  # listed for the admin, with the reason
    events = _events(site)
    assert len(events) == 1
    assert events[0]["subscriber_id"] is None and events[0]["delivery_id"] is None
    assert events[0]["matched_by"] == matched_by
    assert events[0]["kind"] == ("hard" if report == "dsn" else "complaint")

    status = cli(site, "status")
    assert "Bounce reports matching no delivery: 1 (nobody suppressed)" in status.output


@pytest.mark.parametrize("report", ["dsn", "arf"])
@pytest.mark.parametrize("proof", ["verp", "message-id"])
def test_the_same_reports_with_real_proof_do_suppress(site: Site, report: str, proof: str) -> None:
    """The control: the rule refuses forgeries, not genuine reports."""
    if report == "dsn":
        raw = (
            dsn(to=verp(site, VICTIM)) if proof == "verp" else dsn(original_id=msgid(site, VICTIM))
        )
    else:
        raw = (
            arf(mail_from=verp(site, VICTIM))
            if proof == "verp"
            else arf(original_id=msgid(site, VICTIM))
        )

    result = cli(site, "bounces", "import", str(write_mbox(site.path / "r.mbox", [raw])))

    assert report_numbers(result.output)["suppressed now"] == 1, result.output
    assert site.status(VICTIM) == ("bounced" if report == "dsn" else "complained")
    assert site.status(ATTACKER) == "active"
    assert _events(site)[0]["matched_by"] == proof
    assert _events(site)[0]["delivery_id"] == site.delivery(VICTIM)[0]
    assert "matching no delivery" not in cli(site, "status").output


# ---- 11.1: one report changes at most one delivery ----------------------------


@pytest.fixture
def crowd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.chdir(tmp_path)
    readers = [f"reader{n:03d}@example.org" for n in range(500)]
    return sent_site(tmp_path, readers)


@pytest.mark.parametrize("proof", ["none", "token", "message-id"])
def test_a_dsn_naming_500_recipients_changes_at_most_one(crowd: Site, proof: str) -> None:
    readers = tuple(f"reader{n:03d}@example.org" for n in range(500))
    first = readers[0]  # the attacker, whose own token or Message-ID the report carries
    raw = dsn(
        recipients=readers,
        to=verp(crowd, first) if proof == "token" else BOUNCES,
        original_id=msgid(crowd, first) if proof == "message-id" else None,
    )

    result = cli(crowd, "bounces", "import", str(write_mbox(crowd.path / "m.mbox", [raw])))

    assert result.exit_code == 0, result.output
    statuses = _statuses(crowd)
    bounced = sorted(email for email, status in statuses.items() if status != "active")
    assert bounced == ([] if proof == "none" else [first])
    assert report_numbers(result.output)["suppressed now"] == len(bounced)
    events = _events(crowd)
    assert len(events) <= 100  # findings beyond that are not even recorded
    assert sum(1 for e in events if e["subscriber_id"] is not None) == len(bounced)


def test_a_forged_arf_does_not_make_anyone_complained_and_signup_still_works(
    site: Site,
) -> None:
    raw = arf(recipient=VICTIM, mail_from="news@endseclusion.org")
    assert (
        cli(site, "bounces", "import", str(write_mbox(site.path / "a.mbox", [raw]))).exit_code == 0
    )
    assert site.status(VICTIM) == "active"
    # and an import of the contacts keeps them mailable (complained is never reactivated)
    csv = site.path / "c.csv"
    csv.write_text(f"email\n{VICTIM}\n")
    assert CliRunner().invoke(main, ["import", str(csv)], env=site.env).exit_code == 0
    assert site.status(VICTIM) == "active"


QMAIL = """Return-Path: <>
Delivered-To: bounces@endseclusion.org
From: MAILER-DAEMON@mail.example.net
To: bounces@endseclusion.org
Date: 2 Dec 2025 11:00:00 -0000
Subject: failure notice

Hi. This is the qmail-send program at mail.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{victim}>:
192.0.2.66 does not like recipient.
Remote host said: 550 5.1.1 <{victim}>... User unknown
Giving up on 192.0.2.66.
"""


def test_a_fake_qmail_text_bounce_suppresses_nobody(site: Site) -> None:
    raw = QMAIL.format(victim=VICTIM).encode()
    result = cli(site, "bounces", "import", str(write_maildir(site.path / "q", [raw])))
    assert result.exit_code == 0, result.output
    assert report_numbers(result.output)["unmatched"] == 1
    assert site.status(VICTIM) == "active"


def test_three_forged_soft_bounces_suppress_nobody(site: Site) -> None:
    raws = [
        dsn(status="4.2.2", report_id=f"<soft{n}@mx.example.org>", original_id=f"<x{n}@y.z>")
        for n in range(3)
    ]
    result = cli(site, "bounces", "import", str(write_mbox(site.path / "s.mbox", raws)))
    numbers = report_numbers(result.output)
    assert numbers["soft bounces"] == 3 and numbers["unmatched"] == 3
    assert numbers["suppressed now"] == 0
    assert site.status(VICTIM) == "active"


def test_a_valid_token_does_not_reach_another_recipient_in_the_same_report(site: Site) -> None:
    """The attacker's own token, the attacker and the victim listed: only the attacker changes."""
    raw = dsn(to=verp(site, ATTACKER), recipients=(VICTIM, ATTACKER))
    result = cli(site, "bounces", "import", str(write_mbox(site.path / "t.mbox", [raw])))
    numbers = report_numbers(result.output)
    assert numbers["unmatched"] == 1 and numbers["suppressed now"] == 1
    assert site.status(VICTIM) == "active" and site.status(ATTACKER) == "bounced"


def test_a_valid_token_whose_subscriber_row_was_deleted_by_hand_is_unmatched(
    site: Site,
) -> None:
    """A delivery has no foreign key (migration 0007): its subscriber row may be gone
    while a report about it comes in; the import notes it, suppresses nobody, goes on."""
    token = verp(site, VICTIM)
    with site.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM subscriber WHERE email = :e"), {"e": VICTIM})
    attacker = verp(site, ATTACKER)
    raws = [dsn(to=token), dsn(to=attacker, recipients=(ATTACKER,), report_id="<second@mx>")]
    result = cli(site, "bounces", "import", str(write_mbox(site.path / "e.mbox", raws)))
    assert result.exit_code == 0, result.output
    numbers = report_numbers(result.output)
    assert numbers["unmatched"] == 1 and numbers["suppressed now"] == 1
    assert site.status(ATTACKER) == "bounced"


# ---- without VERP: the Message-ID is required -----------------------------------


class PlainSite(Site):
    """A site that sends without NEWSLETTER_BOUNCE_ADDRESS: no VERP."""

    @property
    def env(self) -> dict[str, str]:
        return {k: v for k, v in super().env.items() if k not in BOUNCE_ENV}


@pytest.fixture
def plain_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.chdir(tmp_path)
    settings, engine = with_subscribers(tmp_path, READERS)
    assert run_send(engine, settings, SendOptions()).error is None
    return PlainSite(tmp_path, settings, engine)


def test_without_verp_only_a_message_id_sent_to_that_address_counts(plain_site: Site) -> None:
    site = plain_site
    forged = [
        dsn(report_id="<a@mx>"),  # nothing
        dsn(report_id="<b@mx>", original_id=msgid(site, ATTACKER)),  # someone else's
        dsn(report_id="<c@mx>", to="bounces+aaaaaaaaaaaaaaaa1@endseclusion.org"),
    ]
    result = cli(site, "bounces", "import", str(write_mbox(site.path / "p.mbox", forged)))
    assert result.exit_code == 0, result.output
    assert report_numbers(result.output)["unmatched"] == 3
    assert _statuses(site) == dict.fromkeys(READERS, "active")

    real = dsn(report_id="<d@mx>", original_id=msgid(site, VICTIM))
    result = cli(site, "bounces", "import", str(write_mbox(site.path / "r.mbox", [real])))
    assert report_numbers(result.output)["suppressed now"] == 1, result.output
    assert site.status(VICTIM) == "bounced"
