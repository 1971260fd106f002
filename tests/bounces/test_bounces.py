"""`newsletter bounces import`: real-shaped reports through the CLI, the policy, idempotence.

The first part is shared with test_bounces_imap.py: a site that has sent one
issue, and fixture reports filled in. The fixtures in tests/data/bounces/ hold
`{{VERP:address}}` and `{{MSGID:address}}` placeholders (see
tests/data/bounces/README.md); `fill` replaces them with the VERP address and the
Message-ID of that subscriber's delivery.
"""

from __future__ import annotations

import mailbox
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine

from newsletter.bounces.record import bounce_counts_by_issue
from newsletter.cli import main
from newsletter.config import Settings
from newsletter.mail.verp import decode_token, envelope_sender
from newsletter.sending.run import SendOptions, run_send
from newsletter.subscribers.importer import import_contacts
from tests.support.helpers import NEXT_FEED, add_subscribers, database, settings_for, table_dump
from tests.support.smtpserver import SMTPServer

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "bounces"
SECRET = "bounce-test-secret-0123456789"
BOUNCE_ENV = {
    "NEWSLETTER_BOUNCE_ADDRESS": "bounces@endseclusion.org",
    "NEWSLETTER_SECRET_KEY": SECRET,
}

READERS = [
    "gone.postfix@example.org",
    "gone.exim@example.com",
    "gone.gmail@gmail.com",
    "gone.outlook@outlook.com",
    "complainer@yahoo.com",
    "full@example.org",
    "strict@example.com",
    "away@example.org",
    "gone.qmail@example.net",
    "victim@example.org",
    "reader@example.org",
]

#: fixture -> (kind, subscriber it maps to or None, that subscriber's status afterwards)
EXPECTED = {
    "postfix-user-unknown.eml": ("hard", "gone.postfix@example.org", "bounced"),
    "exim-no-such-user.eml": ("hard", "gone.exim@example.com", "bounced"),
    "gmail-address-not-found.eml": ("hard", "gone.gmail@gmail.com", "bounced"),
    # names its recipient but carries no token and no Message-ID of ours: anyone could forge it
    "outlook-recipient-not-found.eml": ("hard", None, "active"),
    "yahoo-arf-complaint.eml": ("complaint", "complainer@yahoo.com", "complained"),
    "postfix-mailbox-full.eml": ("soft", "full@example.org", "active"),
    "policy-dmarc-reject.eml": ("policy", "strict@example.com", "active"),
    "out-of-office.eml": ("ignored", "away@example.org", "active"),
    "qmail-verp-only.eml": ("hard", "gone.qmail@example.net", "bounced"),
    "forged-verp-token.eml": ("hard", None, "active"),
}
REPORTS = list(EXPECTED)


@dataclass
class Site:
    """A database with READERS, one issue sent to all of them (outbox), VERP on."""

    path: Path
    settings: Settings
    engine: Engine

    @property
    def env(self) -> dict[str, str]:
        return {
            "NEWSLETTER_FROM": "AASR <news@endseclusion.org>",
            "NEWSLETTER_POSTAL_ADDRESS": "AASR, PO Box 1234, Springfield, VA 22150, USA",
            "NEWSLETTER_BASE_URL": "https://news.endseclusion.org",
            "NEWSLETTER_FEED_URL": str(self.path / "feed.xml"),
            "NEWSLETTER_DATABASE_URL": self.settings.database_url,
            "NEWSLETTER_OUTBOX": str(self.path / "outbox"),
            "NEWSLETTER_RETRY_DELAYS": "0",
            **BOUNCE_ENV,
        }

    def delivery(self, email: str, issue_id: int = 1) -> tuple[int, str]:
        """(delivery id, Message-ID) of `email`'s delivery of an issue."""
        query = sa.text(
            "SELECT d.id, d.message_id FROM delivery d JOIN subscriber s ON s.id = d.subscriber_id"
            " WHERE s.email = :e AND d.issue_id = :i"
        )
        with self.engine.connect() as conn:
            row = conn.execute(query, {"e": email, "i": issue_id}).one()
        return int(row[0]), str(row[1])

    def fill(self, name: str, *, date: str | None = None, message_id: str | None = None) -> bytes:
        """A fixture with its placeholders filled; optionally a new Date and Message-ID."""
        text = (FIXTURES / name).read_text(encoding="utf-8")

        def verp(match: re.Match[str]) -> str:
            return envelope_sender(self.settings, self.delivery(match[1])[0])

        def msgid(match: re.Match[str]) -> str:
            return self.delivery(match[1])[1]

        text = re.sub(r"\{\{VERP:([^}]+)\}\}", verp, text)
        text = re.sub(r"\{\{MSGID:([^}]+)\}\}", msgid, text)
        if date is not None:
            text = re.sub(r"^Date: .*$", f"Date: {date}", text, count=1, flags=re.M)
        if message_id is not None:
            text = re.sub(
                r"^Message-I[dD]: .*$", f"Message-ID: {message_id}", text, count=1, flags=re.M
            )
        return text.encode("utf-8")

    def status(self, email: str) -> str:
        with self.engine.connect() as conn:
            return str(
                conn.execute(
                    sa.text("SELECT status FROM subscriber WHERE email = :e"), {"e": email}
                ).scalar_one()
            )


