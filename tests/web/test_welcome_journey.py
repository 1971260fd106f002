"""Issue 13, end to end: the welcome email and the site's signup form, through a real
`newsletter serve` (uvicorn on 127.0.0.1), the real aiosmtpd server, a real browser
(Debian's chromium via Playwright) and real `newsletter` processes.

- sign up, open the confirmation link, confirm, receive the welcome;
- the SMTP server down when the signup is confirmed: the page still says confirmed,
  `newsletter status` counts the welcome owed, `newsletter send` delivers it once,
  and a second send does not send it again;
- `newsletter form`'s snippet saved as a page on a second local HTTP server (another
  origin), submitted in the browser, reaches the confirmation email; each bad input
  from it gets the signup page with its message.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from newsletter.models import Subscriber, SubscriberStatus
from newsletter.sending.options import SendOptions
from newsletter.sending.run import run_send
from tests.support.feedserver import FeedServer
from tests.support.helpers import BASE_ENV, add_subscribers, run_cli
from tests.support.smtphandler import ReceivedMessage
from tests.support.smtpserver import SMTPServer
from tests.support.webserver import WebServer
from tests.support.website import Site, served_site, start_site

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

PHONE = {"width": 375, "height": 812}
CONFIRM_LINK = re.compile(r"(https?://\S+/confirm/[\w-]+)")
WELCOME_SUBJECT = "Welcome to AASR"


@pytest.fixture
def site(tmp_path: Path, smtp_server: SMTPServer) -> Iterator[Site]:
    """`newsletter serve`'s app under uvicorn; one issue already sent (to an old reader)."""
    with served_site(tmp_path, smtp_server) as made:
        add_subscribers(made.engine, ["old-reader@example.org"])
        assert run_send(made.engine, made.settings, SendOptions()).error is None
        smtp_server.wait_for(1)
        smtp_server.clear()
        yield made


@pytest.fixture
def no_js_page(browser: Browser) -> Iterator[Page]:
    """A phone-sized page with JavaScript off: the pages and the form must not need it."""
    context = browser.new_context(java_script_enabled=False, viewport=PHONE)
    try:
        yield context.new_page()
    finally:
        context.close()


def _text(message: ReceivedMessage) -> str:
    body = message.parsed().get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def _by_subject(messages: list[ReceivedMessage], subject: str) -> list[ReceivedMessage]:
    return [m for m in messages if m.parsed()["Subject"] == subject]


def _confirm_in_browser(page: Page, confirmation: ReceivedMessage) -> None:
    from playwright.sync_api import expect

    match = CONFIRM_LINK.search(_text(confirmation))
    assert match, "no confirm link in the confirmation email"
    page.goto(match.group(1))
    expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your subscription")
    page.get_by_role("button", name="Confirm my subscription").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("You are subscribed")
    expect(page.get_by_text("A welcome email is on its way")).to_be_visible()


