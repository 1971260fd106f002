"""The web archive over real HTTP: a real send makes the issue, a later `serve` with
another base URL shows it in the site's own layout."""

from __future__ import annotations

from html import unescape
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.db import write_session
from newsletter.issues.placeholder import UNSUBSCRIBE_URL
from newsletter.mail.transport import MemoryTransport
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, Subscriber
from newsletter.sending.options import SendOptions
from newsletter.sending.run import run_send
from tests.support.helpers import add_subscribers, database, settings_for
from tests.support.smtpserver import SMTPServer
from tests.support.webserver import WebServer
from tests.support.website import Site, start_site

pytestmark = pytest.mark.usefixtures("db_backend")

OLD_BASE = "https://old-news.endseclusion.org"


def _issue(engine: Engine, subject: str, status: str, *, delivered: bool = False) -> int:
    html = (
        f"<!DOCTYPE html><html lang='en'><body><h1>{subject}</h1>"
        f"<a href='{UNSUBSCRIBE_URL}'>Unsubscribe</a></body></html>"
    )
    with write_session(engine) as session:
        issue = Issue(subject=subject, html=html, text=subject, status=status)
        session.add(issue)
        session.flush()
        assert issue.id is not None
        if delivered:
            sub = session.exec(sa.select(Subscriber)).scalars().first()  # type: ignore[call-overload]
            session.add(
                Delivery(issue_id=issue.id, subscriber_id=sub.id, status=DeliveryStatus.SENT)
            )
        return issue.id


def test_archive_lists_published_issues_newest_first(site: Site) -> None:
    add_subscribers(site.engine, ["ann@example.org"])
    first = _issue(site.engine, "First stories", IssueStatus.SENT)
    second = _issue(site.engine, "Going out now", IssueStatus.SENDING, delivered=True)
    hidden = _issue(site.engine, "Not yet delivered", IssueStatus.SENDING)
    listing = site.http.get("/issues")
    assert listing.status_code == 200
    text = listing.text
    assert text.index("Going out now") < text.index("First stories")
    assert "Not yet delivered" not in text
    page = site.http.get(f"/issues/{first}")
    assert page.status_code == 200 and "First stories" in page.text
    assert UNSUBSCRIBE_URL not in page.text and "Unsubscribe</a>" not in page.text
    assert "script-src" not in page.headers["content-security-policy"]
    assert site.http.get(f"/issues/{second}").status_code == 200
    for missing in (str(hidden), "999", "abc", "-1", "1.0", "9" * 20):
        assert site.http.get(f"/issues/{missing}").status_code == 404, missing


# lookalike digits on purpose: int() and str.isdigit() accept some of them
@pytest.mark.parametrize("odd", ["²", "١", "１", "³³", "1²", "߁"])  # noqa: RUF001
def test_non_ascii_digits_are_a_404_not_a_500(site: Site, odd: str) -> None:
    response = site.http.get(f"/issues/{odd}")
    assert response.status_code == 404, odd
    assert "This link does not work" in response.text


def test_an_archived_issue_is_a_page_of_the_site_with_todays_base_url(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    # the issue was sent while the site lived at OLD_BASE
    old = settings_for(tmp_path, NEWSLETTER_BASE_URL=OLD_BASE)
    engine = database(old)
    add_subscribers(engine, ["ann@example.org"])
    transport = MemoryTransport()
    assert run_send(engine, old, SendOptions(), factory=lambda: transport).error is None
    with engine.connect() as conn:
        issue_id, subject, stored = conn.execute(
            sa.select(Issue.id, Issue.subject, Issue.html)  # type: ignore[call-overload]
        ).one()
        titles = list(
            conn.execute(
                sa.text("SELECT title FROM story WHERE issue_id = :i"), {"i": issue_id}
            ).scalars()
        )
    assert OLD_BASE in stored and titles  # the stored email has the old links baked in
    with WebServer() as server:
        made = start_site(tmp_path, smtp_server, server, engine=engine)
        try:
            page = made.http.get(f"/issues/{issue_id}")
            css = made.http.get("/static/site.css")
        finally:
            made.close()
    assert page.status_code == 200
    html = page.text
    # the site's layout: its stylesheet, header, footer navigation, one h1
    assert 'href="/static/site.css"' in html and '<header class="site">' in html
    assert '<footer class="site">' in html and html.count("<h1") == 1
    assert subject in html
    for title in titles:
        assert " ".join(title.split()) in unescape(html)
    # not the email: no browser link, no "you subscribed", no token placeholder, no old URL
    assert "View in your browser" not in html
    assert "You are receiving this" not in html
    assert UNSUBSCRIBE_URL not in html and "%%" not in html
    assert OLD_BASE not in html
    assert 'href="/subscribe"' in html
    csp = page.headers["content-security-policy"]
    assert "script" not in csp and "style-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert ".story" in css.text
