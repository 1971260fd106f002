"""The welcome email's core (issue 13), against a real SQLite file and the real aiosmtpd
server: what it says, once per subscriber, never to imported or added contacts, never to
someone who left first, retried with backoff, and the stylesheet's `content_mode` passed to
every email that includes it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from newsletter.config import Settings
from newsletter.db import write_session
from newsletter.errors import TemplateError
from newsletter.issues.templating import builtin_templates_dir
from newsletter.models import Subscriber, SubscriberStatus, utcnow
from newsletter.sending.options import SendOptions
from newsletter.sending.run import run_send
from newsletter.status import status_report
from newsletter.subscribers.confirmation import build_confirmation
from newsletter.subscribers.confirming import send_owed_mail
from newsletter.subscribers.manage import unsubscribe_by_token
from newsletter.subscribers.signup import confirm_signup, request_signup
from newsletter.subscribers.welcome import (
    describe_interval,
    next_welcome_at,
    render_welcome,
    schedule,
    send_owed_welcomes,
)
from tests.support.feedserver import closed_port_url
from tests.support.helpers import add_subscribers, database, settings_for
from tests.support.smtphandler import ReceivedMessage
from tests.support.smtpserver import SMTPServer

WELCOME = "Welcome to AASR"


def _setup(tmp_path: Path, smtp: SMTPServer, **env: str) -> tuple[Settings, Engine]:
    settings = settings_for(tmp_path, **{"NEWSLETTER_SMTP_URL": smtp.url, **env})
    return settings, database(settings)


def _row(engine: Engine, email: str) -> Subscriber:
    with write_session(engine) as session:
        row = session.exec(select(Subscriber).where(Subscriber.email == email)).one()
        session.expunge(row)
        return row


def _sign_up_and_confirm(engine: Engine, settings: Settings, email: str) -> None:
    """A web signup confirmed as the confirm page's POST does (the welcome is owed)."""
    request_signup(engine, settings, email, send_now=False)
    token = _row(engine, email).confirm_token
    assert token is not None
    confirm_signup(engine, token, ip="192.0.2.1", settings=settings)


def _welcomes(smtp: SMTPServer) -> list[ReceivedMessage]:
    return [m for m in smtp.messages if m.parsed()["Subject"] == WELCOME]


def test_every_email_with_the_stylesheet_gets_content_mode(tmp_path: Path) -> None:
    """An organisation's own `_email.css` may read content_mode with no default: the
    confirmation email failed with "'content_mode' is undefined" before it was passed."""
    own = tmp_path / "own-templates"
    own.mkdir()
    css = (builtin_templates_dir() / "_email.css").read_text(encoding="utf-8")
    (own / "_email.css").write_text(f"/* mode: {{{{ content_mode }}}} */\n{css}", "utf-8")
    settings = settings_for(tmp_path, NEWSLETTER_TEMPLATES_DIR=str(own))
    data = build_confirmation(
        settings, "ann@example.org", "https://x.example/c/t", expires_days=7, unsubscribe_token="t"
    )
    assert b"mode: summary" in data
    welcome = render_welcome(database(settings), settings)
    assert "mode: summary" in welcome.html


def test_the_welcome_says_what_and_how_often_from_the_settings(tmp_path: Path) -> None:
    default = schedule(settings_for(tmp_path))
    assert default["receive"].startswith("a short summary of each new story")
    assert default["how_often"] == "one email with all the stories published since the previous one"
    weekly = settings_for(
        tmp_path,
        NEWSLETTER_STORY_CONTENT="full",
        NEWSLETTER_ISSUE_PER="story",
        NEWSLETTER_MIN_INTERVAL="7d",
    )
    said = schedule(weekly)
    assert said["receive"].startswith("each new story in full")
    assert said["how_often"] == (
        "one email for each new story, soon after it is published, at most once every 1 week"
    )
    text = render_welcome(database(weekly), weekly).text
    assert "each new story in full" in text and "at most once every 1 week" in text
    assert describe_interval(timedelta(hours=12)) == "12 hours"
    assert describe_interval(timedelta(days=3)) == "3 days"


