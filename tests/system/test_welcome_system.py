"""The welcome email as really sent (issue 13): SpamAssassin scores it like the issue
email, and Debian's chromium finds no axe-core violation at 375 and 800 px, light and
dark, and nothing that scrolls sideways on a phone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlmodel import select

from newsletter.db import read_session
from newsletter.models import Subscriber
from newsletter.subscribers.signup import confirm_signup, request_signup
from newsletter.subscribers.welcome import send_owed_welcomes
from tests.support.a11y import PHONE, assert_email_passes_axe, file_url
from tests.support.helpers import send_to_one_reader
from tests.support.smtphandler import ReceivedMessage
from tests.support.smtpserver import SMTPServer
from tests.system.test_spam import MAX_SCORE, needs_spamassassin, spamassassin

if TYPE_CHECKING:
    from playwright.sync_api import Page

READER = "parent@example.org"


def sent_welcome(tmp_path: Path, smtp: SMTPServer, **env: str) -> ReceivedMessage:
    """A confirmed signup's welcome, after one issue, through the real SMTP server."""
    settings, engine, _ = send_to_one_reader(tmp_path, smtp, "old@example.org", **env)
    smtp.clear()
    request_signup(engine, settings, READER, send_now=False)
    with read_session(engine) as session:
        tokens = session.exec(select(Subscriber.confirm_token)).all()
    [confirm_token] = [t for t in tokens if t]
    confirm_signup(engine, confirm_token, ip=None, settings=settings)
    assert send_owed_welcomes(engine, settings).sent == 1
    [received] = smtp.wait_for(1)
    return received


def _html(message: ReceivedMessage) -> str:
    part = message.parsed().get_body(("html",))
    assert part is not None
    return str(part.get_content())


@needs_spamassassin
@pytest.mark.slow
def test_the_welcome_email_scores_like_the_issue_email(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    verdict = spamassassin(sent_welcome(tmp_path, smtp_server).data)
    assert verdict.costly() == {}, verdict.report
    assert verdict.score <= MAX_SCORE, verdict.report
    for rule in ("MPART_ALT_DIFF", "MISSING_DATE", "MISSING_MID", "MIME_HTML_ONLY"):
        assert rule not in verdict.rules, verdict.report


@pytest.mark.browser
@pytest.mark.parametrize("mode", ["summary", "full"])
def test_the_welcome_email_passes_axe_and_fits_a_phone(
    axe_page: Page, tmp_path: Path, smtp_server: SMTPServer, mode: str
) -> None:
    html = _html(
        sent_welcome(
            tmp_path,
            smtp_server,
            NEWSLETTER_STORY_CONTENT=mode,
            NEWSLETTER_ISSUE_PER="send",
            NEWSLETTER_MIN_INTERVAL="7d",
        )
    )
    path = tmp_path / "welcome.html"
    path.write_text(html, encoding="utf-8")
    axe_page.route(
        "**/*",
        lambda route: route.abort() if route.request.url.startswith("http") else route.continue_(),
    )
    axe_page.goto(file_url(path))
    assert_email_passes_axe(axe_page, f"welcome-email-{mode}", "welcome email")
    axe_page.set_viewport_size(PHONE)
    wide = axe_page.evaluate(
        """() => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
            .filter(e => !e.closest('.preheader, .visually-hidden'))
            .map(e => e.tagName + ': ' + (e.textContent || '').slice(0, 60))"""
    )
    assert wide == [], wide
    assert axe_page.get_by_role("link", name="AASR archive").count() == 1
