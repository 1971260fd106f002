"""Readers include parents of disabled children: the email and every page of
`newsletter serve` pass axe-core (WCAG 2.1 A/AA and best practices) in Debian's
chromium at 375 and 800 px, light and dark; the email reads in a sensible order
with images off and in its text part. Screenshots land in
test-artifacts/screenshots/ (a11y-*.png)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lxml.html
import pytest

from newsletter.config import Settings
from newsletter.sending.options import SendOptions
from newsletter.sending.run import run_send
from newsletter.web.app import PAGE_CSP
from tests.support.a11y import (
    PHONE,
    assert_email_passes_axe,
    check_page,
    describe_failures,
    file_url,
    placeholder_svg,
    run_axe,
)
from tests.support.browser import save_screenshot
from tests.support.helpers import (
    add_subscribers,
    database,
    html_and_text,
    send_to_one_reader,
    settings_for,
)
from tests.support.smtpserver import SMTPServer
from tests.support.website import served_site

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

READER = "parent@example.org"
#: Anything but the test web server: the sample feed's images live on endseclusion.org.
REMOTE = re.compile(r"^https?://(?!127\.0\.0\.1[:/])")


@dataclass
class SentIssue:
    settings: Settings
    message: EmailMessage
    html: str
    text: str
    unsubscribe_url: str


def send_sample_issue(tmp_path: Path, smtp: SMTPServer, **env: str) -> SentIssue:
    """The sample feed's issue, sent by run_send through the real SMTP server, as received."""
    settings, _, received = send_to_one_reader(tmp_path, smtp, READER, **env)
    message = received.parsed()
    html, text = html_and_text(message)
    unsubscribe = re.fullmatch(r"<([^>]+)>", message["List-Unsubscribe"])
    assert unsubscribe is not None
    return SentIssue(settings, message, html, text, unsubscribe.group(1))


@pytest.fixture
def sent(tmp_path: Path, smtp_server: SMTPServer) -> SentIssue:
    return send_sample_issue(tmp_path, smtp_server)


def _serve_images(route: Route) -> None:
    """Remote story images become a local grey placeholder; nothing else leaves the machine."""
    if route.request.resource_type == "image":
        route.fulfill(status=200, content_type="image/svg+xml", body=placeholder_svg())
    else:
        route.abort()


def _open_email(page: Page, tmp_path: Path, html: str, *, images: bool) -> None:
    path = tmp_path / "email.html"
    path.write_text(html, encoding="utf-8")
    page.route(REMOTE, _serve_images if images else lambda route: route.abort())
    page.goto(file_url(path))


# ---- the harness itself ----------------------------------------------------------


@pytest.mark.browser
def test_axe_finds_a_planted_violation(axe_page: Page) -> None:
    """A check that cannot fail proves nothing: missing alt text and faint text are caught."""
    axe_page.set_content(
        '<!DOCTYPE html><html lang="en"><title>t</title><main><h1>Planted</h1>'
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">'
        '<p style="color:#bbb;background:#fff">faint text</p></main></html>'
    )
    found = {violation["id"] for violation in run_axe(axe_page)}
    assert {"image-alt", "color-contrast"} <= found


# ---- the email ------------------------------------------------------------------


@pytest.mark.browser
def test_the_sample_issue_email_passes_axe_in_light_and_dark(
    axe_page: Page, sent: SentIssue, tmp_path: Path
) -> None:
    _open_email(axe_page, tmp_path, sent.html, images=True)
    assert_email_passes_axe(axe_page, "a11y-email", "email")


@pytest.mark.browser
def test_the_confirmation_email_passes_axe(
    axe_page: Page, tmp_path: Path, smtp_server: SMTPServer
) -> None:
    from newsletter.subscribers.signup import request_signup

    settings = settings_for(tmp_path, NEWSLETTER_SMTP_URL=smtp_server.url)
    request_signup(database(settings), settings, READER)
    [received] = smtp_server.wait_for(1)
    html = received.parsed().get_body(("html",))
    assert html is not None
    _open_email(axe_page, tmp_path, html.get_content(), images=True)
    assert_email_passes_axe(axe_page, "a11y-confirm-email", "confirmation email")