def sent_site(tmp_path: Path, readers: list[str] = READERS) -> Site:
    settings = settings_for(tmp_path, **BOUNCE_ENV)
    engine = database(settings)
    add_subscribers(engine, readers)
    result = run_send(engine, settings, SendOptions())
    assert result.error is None and result.issues[0].report.sent == len(readers)
    return Site(tmp_path, settings, engine)


def write_mbox(path: Path, messages: list[bytes]) -> Path:
    box = mailbox.mbox(path)
    for raw in messages:
        box.add(raw)
    box.flush()
    box.close()
    return path


def write_maildir(path: Path, messages: list[bytes]) -> Path:
    box = mailbox.Maildir(path, create=True)
    for raw in messages:
        box.add(raw)
    return path


def cli(site: Site, *args: str, **env: str) -> Result:
    """Run `newsletter ARGS` as a user would (settings from the environment only)."""
    return CliRunner().invoke(main, list(args), env={**site.env, **env})


def report_numbers(output: str) -> dict[str, int]:
    """'hard bounces:   2' -> {'hard bounces': 2} for every line of the printed report."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^([a-z (.)0-9]+):\s+(\d+)", output, re.M)}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.chdir(tmp_path)  # no .env from elsewhere
    return sent_site(tmp_path)


# ---- the whole fixture set, through the CLI ----------------------------------


@pytest.mark.parametrize("layout", ["mbox", "maildir"])
def test_import_applies_the_policy_to_every_fixture(site: Site, layout: str) -> None:
    messages = [site.fill(name) for name in REPORTS]
    writer = write_mbox if layout == "mbox" else write_maildir
    path = writer(site.path / f"bounces.{layout}", messages)

    result = cli(site, "bounces", "import", str(path))

    assert result.exit_code == 0, result.output
    numbers = report_numbers(result.output)
    assert numbers == {
        "processed": 10,
        "hard bounces": 6,  # 4 matched + the forged one + Outlook's, by address only
        "soft bounces": 1,
        "complaints": 1,
        "policy (5.7.x)": 1,
        "ignored": 1,
        "unmatched": 2,
        "suppressed now": 5,
    }
    assert "(1 with a forged VERP token)" in result.output
    assert "strict@example.com: 5.7.1" in result.output and "DMARC" in result.output
    for name, (_kind, email, status) in EXPECTED.items():
        if email is not None:
            assert site.status(email) == status, name
    assert site.status("victim@example.org") == "active"  # the forged report named them
    assert site.status("gone.outlook@outlook.com") == "active"  # named, but no proof
    assert site.status("reader@example.org") == "active"

    events = _events(site)
    assert len(events) == 10
    by_email = {e["recipient"]: e for e in events if e["subscriber"]}
    for name, (kind, email, _status) in EXPECTED.items():
        if email is not None:
            assert by_email[email]["kind"] == kind, name
    # the delivery (and so the issue) is known wherever the report allows it
    assert by_email["gone.gmail@gmail.com"]["issue_id"] == 1  # by Message-ID
    assert by_email["complainer@yahoo.com"]["issue_id"] == 1  # by the original's Return-Path
    unmatched = [e for e in events if not e["subscriber"] and e["kind"] != "ignored"]
    assert sorted(e["recipient"] for e in unmatched) == [
        "gone.outlook@outlook.com",
        "victim@example.org",
    ]

    counts = bounce_counts_by_issue(site.engine)
    # Outlook's report maps to no delivery: no issue to count it on
    assert counts == {1: {"hard": 4, "soft": 1, "complaint": 1, "policy": 1}}


def _events(site: Site) -> list[dict[str, object]]:
    query = sa.text(
        "SELECT e.kind, e.recipient, e.issue_id, e.subscriber_id AS subscriber, e.status_code"
        " FROM bounce_event e ORDER BY e.id"
    )
    with site.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def test_importing_the_same_mailbox_again_changes_nothing(site: Site) -> None:
    path = write_mbox(site.path / "b.mbox", [site.fill(name) for name in REPORTS])
    assert cli(site, "bounces", "import", str(path)).exit_code == 0
    before = table_dump(site.engine)

    again = cli(site, "bounces", "import", str(path))

    assert again.exit_code == 0, again.output
    assert table_dump(site.engine) == before
    numbers = report_numbers(again.output)
    assert numbers["processed"] == 0 and numbers["suppressed now"] == 0
    assert "10 already seen, skipped" in again.output


def test_the_same_report_in_two_mailboxes_counts_once(site: Site) -> None:
    raw = site.fill("postfix-mailbox-full.eml")
    write_maildir(site.path / "one", [raw])
    write_maildir(site.path / "two", [raw])
    cli(site, "bounces", "import", str(site.path / "one"))
    cli(site, "bounces", "import", str(site.path / "two"))
    assert len(_events(site)) == 1


# ---- soft bounces: 3 within 30 days -----------------------------------------


def _soft_bounces(site: Site, days: list[int]) -> Path:
    start = datetime(2025, 12, 1, 10, 0, tzinfo=UTC)
    messages = [
        site.fill(
            "postfix-mailbox-full.eml",
            date=format_datetime(start + timedelta(days=day)),
            message_id=f"<soft-{day}@mx1.example.org>",
        )
        for day in days
    ]
    return write_mbox(site.path / "soft.mbox", messages)


def _three_issues(site: Site) -> None:
    """Deliveries of three issues to full@example.org, so each soft bounce is distinct."""
    for number in (2, 3):
        with site.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO issue (id, subject, html, text, status, created_at)"
                    " VALUES (:i, 'x', '', '', 'sent', CURRENT_TIMESTAMP)"
                ),
                {"i": number},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO delivery (issue_id, subscriber_id, status, attempts,"
                    " message_id, updated_at) SELECT :i, id, 'sent', 1, :m, CURRENT_TIMESTAMP"
                    " FROM subscriber WHERE email = 'full@example.org'"
                ),
                {"i": number, "m": f"<issue{number}@endseclusion.org>"},
            )


def _soft_reports(site: Site, days: list[int]) -> Path:
    """A mailbox-full report for each of three issues' deliveries, `days` after Dec 1."""
    start = datetime(2025, 12, 1, 10, 0, tzinfo=UTC)
    messages = []
    for issue_id, day in zip((1, 2, 3), days, strict=True):
        delivery_id, _ = site.delivery("full@example.org", issue_id)
        raw = site.fill(
            "postfix-mailbox-full.eml",
            date=format_datetime(start + timedelta(days=day)),
            message_id=f"<soft-{day}@mx1.example.org>",
        ).decode()
        verp = envelope_sender(site.settings, site.delivery("full@example.org")[0])
        raw = raw.replace(verp, envelope_sender(site.settings, delivery_id))
        messages.append(raw.encode())
    return write_mbox(site.path / "soft.mbox", messages)


