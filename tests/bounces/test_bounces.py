"""`newsletter bounces import`: real-shaped reports through the CLI, the policy, idempotence.

The site that has sent one issue, and the fixture reports filled in for it, are in
tests/support/bouncesite.py (shared with the other bounce tests); `site` is in conftest.py.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from newsletter.bounces.record import bounce_counts_by_issue
from newsletter.cli import main
from newsletter.mail.verp import decode_token, envelope_sender
from newsletter.sending.options import SendOptions
from newsletter.sending.run import run_send
from newsletter.subscribers.importer import import_contacts
from tests.support.bouncesite import (
    BOUNCE_ENV,
    EXPECTED,
    READERS,
    Site,
    cli,
    report_numbers,
    write_maildir,
    write_mbox,
)
from tests.support.helpers import NEXT_FEED, table_dump, with_subscribers
from tests.support.smtpserver import SMTPServer

# ---- the whole fixture set, through the CLI ----------------------------------


@pytest.mark.parametrize("layout", ["mbox", "maildir"])
def test_import_applies_the_policy_to_every_fixture(site: Site, layout: str) -> None:
    messages = site.filled_reports()
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
    return site.events(
        "kind", "recipient", "issue_id", "subscriber_id AS subscriber", "status_code"
    )


def test_importing_the_same_mailbox_again_changes_nothing(site: Site) -> None:
    path = write_mbox(site.path / "b.mbox", site.filled_reports())
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


@pytest.mark.parametrize(
    ("days", "suppressed", "status"),
    [
        pytest.param([0, 12, 29], 1, "bounced", id="within-30-days-suppress"),
        pytest.param([0, 20, 40], 0, "active", id="over-40-days-do-not"),
    ],
)
def test_three_soft_bounces(site: Site, days: list[int], suppressed: int, status: str) -> None:
    _three_issues(site)
    result = cli(site, "bounces", "import", str(_soft_reports(site, days)))
    numbers = report_numbers(result.output)
    assert numbers["soft bounces"] == 3 and numbers["suppressed now"] == suppressed
    assert site.status("full@example.org") == status


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
    path = write_maildir(site.path / "md", site.filled_reports())
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
    settings, engine = with_subscribers(
        tmp_path,
        ["a@example.org", "b@example.org"],
        NEWSLETTER_SMTP_URL=smtp_server.url,
        **BOUNCE_ENV,
    )
    assert run_send(engine, settings, SendOptions()).error is None
    site = Site(tmp_path, settings, engine)
    for received in smtp_server.messages:
        local, _, domain = received.mail_from.partition("@")
        assert domain == "endseclusion.org" and local.startswith("bounces+")
        delivery_id = decode_token(settings, local.removeprefix("bounces+"))
        assert delivery_id == site.delivery(received.rcpt_tos[0])[0]