def _aria_lines(page: Page) -> list[str]:
    """The accessibility tree as a screen reader walks it: one stripped line per node."""
    snapshot = page.locator("body").aria_snapshot()
    # chromium puts a space before the visually hidden ": <title>" of "Read the full story"
    # (an absolutely positioned span); screen readers do not voice it
    snapshot = re.sub(r" +:", ":", snapshot)
    return [line.strip().removeprefix("- ") for line in snapshot.splitlines() if line.strip()]


def _in_order(lines: list[str], wanted: list[str]) -> list[str]:
    """The wanted fragments not found in order (each after the previous one)."""
    missing, at = [], 0
    for fragment in wanted:
        found = next((i for i in range(at, len(lines)) if fragment in lines[i]), None)
        if found is None:
            missing.append(fragment)
        else:
            at = found + 1
    return missing


@pytest.mark.browser
def test_with_images_off_the_email_reads_in_order_with_alt_text(
    page: Page, sent: SentIssue, tmp_path: Path
) -> None:
    page.set_viewport_size(PHONE)
    _open_email(page, tmp_path, sent.html, images=False)
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        save_screenshot(page, f"a11y-email-images-off-375-{scheme}")
    page.emulate_media(color_scheme="light")

    images = page.locator("img").evaluate_all(
        "imgs => imgs.map(i => ({alt: i.getAttribute('alt'), broken: i.naturalWidth === 0}))"
    )
    assert images, "the sample issue has a story image"
    assert all(i["broken"] for i in images), "images were meant to be blocked"
    assert all(i["alt"] is not None for i in images), "every image needs an alt attribute"

    stories = page.locator("td.story").evaluate_all(
        """cells => cells.map(c => ({
            title: c.querySelector('h2').innerText.trim(),
            alt: c.querySelector('img') ? c.querySelector('img').getAttribute('alt') : null,
        }))"""
    )
    assert len(stories) == 10
    wanted = ['heading "AASR" [level=1]']
    for story in stories:
        wanted.append(f'heading "{story["title"]}" [level=2]')
        if story["alt"]:  # an informative image is read after its heading, before the text
            wanted.append(f'img "{story["alt"]}"')
        wanted.append(f'link "Read the full story: {story["title"]}"')
    wanted += ["PO Box 1234", 'link "Unsubscribe from AASR"']
    lines = _in_order(_aria_lines(page), wanted)
    assert not lines, f"not read in order (missing or misplaced): {lines}"
    # a broken image must not hide the text after it
    summary = page.locator("td.story").first.locator(".summary")
    assert summary.is_visible() and summary.bounding_box()["height"] > 20  # type: ignore[index]


# ---- the text part ---------------------------------------------------------------


def _flat(text: str) -> str:
    return " ".join(text.split())


def _html_sequence(html: str) -> list[str]:
    """What a reader must find in the text part, in the order the HTML shows it."""
    doc = lxml.html.fromstring(html)
    sequence: list[str] = []
    for cell in doc.xpath("//td[contains(concat(' ', @class, ' '), ' story ')]"):
        [heading] = cell.xpath(".//h2")
        sequence.append(_flat(heading.text_content()))
        sequence += [a.get("href") for a in heading.xpath(".//a[@href]")]
    [footer] = doc.xpath("//td[contains(concat(' ', @class, ' '), ' footer ')]")
    sequence += [_flat(p.text_content()) for p in footer.xpath("./p[not(.//a)]")]
    sequence += [a.get("href") for a in footer.xpath(".//a[contains(@class, 'unsubscribe')]")]
    return sequence


