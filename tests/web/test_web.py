"""`newsletter serve` over real HTTP: the app under uvicorn on 127.0.0.1, a real SQLite
file, and the confirmation email caught by a real aiosmtpd server."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from newsletter.mail.transport import MemoryTransport
from newsletter.models import (
    SubscriberStatus,
    utcnow,
)
from newsletter.sending.options import SendOptions
from newsletter.sending.run import run_send
from tests.support.helpers import add_subscribers, database_url
from tests.support.website import GMAIL_ONE_CLICK, Site

pytestmark = pytest.mark.usefixtures("db_backend")


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
        site.one_click_unsubscribe(token)
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
    response = site.one_click_unsubscribe(token)
    assert response.status_code == 200
    transport = MemoryTransport()
    result = run_send(site.engine, site.settings, SendOptions(), factory=lambda: transport)
    assert result.error is None
    assert [m.rcpt for m in transport.sent] == ["bob@example.org"]


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