def test_three_soft_bounces_within_30_days_suppress(site: Site) -> None:
    _three_issues(site)
    result = cli(site, "bounces", "import", str(_soft_reports(site, [0, 12, 29])))
    numbers = report_numbers(result.output)
    assert numbers["soft bounces"] == 3 and numbers["suppressed now"] == 1
    assert site.status("full@example.org") == "bounced"


def test_three_soft_bounces_over_40_days_do_not(site: Site) -> None:
    _three_issues(site)
    result = cli(site, "bounces", "import", str(_soft_reports(site, [0, 20, 40])))
    numbers = report_numbers(result.output)
    assert numbers["soft bounces"] == 3 and numbers["suppressed now"] == 0
    assert site.status("full@example.org") == "active"


def test_repeated_reports_of_one_delivery_count_once(site: Site) -> None:
    # three reports (different Message-IDs) of the same delivery within a week
    path = _soft_bounces(site, [0, 2, 5])
    result = cli(site, "bounces", "import", str(path))
    assert report_numbers(result.output)["soft bounces"] == 3
    assert site.status("full@example.org") == "active"


# ---- nobody suppressed is ever mailed again ----------------------------------


def test_complaint_is_never_undone_by_a_contacts_import(site: Site) -> None:
    path = write_mbox(site.path / "c.mbox", [site.fill("yahoo-arf-complaint.eml")])
    assert cli(site, "bounces", "import", str(path)).exit_code == 0
    assert site.status("complainer@yahoo.com") == "complained"
    csv = site.path / "contacts.csv"
    csv.write_text("email,name,status\ncomplainer@yahoo.com,Chris,subscribed\n")

    import_contacts(site.engine, csv)

    assert site.status("complainer@yahoo.com") == "complained"


