"""`newsletter serve` over real HTTP: the app under uvicorn on 127.0.0.1, a real SQLite
file, and the confirmation email caught by a real aiosmtpd server."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.config import Settings
from newsletter.db import write_session
from newsletter.mail.addresses import email_hash
from newsletter.mail.transport import MemoryTransport
from newsletter.models import (
    Subscriber,
    SubscriberStatus,
    Suppression,
    utcnow,
)
from newsletter.sending.run import SendOptions, run_send
from newsletter.web.app import create_app
from tests.support.helpers import add_subscribers, database, database_url, settings_for
from tests.support.smtpserver import SMTPServer
from tests.support.webserver import WebServer

GMAIL_ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}
CONFIRM_LINK = re.compile(r"https?://[^\s\"<>]+/confirm/([A-Za-z0-9_-]+)")


pytestmark = pytest.mark.usefixtures("db_backend")


@dataclass
class Site:
    url: str
    settings: Settings
    engine: Engine
    smtp: SMTPServer
    http: httpx.Client
    app: Any = None

    def close(self) -> None:
        """Stop the confirmation worker (the test server runs without lifespan events)."""
        self.http.close()
        if self.app is not None:
            self.app.state.confirmations.stop()

    def row(self, email: str) -> Subscriber | None:
        with write_session(self.engine) as session:
            return session.exec(
                sa.select(Subscriber).where(Subscriber.email == email)  # type: ignore[arg-type]
            ).scalar_one_or_none()

    def token(self, email: str) -> str:
        row = self.row(email)
        assert row is not None
        return row.token

    def signup(self, email: str, name: str = "", **extra: str) -> httpx.Response:
        return self.http.post("/subscribe", data={"email": email, "name": name, **extra})


def start_site(
    tmp_path: Path,
    smtp: SMTPServer,
    server: WebServer,
    *,
    env: dict[str, str] | None = None,
    engine: Engine | None = None,
    **app_options: object,
) -> Site:
    values = {"NEWSLETTER_BASE_URL": server.url, "NEWSLETTER_SMTP_URL": smtp.url, **(env or {})}
    settings = settings_for(tmp_path, **values)
    engine = engine or database(settings)
    app = create_app(settings, engine=engine, **app_options)  # type: ignore[arg-type]
    server.start(app)
    return Site(server.url, settings, engine, smtp, httpx.Client(base_url=server.url), app)


@pytest.fixture
def site(tmp_path: Path, smtp_server: SMTPServer) -> Iterator[Site]:
    with WebServer() as server:
        made = start_site(tmp_path, smtp_server, server)
        try:
            yield made
        finally:
            made.close()


def confirm_token_from(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    match = CONFIRM_LINK.search(body.get_content())
    assert match, "no confirm link in the email"
    return match.group(1)


# ---- service -----------------------------------------------------------------


def test_health_answers_ok(site: Site) -> None:
    response = site.http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_security_headers_on_every_page(site: Site) -> None:
    add_subscribers(site.engine, ["ann@example.org"])
    token = site.token("ann@example.org")
    for path in ("/subscribe", f"/unsubscribe/{token}", "/issues", "/nowhere", "/unsubscribe"):
        response = site.http.get(path)
        headers = response.headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "no-referrer", path
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script" not in csp, path
        assert "<script" not in response.text.lower(), path
        assert not re.search(r"<[^>]+\son\w+=", response.text), path  # no event handlers
        assert '<html lang="en"' in response.text, path
        assert response.text.count("<h1") == 1, path
        if path == "/subscribe":  # the form may be embedded in the organisation's site
            assert "frame-ancestors *" in csp and "x-frame-options" not in headers
        else:
            assert "frame-ancestors 'none'" in csp and headers["x-frame-options"] == "DENY"
    css = site.http.get("/static/site.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert ":focus-visible" in css.text


def test_access_log_never_shows_tokens(site: Site) -> None:
    add_subscribers(site.engine, ["ann@example.org"])
    token = site.token("ann@example.org")
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep()
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    try:
        site.http.get(f"/unsubscribe/{token}")
        site.http.post(
            f"/unsubscribe/{token}", content=b"List-Unsubscribe=One-Click", headers=GMAIL_ONE_CLICK
        )
        site.http.get("/confirm/SomeConfirmToken123")
        site.http.get("/health")
    finally:
        access.removeHandler(handler)
    assert len(lines) == 4
    assert all(token not in line and "SomeConfirmToken123" not in line for line in lines)
    assert any("/unsubscribe/***" in line for line in lines)
    assert any("/confirm/***" in line for line in lines)


# ---- unsubscribe -------------------------------------------------------------


def test_unsubscribe_get_shows_one_button_and_changes_nothing(site: Site) -> None:
    add_subscribers(site.engine, ["ann@example.org"])
    token = site.token("ann@example.org")
    for _ in range(3):  # a mail scanner prefetching, then the person
        response = site.http.get(f"/unsubscribe/{token}")
        assert response.status_code == 200
        assert response.text.count("<button") == 1
        assert "AASR" in response.text
        assert '<meta name="robots" content="noindex' in response.text
        assert response.headers["x-robots-tag"] == "noindex, nofollow"
        assert response.headers["cache-control"] == "no-store"
        assert "set-cookie" not in response.headers
    assert site.http.head(f"/unsubscribe/{token}").status_code == 200
    row = site.row("ann@example.org")
    assert row is not None and row.status == SubscriberStatus.ACTIVE
    assert row.unsubscribed_at is None


def test_one_click_post_exactly_as_gmail_sends_it(site: Site) -> None:
    add_subscribers(site.engine, ["ann@example.org", "bob@example.org"])
    token = site.token("ann@example.org")
    # a bare client: no cookie, no Origin, no Referer, nothing but the RFC 8058 body
    response = httpx.post(
        f"{site.url}/unsubscribe/{token}",
        content=b"List-Unsubscribe=One-Click",
        headers=GMAIL_ONE_CLICK,
        follow_redirects=False,
    )
    assert response.status_code == 200
    assert "unsubscribed" in response.text
    assert "set-cookie" not in response.headers
    assert response.headers["cache-control"] == "no-store"
    row = site.row("ann@example.org")
    assert row is not None
    assert row.status == SubscriberStatus.UNSUBSCRIBED
    assert row.unsubscribe_method == "one-click"
    assert row.unsubscribed_at is not None
    assert abs(utcnow() - row.unsubscribed_at) < timedelta(minutes=1)
    when = row.unsubscribed_at
    other = site.row("bob@example.org")
    assert other is not None and other.status == SubscriberStatus.ACTIVE

    again = httpx.post(
        f"{site.url}/unsubscribe/{token}",
        content=b"List-Unsubscribe=One-Click",
        headers=GMAIL_ONE_CLICK,
    )
    assert again.status_code == 200 and again.text == response.text
    row = site.row("ann@example.org")
    assert row is not None and row.unsubscribed_at == when and row.unsubscribe_method == "one-click"


def test_one_click_post_as_multipart_form_data(site: Site) -> None:
    add_subscribers(site.engine, ["ann@example.org"])
    token = site.token("ann@example.org")
    response = site.http.post(
        f"/unsubscribe/{token}", files={"List-Unsubscribe": (None, "One-Click")}
    )
    assert response.request.headers["content-type"].startswith("multipart/form-data")
    assert response.status_code == 200
    row = site.row("ann@example.org")
    assert row is not None
    assert row.status == SubscriberStatus.UNSUBSCRIBED and row.unsubscribe_method == "one-click"


def test_the_page_button_unsubscribes_and_offers_to_come_back(site: Site) -> None:
    add_subscribers(site.engine, ["ann@example.org"])
    token = site.token("ann@example.org")
    response = site.http.post(f"/unsubscribe/{token}", data={"action": "unsubscribe"})
    assert response.status_code == 200
    assert 'href="/subscribe"' in response.text  # a way to resubscribe
    row = site.row("ann@example.org")
    assert row is not None
    assert row.status == SubscriberStatus.UNSUBSCRIBED and row.unsubscribe_method == "page"
    # the link still opens (no error) and now says so, with no button
    page = site.http.get(f"/unsubscribe/{token}")
    assert page.status_code == 200 and "<button" not in page.text


def test_forged_altered_and_truncated_tokens_get_one_generic_404(site: Site) -> None:
    add_subscribers(site.engine, ["ann@example.org"])
    token = site.token("ann@example.org")
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    bad = [altered, token[:-4], token[:8], "x" * 200, "not-a-token", token + "x", "%00"]
    bodies = set()
    for candidate in bad:
        for method in ("GET", "POST"):
            for kind in ("unsubscribe", "confirm"):
                response = (
                    site.http.request(
                        method,
                        f"/{kind}/{candidate}",
                        content=b"List-Unsubscribe=One-Click",
                        headers=GMAIL_ONE_CLICK,
                    )
                    if method == "POST"
                    else site.http.get(f"/{kind}/{candidate}")
                )
                assert response.status_code == 404, (method, kind, candidate)
                assert response.headers["x-robots-tag"] == "noindex, nofollow"
                assert "ann@example.org" not in response.text
                bodies.add(response.text)
    assert len(bodies) == 1  # nothing tells one wrong token from another
    row = site.row("ann@example.org")
    assert row is not None and row.status == SubscriberStatus.ACTIVE


def test_unsubscribe_help_page_for_the_archive_link(site: Site) -> None:
    response = site.http.get("/unsubscribe")
    assert response.status_code == 200
    assert "Unsubscribe" in response.text and 'href="/subscribe"' in response.text


def test_next_send_skips_whoever_unsubscribed_on_the_web(site: Site) -> None:
    add_subscribers(site.engine, ["ann@example.org", "bob@example.org"])
    token = site.token("ann@example.org")
    response = site.http.post(
        f"/unsubscribe/{token}", content=b"List-Unsubscribe=One-Click", headers=GMAIL_ONE_CLICK
    )
    assert response.status_code == 200
    transport = MemoryTransport()
    result = run_send(site.engine, site.settings, SendOptions(), factory=lambda: transport)
    assert result.error is None
    assert [m.rcpt for m in transport.sent] == ["bob@example.org"]


# ---- signup ------------------------------------------------------------------


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


# ---- the command ---------------------------------------------------------------


def test_newsletter_serve_command_runs_uvicorn_and_masks_tokens(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")},
        "NEWSLETTER_FROM": "AASR <news@endseclusion.org>",
        "NEWSLETTER_DATABASE_URL": database_url(tmp_path, "serve.db"),
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        assert httpx.get(f"{url}/unsubscribe/SecretToken0123456789").status_code == 404
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0].decode()
    assert "GET /health" in output
    assert "/unsubscribe/***" in output and "SecretToken0123456789" not in output
