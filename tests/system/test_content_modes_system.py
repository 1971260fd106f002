"""The `full` email (NEWSLETTER_STORY_CONTENT=full) as a reader and a spam filter see it.

A WordPress feed with whole posts (tests/data/feeds/wordpress-full.xml: a wide
image with srcset, a table, a code block with a long line, a long URL, captions,
galleries, embeds) is sent by `run_send` through the real SMTP server; the
received email is opened in Debian's chromium at 375 and 800 px, light and
dark: nothing scrolls sideways and axe-core finds nothing. Screenshots land in
test-artifacts/screenshots/ (content-full-*.png). SpamAssassin scores it as the
summary email is scored in tests/system/test_spam.py.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.a11y import PHONE, assert_email_passes_axe, file_url, placeholder_svg
from tests.support.helpers import html_and_text, send_to_one_reader
from tests.support.smtpserver import SMTPServer
from tests.system.test_spam import MAX_SCORE, needs_spamassassin, spamassassin

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

FEED = Path(__file__).resolve().parents[1] / "data" / "feeds" / "wordpress-full.xml"
READER = "parent@example.org"
REMOTE = re.compile(r"^https?://")
HTML_LIMIT = 100_000


@dataclass
class Sent:
    raw: bytes
    html: str
    text: str


def send_with_content(tmp_path: Path, smtp: SMTPServer, mode: str) -> Sent:
    """The WordPress feed's issue in `mode`, sent by run_send through the real SMTP server."""
    shutil.copy(FEED, tmp_path / "feed.xml")  # settings_for keeps a feed.xml already there
    received = send_to_one_reader(tmp_path, smtp, READER, NEWSLETTER_STORY_CONTENT=mode).received
    return Sent(received.data, *html_and_text(received.parsed()))


@pytest.fixture
def full_email(tmp_path: Path, smtp_server: SMTPServer) -> Sent:
    return send_with_content(tmp_path, smtp_server, "full")


def _image_size(url: str) -> tuple[int, int]:
    """The size the fixture's file names promise (WordPress writes it into them)."""
    match = re.search(r"-(\d+)x(\d+)\.\w+$", url)
    return (int(match.group(1)), int(match.group(2))) if match else (1600, 1067)


def _serve_images(route: Route) -> None:
    """Remote images become local grey stand-ins of their real size; nothing else loads."""
    if route.request.resource_type == "image":
        width, height = _image_size(route.request.url)
        body = placeholder_svg(width, height)
        route.fulfill(status=200, content_type="image/svg+xml", body=body)
    else:
        route.abort()


def _open(page: Page, tmp_path: Path, html: str) -> None:
    path = tmp_path / "email.html"
    path.write_text(html, encoding="utf-8")
    page.route(REMOTE, _serve_images)
    page.goto(file_url(path))


@pytest.mark.browser
def test_the_full_email_does_not_scroll_sideways_and_passes_axe(
    axe_page: Page, full_email: Sent, tmp_path: Path
) -> None:
    assert "survey.groupby" in full_email.html and "<table" in full_email.html
    _open(axe_page, tmp_path, full_email.html)
    assert_email_passes_axe(axe_page, "content-full-email", "full email")
    axe_page.set_viewport_size(PHONE)
    wide = axe_page.evaluate(
        """() => [...document.querySelectorAll('.content *')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
            .map(e => e.tagName + ': ' + (e.textContent || e.getAttribute('src')).slice(0, 60))"""
    )
    assert wide == [], wide
    images = axe_page.locator(".content img").evaluate_all(
        "imgs => imgs.map(i => [i.getAttribute('alt'), i.getBoundingClientRect().width])"
    )
    assert len(images) == 8
    assert all(alt is not None and 0 < width <= 343 for alt, width in images), images


@pytest.mark.browser
def test_the_title_only_email_passes_axe(
    axe_page: Page, tmp_path: Path, smtp_server: SMTPServer
) -> None:
    sent = send_with_content(tmp_path, smtp_server, "title")
    _open(axe_page, tmp_path, sent.html)
    assert_email_passes_axe(axe_page, "content-title-email", "title email")


def test_the_full_email_stays_under_gmails_clipping_size(full_email: Sent) -> None:
    assert len(full_email.html.encode("utf-8")) < HTML_LIMIT
    assert "Unsubscribe from AASR" in full_email.html


@needs_spamassassin
@pytest.mark.slow
def test_the_full_email_scores_like_the_summary_email(full_email: Sent) -> None:
    verdict = spamassassin(full_email.raw)
    assert verdict.costly() == {}, verdict.report
    assert verdict.score <= MAX_SCORE, verdict.report
    for rule in ("MPART_ALT_DIFF", "HTML_IMAGE_RATIO_02", "HTML_IMAGE_ONLY_04"):
        assert rule not in verdict.rules, verdict.report