def test_the_next_send_mails_nobody_suppressed(site: Site) -> None:
    path = write_maildir(site.path / "md", [site.fill(name) for name in REPORTS])
    assert cli(site, "bounces", "import", str(path)).exit_code == 0
    shutil.copy(NEXT_FEED, site.path / "feed.xml")
    shutil.rmtree(site.path / "outbox")

    result = cli(site, "send")

    assert result.exit_code == 0, result.output
    query = sa.text(
        "SELECT s.email FROM delivery d JOIN subscriber s ON s.id = d.subscriber_id"
        " WHERE d.issue_id = 2 AND d.status = 'sent'"
    )
    with site.engine.connect() as conn:
        mailed = sorted(conn.execute(query).scalars())
    suppressed = {email for _, email, status in EXPECTED.values() if status != "active"}
    assert mailed == sorted(set(READERS) - suppressed)
    written = " ".join(p.name for p in (site.path / "outbox").iterdir())
    assert all(email not in written for email in suppressed)


# ---- the command's errors ------------------------------------------------------


def test_a_path_that_is_no_mailbox_is_a_clean_error(site: Site) -> None:
    (site.path / "notes.txt").write_text("hello\n")
    (site.path / "folder").mkdir()
    for target in ("missing.mbox", "notes.txt", "folder"):
        result = CliRunner().invoke(main, ["bounces", "import", target], env=site.env)
        assert result.exit_code == 1, result.output
        assert "Error:" in result.output and "Traceback" not in result.output


def test_mail_from_is_the_verp_address_of_each_delivery(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    settings = settings_for(tmp_path, NEWSLETTER_SMTP_URL=smtp_server.url, **BOUNCE_ENV)
    engine = database(settings)
    add_subscribers(engine, ["a@example.org", "b@example.org"])
    assert run_send(engine, settings, SendOptions()).error is None
    site = Site(tmp_path, settings, engine)
    for received in smtp_server.messages:
        local, _, domain = received.mail_from.partition("@")
        assert domain == "endseclusion.org" and local.startswith("bounces+")
        delivery_id = decode_token(settings, local.removeprefix("bounces+"))
        assert delivery_id == site.delivery(received.rcpt_tos[0])[0]