def test_the_welcome_lists_the_latest_issue_and_carries_the_issue_headers(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    settings, engine = _setup(tmp_path, smtp_server)
    add_subscribers(engine, ["old@example.org"])
    assert run_send(engine, settings, SendOptions()).error is None
    [issue] = smtp_server.wait_for(1)
    smtp_server.clear()
    _sign_up_and_confirm(engine, settings, "new@example.org")
    result = send_owed_welcomes(engine, settings)
    assert result.sent == 1
    [welcome] = smtp_server.wait_for(1)
    message = welcome.parsed()
    row = _row(engine, "new@example.org")
    for header in ("List-Id", "List-Unsubscribe-Post", "Precedence", "From", "Date"):
        assert message[header] == issue.parsed()[header] or header == "Date", header
    assert message["List-Unsubscribe"] == f"<{settings.url('unsubscribe/' + row.token)}>"
    assert message["Message-ID"].endswith("@endseclusion.org>")
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None and text is not None
    body = text.get_content()
    issue_text = issue.parsed().get_body(("plain",))
    assert issue_text is not None
    # each story of the latest issue, by its title's first words and its link
    links = [
        line.split(": ", 1)[1]
        for line in issue_text.get_content().splitlines()
        if line.startswith("Read the full story: ")
    ]
    assert links
    for link in links:
        assert link in body and link in html.get_content()
    assert settings.url("issues") in body
    assert "AASR, PO Box 1234" in body and "AASR, PO Box 1234" in html.get_content()
    assert f"unsubscribe/{row.token}" in html.get_content()
    assert "You are receiving this because you subscribed" in body


def test_a_welcome_is_sent_once_and_never_to_imported_or_added_contacts(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    settings, engine = _setup(tmp_path, smtp_server)
    add_subscribers(engine, ["imported@example.org"])  # as import and `subscribers add` do
    _sign_up_and_confirm(engine, settings, "once@example.org")
    assert send_owed_welcomes(engine, settings).sent == 1
    assert send_owed_welcomes(engine, settings, ignore_backoff=True).sent == 0
    assert send_owed_mail(engine, settings).welcomes.sent == 0
    # they leave and sign up again: confirmed again, but welcomed only the first time
    unsubscribe_by_token(engine, _row(engine, "once@example.org").token, method="page")
    smtp_server.wait_for(1)
    smtp_server.clear()
    with write_session(engine) as session:  # past the once-an-hour confirmation limit
        row = session.exec(select(Subscriber).where(Subscriber.email == "once@example.org")).one()
        row.confirm_issued_at = utcnow() - timedelta(hours=2)
    _sign_up_and_confirm(engine, settings, "once@example.org")
    assert _row(engine, "once@example.org").status == SubscriberStatus.ACTIVE
    assert send_owed_mail(engine, settings).welcomes.sent == 0
    assert _welcomes(smtp_server) == []
    assert status_report(engine).welcomes_owed == 0


def test_welcome_off_owes_nothing(tmp_path: Path, smtp_server: SMTPServer) -> None:
    settings, engine = _setup(tmp_path, smtp_server, NEWSLETTER_WELCOME="off")
    assert settings.welcome is False
    _sign_up_and_confirm(engine, settings, "quiet@example.org")
    row = _row(engine, "quiet@example.org")
    assert row.welcome_send_at is None and row.welcome_sent_at is None
    assert send_owed_mail(engine, settings).welcomes.sent == 0


def test_a_reader_who_left_before_the_welcome_went_gets_none(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    settings, engine = _setup(tmp_path, smtp_server)
    _sign_up_and_confirm(engine, settings, "gone@example.org")
    unsubscribe_by_token(engine, _row(engine, "gone@example.org").token, method="one-click")
    assert send_owed_welcomes(engine, settings).sent == 0
    assert _row(engine, "gone@example.org").welcome_send_at is None
    assert _welcomes(smtp_server) == []


def test_a_down_server_defers_the_welcome_with_backoff_and_status_counts_it(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    port = urlsplit(closed_port_url()).port
    settings, engine = _setup(tmp_path, smtp_server, NEWSLETTER_SMTP_URL=f"smtp://127.0.0.1:{port}")
    _sign_up_and_confirm(engine, settings, "wait@example.org")
    now = utcnow()
    result = send_owed_welcomes(engine, settings, now=now)
    assert result.deferred == 1 and result.sent == 0
    row = _row(engine, "wait@example.org")
    assert row.welcome_sent_at is None and row.welcome_attempts == 1
    assert row.welcome_send_at is not None and row.welcome_send_at > now  # the backoff wait
    assert status_report(engine).welcomes_owed == 1
    # the worker waits; `newsletter send` (ignore_backoff) tries now, against the live server
    live = settings_for(tmp_path, NEWSLETTER_SMTP_URL=smtp_server.url)
    assert send_owed_welcomes(engine, live).sent == 0
    assert send_owed_mail(engine, live).welcomes.sent == 1
    assert [m.rcpt_tos for m in _welcomes(smtp_server)] == [["wait@example.org"]]
    assert status_report(engine).welcomes_owed == 0


def test_a_try_in_progress_holds_a_lease_and_never_looks_sent(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    """A sender's try is `welcome_claimed_until` alone: the row never says "sent" before
    the server took it, no other sender (not even `newsletter send`) takes it while the
    lease runs, and once it ran out (that sender died) the welcome goes."""
    settings, engine = _setup(tmp_path, smtp_server)
    _sign_up_and_confirm(engine, settings, "held@example.org")
    now = utcnow()
    with write_session(engine) as session:  # another sender's try, under way
        row = session.exec(select(Subscriber).where(Subscriber.email == "held@example.org")).one()
        row.welcome_claimed_until = now + timedelta(minutes=15)
        session.add(row)
    held = _row(engine, "held@example.org")
    assert held.welcome_sent_at is None and held.welcome_send_at is not None
    assert status_report(engine).welcomes_owed == 1
    assert next_welcome_at(engine) == held.welcome_claimed_until  # when its lease ends
    assert send_owed_welcomes(engine, settings, ignore_backoff=True, now=now).sent == 0
    later = now + timedelta(minutes=16)  # the lease ran out: its sender died
    assert send_owed_welcomes(engine, settings, ignore_backoff=True, now=later).sent == 1
    row = _row(engine, "held@example.org")
    assert row.welcome_sent_at == later and row.welcome_claimed_until is None
    assert row.welcome_send_at is None


def test_the_welcome_templates_are_overridable(tmp_path: Path, smtp_server: SMTPServer) -> None:
    own = tmp_path / "own"
    own.mkdir()
    (own / "welcome_subject.txt").write_text("Hello from {{ list_title }}\n", "utf-8")
    settings, engine = _setup(tmp_path, smtp_server, NEWSLETTER_TEMPLATES_DIR=str(own))
    assert render_welcome(engine, settings).subject == "Hello from AASR"
    broken = tmp_path / "broken"
    broken.mkdir()
    text = (builtin_templates_dir() / "welcome_email.txt").read_text("utf-8")
    (broken / "welcome_email.txt").write_text(text.replace("{{ unsubscribe_url }}", ""), "utf-8")
    settings, engine = _setup(tmp_path, smtp_server, NEWSLETTER_TEMPLATES_DIR=str(broken))
    with pytest.raises(TemplateError, match="no unsubscribe link"):
        render_welcome(engine, settings)
