"""`newsletter serve` as the web and browser tests reach it: the app under a real uvicorn
server on 127.0.0.1, with the test's settings, database and aiosmtpd server.

One home for the served site, so tests/web/ and tests/system/ start it the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from newsletter.config import Settings
from newsletter.db import write_session
from newsletter.models import Subscriber
from newsletter.web.app import create_app
from tests.support.helpers import database, settings_for
from tests.support.smtpserver import SMTPServer
from tests.support.webserver import WebServer

#: The headers of an RFC 8058 one-click unsubscribe, as Gmail sends it.
GMAIL_ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}
CONFIRM_LINK = re.compile(r"https?://[^\s\"<>]+/confirm/([A-Za-z0-9_-]+)")


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
                select(Subscriber).where(col(Subscriber.email) == email)
            ).one_or_none()

    def token(self, email: str) -> str:
        row = self.row(email)
        assert row is not None
        return row.token

    def signup(self, email: str, name: str = "", **extra: str) -> httpx.Response:
        return self.http.post("/subscribe", data={"email": email, "name": name, **extra})

    def one_click_unsubscribe(self, token: str) -> httpx.Response:
        """The POST a mail client sends for `List-Unsubscribe-Post` (RFC 8058)."""
        return self.http.post(
            f"/unsubscribe/{token}", content=b"List-Unsubscribe=One-Click", headers=GMAIL_ONE_CLICK
        )


def start_site(
    tmp_path: Path,
    smtp: SMTPServer,
    server: WebServer,
    *,
    env: dict[str, str] | None = None,
    engine: Engine | None = None,
    **app_options: object,
) -> Site:
    """The app on `server`, its base URL the server's own (so emailed links lead back)."""
    values = {"NEWSLETTER_BASE_URL": server.url, "NEWSLETTER_SMTP_URL": smtp.url, **(env or {})}
    settings = settings_for(tmp_path, **values)
    engine = engine or database(settings)
    app = create_app(settings, engine=engine, **app_options)  # type: ignore[arg-type]
    server.start(app)
    return Site(server.url, settings, engine, smtp, httpx.Client(base_url=server.url), app)


@contextmanager
def served_site(
    tmp_path: Path,
    smtp: SMTPServer,
    *,
    env: dict[str, str] | None = None,
    engine: Engine | None = None,
    **app_options: object,
) -> Iterator[Site]:
    """`start_site` on a fresh server, stopped (worker and server) when the block ends."""
    with WebServer() as server:
        site = start_site(tmp_path, smtp, server, env=env, engine=engine, **app_options)
        try:
            yield site
        finally:
            site.close()


def confirm_token_from(message: EmailMessage) -> str:
    """The token of the confirm link in a confirmation email's text part."""
    body = message.get_body(("plain",))
    assert body is not None
    match = CONFIRM_LINK.search(body.get_content())
    assert match, "no confirm link in the email"
    return match.group(1)
