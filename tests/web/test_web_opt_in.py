"""Double opt-in over real HTTP: the signup form, the confirmation email caught by a real
aiosmtpd server, the POST that confirms, and what the form answers to known, unsubscribed,
complained, repeated, honeypot, rate-limited, invalid and expired signups."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter.db import write_session
from newsletter.mail.addresses import email_hash
from newsletter.models import Subscriber, SubscriberStatus, Suppression, utcnow
from tests.support.helpers import add_subscribers
from tests.support.smtpserver import SMTPServer
from tests.support.webserver import WebServer
from tests.support.website import Site, confirm_token_from, start_site

pytestmark = pytest.mark.usefixtures("db_backend")


def test_signup_sends_a_confirmation_and_only_a_post_confirms(site: Site) -> None:
    # a plain cross-site form post from the organisation's own page
    response = site.http.post(
        "/subscribe",
        data={"email": "Maria@Example.ORG", "name": "Visit http://spam.example now"},
        headers={"Origin": "https://endseclusion.org", "Referer": "https://endseclusion.org/"},
    )
    assert response.status_code == 200
    assert "Check your email" in response.text
    assert response.headers["cache-control"] == "no-store"
    [received] = site.smtp.wait_for(1)
    assert received.rcpt_tos == ["Maria@example.org"]
    assert b"spam.example" not in received.data and b"Visit" not in received.data
    msg = received.parsed()
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["From"] == "AASR <news@endseclusion.org>"
    assert msg["To"] == "Maria@example.org"
    assert msg["Date"]
    assert re.fullmatch(r"<[^@>]+@endseclusion\.org>", msg["Message-ID"])
    assert b"\r\n" in received.data and b"\n" not in received.data.replace(b"\r\n", b"")
    token = confirm_token_from(msg)
    html = msg.get_body(("html",))
    assert html is not None and f"/confirm/{token}" in html.get_content()
    assert len(token) >= 22  # 128 bits or more

    row = site.row("Maria@example.org")
    assert row is not None and row.status == SubscriberStatus.PENDING
    assert row.confirm_token == token and row.token != token
    assert row.name == "Visit http://spam.example now"  # stored, never mailed

    for _ in range(2):  # scanners fetch the link: nothing changes
        page = site.http.get(f"/confirm/{token}")
        assert page.status_code == 200 and page.text.count("<button") == 1
        assert '<meta name="robots" content="noindex' in page.text
        assert page.headers["cache-control"] == "no-store"
    row = site.row("Maria@example.org")
    assert row is not None and row.status == SubscriberStatus.PENDING

    done = site.http.post(f"/confirm/{token}", data={"action": "confirm"})
    assert done.status_code == 200 and "You are subscribed" in done.text
    row = site.row("Maria@example.org")
    assert row is not None
    assert row.status == SubscriberStatus.ACTIVE
    assert row.confirmed_at is not None and row.consent_ip == "127.0.0.1"
    done_at = row.confirmed_at
    again = site.http.post(f"/confirm/{token}")  # single use: changes nothing, says so
    assert again.status_code == 200 and "Already confirmed" in again.text
    assert "Maria" not in again.text
    row = site.row("Maria@example.org")
    assert row is not None and row.confirmed_at == done_at


def test_signup_answer_is_the_same_for_known_and_new_addresses(site: Site) -> None:
    add_subscribers(site.engine, ["known@example.org"])
    add_subscribers(site.engine, ["left@example.org"], status=SubscriberStatus.UNSUBSCRIBED)
    add_subscribers(site.engine, ["angry@example.org"], status=SubscriberStatus.COMPLAINED)
    answers = {
        email: site.signup(email)
        for email in (
            "known@example.org",
            "new@example.org",
            "left@example.org",
            "angry@example.org",
        )
    }
    assert {r.status_code for r in answers.values()} == {200}
    assert len({r.text for r in answers.values()}) == 1
    assert len({tuple(sorted(r.headers.keys())) for r in answers.values()}) == 1
    site.smtp.wait_for(2)
    assert sorted(site.smtp.recipients()) == ["left@example.org", "new@example.org"]


def test_an_unsubscribed_address_comes_back_only_by_confirming(site: Site) -> None:
    add_subscribers(site.engine, ["left@example.org"], status=SubscriberStatus.UNSUBSCRIBED)
    add_subscribers(site.engine, ["gone@example.org"], status=SubscriberStatus.BOUNCED)
    site.signup("left@example.org")
    site.signup("gone@example.org")
    messages = site.smtp.wait_for(2)
    for email in ("left@example.org", "gone@example.org"):
        row = site.row(email)
        assert row is not None and row.status != SubscriberStatus.ACTIVE  # not yet
    tokens = {m.rcpt_tos[0]: confirm_token_from(m.parsed()) for m in messages}
    assert site.http.post(f"/confirm/{tokens['left@example.org']}").status_code == 200
    row = site.row("left@example.org")
    assert row is not None and row.status == SubscriberStatus.ACTIVE
    assert row.unsubscribed_at is None and row.confirmed_at is not None
    still = site.row("gone@example.org")
    assert still is not None and still.status == SubscriberStatus.BOUNCED


def test_complained_and_forgotten_addresses_never_get_a_confirmation(site: Site) -> None:
    add_subscribers(site.engine, ["angry@example.org"], status=SubscriberStatus.COMPLAINED)
    with write_session(site.engine) as session:
        session.add(Suppression(email_hash=email_hash("forgot@example.org"), reason="forgotten"))
    assert site.signup("angry@example.org").status_code == 200
    assert site.signup("Forgot@example.org").status_code == 200
    assert site.signup("control@example.org").status_code == 200
    site.smtp.wait_for(1)
    assert site.smtp.recipients() == ["control@example.org"]
    assert site.row("Forgot@example.org") is None
    row = site.row("angry@example.org")
    assert row is not None and row.status == SubscriberStatus.COMPLAINED


def test_a_second_signup_within_the_hour_sends_no_second_email(site: Site) -> None:
    site.signup("ann@example.org")
    site.smtp.wait_for(1)
    assert site.signup("ann@example.org").status_code == 200
    assert len(site.smtp.messages) == 1


def test_honeypot_signups_get_a_message_and_no_email(site: Site) -> None:
    """Issue 13: a filled honeypot gets the signup page with a clear message (autofill may
    fill it for a person), and no email, no row."""
    bot = site.signup("victim@example.org", website="http://spam.example")
    assert bot.status_code == 400
    assert "Your signup was not sent" in bot.text and "must stay empty" in bot.text
    person = site.signup("person@example.org")
    assert person.status_code == 200
    site.smtp.wait_for(1)
    assert site.smtp.recipients() == ["person@example.org"]
    assert site.row("victim@example.org") is None
    form = site.http.get("/subscribe").text
    honeypot = re.search(r'<div class="hp" aria-hidden="true">.*?</div>', form, re.S)
    assert honeypot and 'tabindex="-1"' in honeypot.group(0)


def test_rate_limit_per_ip(tmp_path: Path, smtp_server: SMTPServer) -> None:
    with WebServer() as server:
        site = start_site(tmp_path, smtp_server, server, signup_limit=3)
        try:
            for i in range(3):
                assert site.signup(f"r{i}@example.org").status_code == 200
            blocked = site.signup("r9@example.org")
            assert blocked.status_code == 429
            assert blocked.headers["retry-after"] == "600"
            assert "Too many signups" in blocked.text
            smtp_server.wait_for(3)
        finally:
            site.close()
    assert "r9@example.org" not in smtp_server.recipients()
    assert len(smtp_server.messages) == 3


@pytest.mark.parametrize("raw", ["not-an-address", "ann@", "@example.org", "ann@@example.org", ""])
def test_invalid_address_gets_a_clear_message_and_no_email(site: Site, raw: str) -> None:
    response = site.signup(raw, name="Ann")
    assert response.status_code == 400
    assert "Enter a valid email address" in response.text
    assert (
        'aria-invalid="true"' in response.text and 'aria-describedby="email-error"' in response.text
    )
    assert 'value="Ann"' in response.text  # what they typed is kept on the form
    assert site.smtp.messages == []
    with site.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM subscriber")).scalar_one() == 0


def test_typed_text_is_escaped_on_the_form(site: Site) -> None:
    response = site.signup('"><script>alert(1)</script>', name="<b>x</b>")
    assert response.status_code == 400
    assert "<script>" not in response.text and "&lt;b&gt;" in response.text


def test_confirm_links_expire_and_stale_signups_are_removed(site: Site) -> None:
    site.signup("late@example.org")
    add_subscribers(site.engine, ["left@example.org"], status=SubscriberStatus.UNSUBSCRIBED)
    site.signup("left@example.org")
    messages = site.smtp.wait_for(2)
    tokens = [confirm_token_from(m.parsed()) for m in messages]
    with site.engine.begin() as conn:
        conn.execute(sa.update(Subscriber).values(confirm_issued_at=utcnow() - timedelta(days=8)))
    for token in tokens:
        assert site.http.get(f"/confirm/{token}").status_code == 404
        assert site.http.post(f"/confirm/{token}").status_code == 404
    site.signup("someone@example.org")  # any signup sweeps stale rows
    site.smtp.wait_for(3)
    assert site.row("late@example.org") is None  # never confirmed: gone
    left = site.row("left@example.org")  # an old unsubscribe is never erased
    assert left is not None and left.status == SubscriberStatus.UNSUBSCRIBED
    assert left.confirm_token is None
