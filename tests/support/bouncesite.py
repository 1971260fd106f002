"""A site that has sent one issue, and the bounce reports that come back for it: shared by
the tests of `bounces import` and `bounces fetch` (tests/bounces/).

The fixtures in tests/data/bounces/ hold `{{VERP:address}}` and `{{MSGID:address}}`
placeholders (see tests/data/bounces/README.md); `Site.fill` replaces them with the VERP
address and the Message-ID of that subscriber's delivery.
"""

from __future__ import annotations

import mailbox
import re
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine

from newsletter.cli import main
from newsletter.config import Settings
from newsletter.mail.verp import envelope_sender
from newsletter.sending.options import SendOptions
from newsletter.sending.run import run_send
from tests.support.helpers import with_subscribers

MB = 1024 * 1024
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

    def filled_reports(self) -> list[bytes]:
        """Every fixture report of REPORTS, filled in for this site."""
        return [self.fill(name) for name in REPORTS]

    def events(self, *columns: str) -> list[dict[str, object]]:
        """The `bounce_event` rows in the order recorded, as {column: value}."""
        select = f"SELECT {', '.join(columns)} FROM bounce_event ORDER BY id"  # noqa: S608 - our columns
        query = sa.text(select)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def status(self, email: str) -> str:
        with self.engine.connect() as conn:
            return str(
                conn.execute(
                    sa.text("SELECT status FROM subscriber WHERE email = :e"), {"e": email}
                ).scalar_one()
            )


def sent_site(tmp_path: Path, readers: list[str] = READERS) -> Site:
    settings, engine = with_subscribers(tmp_path, readers, **BOUNCE_ENV)
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


def big_bounce(size: int, *, name: str = "big") -> bytes:
    """A bounce-shaped message carrying `size` bytes of base64 attachment."""
    line = b"QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB\n"
    head = (
        f"From: MAILER-DAEMON@mx.example.org\nSubject: Undelivered Mail Returned to Sender\n"
        f"Message-ID: <{name}@mx.example.org>\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\n550 5.1.1 <victim@example.org>: user unknown\n"
        "--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
    ).encode()
    return head + line * (size // len(line)) + b"--b--\n"