def _sign_up_on_our_page(page: Page, site: Site, email: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{site.url}/subscribe")
    page.get_by_label("Email address").fill(email)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your email")


def _after_the_workers_try(site: Site, email: str) -> Subscriber:
    """The row once `serve`'s worker has tried the welcome and settled the try.

    While a try is under way the row holds a lease (`welcome_claimed_until`, see
    newsletter.subscribers.welcome), and the message can reach the server before the
    try is settled.
    """
    deadline = time.monotonic() + 15
    while True:
        row = site.row(email)
        assert row is not None
        leased = row.welcome_claimed_until is not None
        settled = (row.welcome_attempts or 0) >= 1 and not leased
        if settled or time.monotonic() > deadline:
            return row
        time.sleep(0.05)


def test_sign_up_confirm_and_receive_the_welcome(
    no_js_page: Page, site: Site, smtp_server: SMTPServer
) -> None:
    page = no_js_page
    _sign_up_on_our_page(page, site, "sam@example.org")
    # the "check your email" page leads back to the site the feed belongs to
    back = page.get_by_role("link", name=re.compile(r"^Back to "))
    assert back.get_attribute("href") == "https://endseclusion.org/"
    [confirmation] = smtp_server.wait_for(1)
    _confirm_in_browser(page, confirmation)

    messages = smtp_server.wait_for(2)
    [welcome] = _by_subject(messages, WELCOME_SUBJECT)
    assert welcome.rcpt_tos == ["sam@example.org"]
    parsed = welcome.parsed()
    row = _after_the_workers_try(site, "sam@example.org")
    assert row.status == SubscriberStatus.ACTIVE
    assert row.welcome_sent_at is not None and row.welcome_send_at is None
    assert parsed["List-Unsubscribe"] == f"<{site.url}/unsubscribe/{row.token}>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["List-Id"] and parsed["Precedence"] == "bulk"
    text = _text(welcome)
    assert f"{site.url}/issues" in text  # the archive
    assert "https://endseclusion.org/" in text  # the latest issue's stories, with links
    assert site.settings.postal_address and site.settings.postal_address in text
    assert f"{site.url}/unsubscribe/{row.token}" in text
    # confirming again (the page's button twice) sends nothing more
    assert site.http.post(CONFIRM_LINK.search(_text(confirmation)).group(1)).status_code == 200  # type: ignore[union-attr]
    assert len(smtp_server.messages) == 2


def test_smtp_down_at_confirmation_then_newsletter_send_delivers_the_welcome_once(
    no_js_page: Page, site: Site, smtp_server: SMTPServer, tmp_path: Path
) -> None:

    page = no_js_page
    _sign_up_on_our_page(page, site, "kim@example.org")
    [confirmation] = smtp_server.wait_for(1)
    smtp_server.stop()  # the mail server goes down before the reader confirms

    _confirm_in_browser(page, confirmation)  # confirmation still succeeds
    row = _after_the_workers_try(site, "kim@example.org")
    assert row.status == SubscriberStatus.ACTIVE
    assert row.welcome_sent_at is None and row.welcome_send_at is not None

    env = {
        **BASE_ENV,
        "NEWSLETTER_BASE_URL": site.url,
        "NEWSLETTER_FEED_URL": str(site.settings.feed_url),
        "NEWSLETTER_DATABASE_URL": site.settings.database_url,
    }
    status = run_cli(tmp_path, "status", **env)
    assert status.returncode == 0, status.stderr
    assert "1 welcome email is owed to new subscribers" in status.stdout

    with SMTPServer() as back_up:  # the server is back (at a new address)
        env["NEWSLETTER_SMTP_URL"] = back_up.url
        first = run_cli(tmp_path, "send", **env)
        assert first.returncode == 0, first.stderr
        assert "Also sent 1 welcome email owed to new subscribers." in first.stdout
        second = run_cli(tmp_path, "send", **env)
        assert second.returncode == 0, second.stderr
        assert "welcome" not in second.stdout
        welcomes = _by_subject(back_up.messages, WELCOME_SUBJECT)
        assert [m.rcpt_tos for m in welcomes] == [["kim@example.org"]]
    row = site.row("kim@example.org")
    assert row is not None and row.welcome_sent_at is not None and row.welcome_send_at is None
    status = run_cli(tmp_path, "status", **env)
    assert "welcome" not in status.stdout


# ---- the site's own form (`newsletter form`) ----------------------------------------------


def _site_page(tmp_path: Path, site: Site, *args: str) -> str:
    """`newsletter form` run as a user runs it, pasted into a page of the organisation's site."""
    env = {**BASE_ENV, "NEWSLETTER_BASE_URL": site.url}
    done = run_cli(tmp_path, "form", *args, **env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Follow AASR</title></head>"
        '<body style="font-family: Georgia, serif"><main><h1>Follow AASR</h1>'
        f"{done.stdout}</main></body></html>"
    )


@pytest.fixture
def other_origin(tmp_path: Path, site: Site) -> Iterator[str]:
    """The snippet served by a second local HTTP server: a different origin from the app."""
    with FeedServer() as server:
        html = _site_page(tmp_path, site).encode("utf-8")
        server.route("/follow", body=html, content_type="text/html; charset=utf-8")
        yield server.url("/follow")


def test_the_form_on_another_origin_reaches_the_confirmation_email(
    no_js_page: Page, site: Site, other_origin: str, smtp_server: SMTPServer
) -> None:
    from playwright.sync_api import expect

    page = no_js_page
    page.goto(other_origin)
    assert not page.url.startswith(site.url)
    # the site's fonts reach the form's fields and button
    font = page.get_by_label("Email address").evaluate("e => getComputedStyle(e).fontFamily")
    assert "Georgia" in font
    expect(page.get_by_role("textbox")).to_have_count(2)  # the honeypot is out of the tree
    page.get_by_label("Email address").fill("alex@example.org")
    page.get_by_label("Your name (optional)").fill("Alex")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your email")
    assert page.url == f"{site.url}/subscribe"
    [confirmation] = smtp_server.wait_for(1)
    assert confirmation.rcpt_tos == ["alex@example.org"]
    assert CONFIRM_LINK.search(_text(confirmation))
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]