def test_the_text_part_carries_every_title_link_address_and_unsubscribe_in_html_order(
    sent: SentIssue,
) -> None:
    sequence = _html_sequence(sent.html)
    titles = [item for item in sequence if not item.startswith("http")]
    assert len(titles) == 10 + 1  # ten stories, then the postal address
    assert sent.settings.postal_address in sequence
    assert sequence[-1] == sent.unsubscribe_url
    text = _flat(sent.text)
    at = 0
    for item in sequence:
        found = text.find(item, at)
        assert found >= 0, f"{item!r} is missing from the text part, or out of order"
        at = found + len(item)


# ---- every page of `newsletter serve` -----------------------------------------------


@dataclass
class SiteWithIssue:
    url: str
    settings: Settings
    unsubscribe_url: str


@pytest.fixture
def site(tmp_path: Path, smtp_server: SMTPServer) -> Iterator[SiteWithIssue]:
    """The app under uvicorn with one issue sent (so the archive has a page) and one reader."""
    # two signups, then the rate limit answers with the error page
    with served_site(tmp_path, smtp_server, signup_limit=2) as served:
        add_subscribers(served.engine, [READER])
        assert run_send(served.engine, served.settings, SendOptions()).error is None
        [received] = smtp_server.wait_for(1)
        link = re.fullmatch(r"<([^>]+)>", received.parsed()["List-Unsubscribe"])
        assert link is not None
        smtp_server.clear()
        yield SiteWithIssue(served.url, served.settings, link.group(1))


@pytest.mark.browser
def test_every_page_of_newsletter_serve_passes_axe(
    axe_page: Page, site: SiteWithIssue, smtp_server: SMTPServer
) -> None:
    from playwright.sync_api import expect

    page, base = axe_page, site.url
    failures: dict[str, Any] = {}

    def check(name: str, heading: str, disabled: dict[str, str] | None = None) -> None:
        expect(page.get_by_role("heading", level=1)).to_contain_text(heading)
        found = check_page(page, f"a11y-web-{name}", disabled)
        if found:
            failures[name] = found

    def submit(email: str) -> None:
        page.set_viewport_size(PHONE)
        page.get_by_label("Email address").fill(email)
        page.get_by_role("button", name="Sign up").click()

    response = page.goto(f"{base}/subscribe")
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp  # bypassed here only
    check("subscribe", "Get AASR in your inbox")
    submit("not an address")
    check("subscribe-error", "Get AASR in your inbox")
    submit("new.reader@example.org")
    check("subscribe-sent", "Check your email")
    page.goto(f"{base}/subscribe")
    submit("third@example.org")  # over the limit of two
    check("error", "Too many signups")

    [confirmation] = smtp_server.wait_for(1)
    body = confirmation.parsed().get_body(("plain",))
    assert body is not None
    confirm = re.search(r"\S+/confirm/[\w-]+", body.get_content())
    assert confirm is not None
    page.goto(confirm.group(0))
    check("confirm", "Confirm your subscription")
    page.set_viewport_size(PHONE)
    page.get_by_role("button", name="Confirm my subscription").click()
    check("confirmed", "You are subscribed")

    response = page.goto(site.unsubscribe_url)
    assert response is not None and response.headers["content-security-policy"] == PAGE_CSP
    check("unsubscribe", "Unsubscribe from AASR?")
    page.set_viewport_size(PHONE)
    page.get_by_role("button", name="Unsubscribe").click()
    check("unsubscribed", "You are unsubscribed")
    page.goto(f"{base}/unsubscribe")
    check("unsubscribe-help", "How to unsubscribe")

    page.goto(f"{base}/issues")
    check("issues", "Past issues of AASR")
    page.route(REMOTE, _serve_images)  # the archived email's story image
    page.get_by_role("link", name=re.compile("Supporting Youth")).click()
    # the archive page is a page of the site (its layout, its rules), not the email
    check("issue", "Supporting Youth")
    page.goto(f"{base}/no/such/page")
    check("not-found", "This link does not work")

    assert not failures, describe_failures(failures)
