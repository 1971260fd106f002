"""The web edge under attack and fault (issue 11): Host-header redirects, a write-locked
database, a relay that accepts TCP and never greets. Real uvicorn, real SQLite files,
real sockets."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy import event

from newsletter.models import SubscriberStatus
from tests.support.helpers import add_subscribers, database, settings_for
from tests.support.smtpserver import SMTPServer
from tests.support.webserver import WebServer
from tests.support.website import GMAIL_ONE_CLICK, Site, start_site

#: Far beyond the HTTP client's patience: a request that waits for SMTP cannot pass.
RELAY_TIMEOUT = "60"
CLIENT_TIMEOUT = 10.0


# ---- 11.9: redirects never follow the Host header ------------------------------------


def test_a_trailing_slash_never_redirects_to_the_request_host(site: Site) -> None:
    add_subscribers(site.engine, ["ann@example.org"])
    token = site.token("ann@example.org")
    evil = {"Host": "evil.example"}
    for path, target in (
        ("/subscribe/", "/subscribe"),
        (f"/unsubscribe/{token}/", f"/unsubscribe/{token}"),
        ("/issues/?page=2", "/issues?page=2"),
    ):
        response = site.http.get(path, headers=evil, follow_redirects=False)
        location = response.headers.get("location", "")
        assert "evil.example" not in location, path
        if response.is_redirect:
            assert location == site.url + target, path  # built from NEWSLETTER_BASE_URL
    # a POST is never redirected (RFC 8058: no redirect in the answer), and changes nothing
    post = site.http.post(
        f"/unsubscribe/{token}/",
        content=b"List-Unsubscribe=One-Click",
        headers={**evil, **GMAIL_ONE_CLICK},
        follow_redirects=False,
    )
    assert not post.is_redirect and "evil.example" not in post.headers.get("location", "")
    assert site.row("ann@example.org").status == SubscriberStatus.ACTIVE  # type: ignore[union-attr]
    assert site.http.get("/subscribe/", follow_redirects=True).status_code == 200


# ---- 11.4: a write-locked database ---------------------------------------------------------


def test_one_click_on_a_locked_database_answers_503_and_the_retry_lands(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    settings = settings_for(tmp_path, NEWSLETTER_DATABASE_URL=f"sqlite:///{tmp_path / 'lock.db'}")
    engine = database(settings)

    @event.listens_for(engine, "connect")
    def short_busy_wait(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=200")  # after the default 30 s one

    engine.dispose()
    add_subscribers(engine, ["ann@example.org"])
    with WebServer() as server:
        made = start_site(tmp_path, smtp_server, server, engine=engine)
        try:
            token = made.token("ann@example.org")
            importer = sqlite3.connect(tmp_path / "lock.db", isolation_level=None)
            importer.execute("BEGIN IMMEDIATE")  # a long import holds the write lock
            try:
                busy = made.one_click_unsubscribe(token)
                assert busy.status_code == 503
                assert busy.headers["retry-after"] == "60"
                assert busy.headers["cache-control"] == "no-store"
                assert "try again in a minute" in busy.text.lower()
                assert made.http.get("/health").status_code == 200  # reads still work
                signup = made.signup("new@example.org")
                assert signup.status_code == 503 and "retry-after" in signup.headers
                with engine.connect() as conn:  # a plain read: the lock allows it
                    status = conn.execute(
                        sa.text("SELECT status FROM subscriber WHERE email = 'ann@example.org'")
                    ).scalar_one()
                assert status == SubscriberStatus.ACTIVE
            finally:
                importer.execute("COMMIT")
                importer.close()
            again = made.one_click_unsubscribe(token)  # what an RFC 8058 sender does after a 503
            assert again.status_code == 200
            row = made.row("ann@example.org")
            assert row is not None and row.status == SubscriberStatus.UNSUBSCRIBED
            assert row.unsubscribe_method == "one-click"
        finally:
            made.close()


# ---- 11.7: a relay that accepts TCP and never greets ----------------------------------------


class SilentRelay:
    """Listens and lets the kernel accept connections, then never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.url = f"smtp://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


def test_health_and_unsubscribe_answer_while_the_relay_never_greets(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    relay = SilentRelay()
    env = {
        "NEWSLETTER_SMTP_URL": relay.url,
        "NEWSLETTER_SMTP_TIMEOUT": RELAY_TIMEOUT,
        "NEWSLETTER_SIGNUP_RATE_LIMIT": "off",
    }
    try:
        with WebServer() as server:
            made = start_site(tmp_path, smtp_server, server, env=env)
            made.http.timeout = httpx.Timeout(CLIENT_TIMEOUT)
            try:
                add_subscribers(made.engine, ["ann@example.org"])
                token = made.token("ann@example.org")
                for i in range(100):
                    response = made.signup(f"reader{i:03d}@example.org")
                    assert response.status_code == 200 and "Check your email" in response.text
                    if i % 25 == 0:
                        assert made.http.get("/health").json() == {"status": "ok"}
                assert made.http.get("/health").status_code == 200
                gone = made.one_click_unsubscribe(token)
                assert gone.status_code == 200
                row = made.row("ann@example.org")
                assert row is not None and row.status == SubscriberStatus.UNSUBSCRIBED
                with made.engine.connect() as conn:
                    owed = conn.execute(
                        sa.text("SELECT count(*) FROM subscriber WHERE confirm_send_at IS NOT NULL")
                    ).scalar_one()
                assert owed == 100  # every confirmation is still owed, none lost
            finally:
                relay.close()  # the worker's connection attempt ends here
                made.close()
    finally:
        relay.close()
