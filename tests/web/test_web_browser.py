"""A person in a real browser (Debian's chromium via Playwright): unsubscribing from a
received email, and signing up then confirming. Screenshots of every page at phone
(375 px) and desktop (1024 px) widths land in test-artifacts/screenshots/."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from newsletter.sending.options import SendOptions
from newsletter.sending.run import run_send
from tests.support.browser import save_screenshot
from tests.support.helpers import add_subscribers
from tests.support.smtpserver import SMTPServer
from tests.support.website import Site

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

PHONE = {"width": 375, "height": 812}
DESKTOP = {"width": 1024, "height": 768}


def shoot(page: Page, name: str) -> None:
    """Screenshots at both widths; the page is left at phone width."""
    page.set_viewport_size(DESKTOP)
    save_screenshot(page, f"web-{name}-1024")
    page.set_viewport_size(PHONE)
    save_screenshot(page, f"web-{name}-375")
    # readable on a phone: nothing wider than the screen
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{name}: {width}px wide at 375px"


def test_a_reader_unsubscribes_from_the_link_in_a_received_email(
    page: Page, site: Site, smtp_server: SMTPServer
) -> None:
    from playwright.sync_api import expect

    base, settings, engine = site.url, site.settings, site.engine
    add_subscribers(engine, ["parent@example.org"])
    result = run_send(engine, settings, SendOptions())
    assert result.error is None
    [received] = smtp_server.wait_for(1)
    header = received.parsed()["List-Unsubscribe"]
    link = re.fullmatch(r"<([^>]+)>", header)
    assert link and link.group(1).startswith(f"{base}/unsubscribe/")

    page.set_viewport_size(PHONE)
    page.goto(link.group(1))
    expect(page.get_by_role("heading", level=1)).to_have_text("Unsubscribe from AASR?")
    shoot(page, "unsubscribe")
    # keyboard only: skip link, site name, then the one button
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    button = page.get_by_role("button", name="Unsubscribe")
    expect(button).to_be_focused()
    page.keyboard.press("Enter")

    expect(page.get_by_role("heading", level=1)).to_have_text("You are unsubscribed")
    assert "/unsubscribe/" in page.url  # answered in place, no redirect
    expect(page.get_by_role("link", name="sign up again")).to_be_visible()
    shoot(page, "unsubscribed")

    # the next send skips them
    smtp_server.clear()
    run_send(engine, settings, SendOptions())
    assert smtp_server.recipients() == []


def test_a_reader_signs_up_and_confirms_without_javascript(
    browser: Browser, site: Site, smtp_server: SMTPServer
) -> None:
    from playwright.sync_api import expect

    base, engine = site.url, site.engine
    context = browser.new_context(java_script_enabled=False, viewport=PHONE)
    page = context.new_page()
    try:
        page.goto(f"{base}/subscribe")
        expect(page.get_by_role("heading", level=1)).to_have_text("Get AASR in your inbox")
        shoot(page, "subscribe")
        # the honeypot is off-screen and out of the accessibility tree: two text boxes only
        expect(page.locator("#website")).not_to_be_in_viewport()
        expect(page.get_by_role("textbox")).to_have_count(2)

        page.get_by_label("Email address").fill("not an address")
        page.get_by_role("button", name="Sign up").click()
        expect(page.get_by_text("Enter a valid email address")).to_be_visible()
        expect(page.get_by_label("Email address")).to_be_focused()
        shoot(page, "subscribe-error")

        page.get_by_label("Email address").fill("parent@example.org")
        page.get_by_label("Your name (optional)").fill("Sam")
        page.get_by_role("button", name="Sign up").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Check your email")
        shoot(page, "subscribe-sent")

        [received] = smtp_server.wait_for(1)
        text = received.parsed().get_body(("plain",))
        assert text is not None
        match = re.search(r"(\S+/confirm/[\w-]+)", text.get_content())
        assert match
        page.goto(match.group(1))
        expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your subscription")
        shoot(page, "confirm")
        page.get_by_role("button", name="Confirm my subscription").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("You are subscribed")
        shoot(page, "confirmed")
        page.goto(match.group(1))  # the same link again, from the email
        expect(page.get_by_role("heading", level=1)).to_have_text("Already confirmed")
        expect(page.get_by_role("button")).to_have_count(0)
        shoot(page, "already-confirmed")

        page.goto(f"{base}/confirm/not-a-real-token")
        expect(page.get_by_role("heading", level=1)).to_have_text("This link does not work")
        shoot(page, "not-found")
    finally:
        context.close()
    with engine.connect() as conn:
        status = conn.execute(
            sa.text("SELECT status FROM subscriber WHERE email = 'parent@example.org'")
        ).scalar_one()
    assert status == "active"


def test_a_visitor_reads_a_past_issue_as_a_page_of_the_site(
    page: Page, site: Site, smtp_server: SMTPServer
) -> None:
    from playwright.sync_api import expect

    add_subscribers(site.engine, ["parent@example.org"])
    assert run_send(site.engine, site.settings, SendOptions()).error is None
    smtp_server.wait_for(1)
    page.set_viewport_size(PHONE)
    page.goto(f"{site.url}/issues")
    page.get_by_role("link", name=re.compile("Supporting Youth")).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Supporting Youth")
    expect(page.get_by_role("link", name="Sign up")).to_be_visible()  # the site's footer
    expect(page.get_by_text("View in your browser")).to_have_count(0)
    expect(page.get_by_text("You are receiving this")).to_have_count(0)
    assert page.get_by_role("heading", level=2).count() >= 2  # one per story
    shoot(page, "issue")