BAD_INPUTS = {
    "no address": ("", {}, "Enter a valid email address"),
    "a malformed address": ("ann@@example.org", {}, "Enter a valid email address"),
    "the honeypot filled": ("ann@example.org", {"website": "x"}, "must stay empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_each_bad_input_from_the_site_form_gets_its_message(
    no_js_page: Page, site: Site, other_origin: str, smtp_server: SMTPServer, case: str
) -> None:
    from playwright.sync_api import expect

    email, hidden, message = BAD_INPUTS[case]
    page = no_js_page
    page.goto(other_origin)
    page.get_by_label("Email address").fill(email)
    for name, value in hidden.items():  # what autofill or a bot does to the hidden field
        page.locator(f"input[name={name}]").fill(value, force=True)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_text(message)).to_be_visible()
    expect(page.get_by_role("link", name=re.compile(r"^Back to "))).to_have_attribute(
        "href", "https://endseclusion.org/"
    )
    assert smtp_server.messages == []


def test_too_many_tries_from_the_site_form_get_the_message_and_no_hint(
    tmp_path: Path, smtp_server: SMTPServer, browser: Browser
) -> None:
    """The limit's page looks the same whether the address is subscribed or not."""
    from playwright.sync_api import expect

    with WebServer() as server:
        site = start_site(tmp_path, smtp_server, server, signup_limit=1)
        try:
            add_subscribers(site.engine, ["member@example.org"])
            with FeedServer() as other:
                other.route(
                    "/follow",
                    body=_site_page(tmp_path, site).encode(),
                    content_type="text/html; charset=utf-8",
                )
                context = browser.new_context(java_script_enabled=False, viewport=PHONE)
                page = context.new_page()
                texts = []
                for email in ("first@example.org", "member@example.org", "new@example.org"):
                    page.goto(other.url("/follow"))
                    page.get_by_label("Email address").fill(email)
                    page.get_by_role("button", name="Sign up").click()
                    texts.append(page.locator("main").inner_text())
                expect(page.get_by_role("heading", level=1)).to_have_text("Too many signups")
                context.close()
            assert "Check your email" in texts[0]
            # the 2nd (subscribed) and 3rd (unknown) answers differ only in the address typed
            assert texts[1].replace("member@", "X@") == texts[2].replace("new@", "X@")
            smtp_server.wait_for(1)
            assert smtp_server.recipients() == ["first@example.org"]
        finally:
            site.close()


def test_a_cross_origin_post_is_accepted_and_opens_nothing_else(
    site: Site, smtp_server: SMTPServer
) -> None:
    """What a browser sends for the site's form: Origin and Sec-Fetch-Site of another site."""
    cross = {"Origin": "https://endseclusion.org", "Sec-Fetch-Site": "cross-site"}
    response = site.http.post("/subscribe", data={"email": "x@example.org"}, headers=cross)
    assert response.status_code == 200 and "Check your email" in response.text
    assert "access-control-allow-origin" not in response.headers  # no CORS: a page, not an API
    smtp_server.wait_for(1)
    token = site.token("x@example.org")
    page = site.http.get(f"/unsubscribe/{token}", headers=cross)
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    preflight = site.http.options(
        "/subscribe", headers={**cross, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
