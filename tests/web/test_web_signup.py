"""Signup and confirmation over real HTTP, with the confirmation email caught by a real
aiosmtpd server: DKIM, branding, "already confirmed", refusals, link age, per-mailbox
and per-network limits, the rate-limit setting."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import dkim
import httpx
import pytest
import sqlalchemy as sa

from newsletter.config import load_settings
from newsletter.db import write_session
from newsletter.errors import ConfigError, TokenError
from newsletter.mail.dkimkey import GeneratedKey, generate_key
from newsletter.models import Subscriber, SubscriberStatus, utcnow
from newsletter.subscribers.confirming import CONFIRM_TTL, send_owed_confirmations
from newsletter.subscribers.signup import (
    ConfirmOutcome,
    SignupOutcome,
    confirm_signup,
    confirmation_state,
    mailbox_key,
    request_signup,
)
from newsletter.web.throttle import client_key
from tests.support.helpers import database, settings_for
from tests.support.smtpserver import SMTPServer
from tests.support.webserver import WebServer
from tests.support.website import Site, confirm_token_from, start_site

pytestmark = pytest.mark.usefixtures("db_backend")


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


# ---- 10.5: DKIM -----------------------------------------------------------------


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> GeneratedKey:
    folder = tmp_path_factory.mktemp("dkim")
    return generate_key(folder / "dkim.pem", selector="news2026", domain="endseclusion.org")


def test_the_confirmation_email_is_dkim_signed_and_verifies(
    tmp_path: Path, smtp_server: SMTPServer, dkim_key: GeneratedKey
) -> None:
    record = "".join(dkim_key.txt_strings).encode("ascii")

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{dkim_key.record_name}.".encode() else None

    env = {
        "NEWSLETTER_DKIM_PRIVATE_KEY": str(dkim_key.path),
        "NEWSLETTER_DKIM_SELECTOR": dkim_key.selector,
    }
    with WebServer() as server:
        made = start_site(tmp_path, smtp_server, server, env=env)
        try:
            assert made.signup("maria@example.org", name="Maria").status_code == 200
            [received] = smtp_server.wait_for(1)
        finally:
            made.close()
    assert received.data.startswith(b"DKIM-Signature:")
    assert dkim.verify(received.data, dnsfunc=dnsfunc)
    signature = received.parsed()["DKIM-Signature"]
    signed = re.search(r"h=([^;]+);", signature.replace("\r\n", "").replace(" ", ""))
    assert signed is not None
    names = [n.lower() for n in signed.group(1).split(":")]
    assert "list-unsubscribe" in names and "list-unsubscribe-post" in names  # RFC 8058
    # tampering is caught: the signature covers what we sent
    assert not dkim.verify(received.data.replace(b"AASR", b"AASX", 1), dnsfunc=dnsfunc)


# ---- 10.10: branding and words --------------------------------------------------------


def test_the_confirmation_email_looks_like_the_newsletter_and_names_the_button(
    site: Site,
) -> None:
    site.signup("maria@example.org", name="Visit spam.example")
    [received] = site.smtp.wait_for(1)
    msg = received.parsed()
    assert msg["To"] == "maria@example.org"  # nothing the visitor typed
    html_part, text_part = msg.get_body(("html",)), msg.get_body(("plain",))
    assert html_part is not None and text_part is not None
    html, text = html_part.get_content(), text_part.get_content()
    assert "Georgia" not in html and "serif;" not in html.replace("sans-serif", "")
    assert "Arial" in html  # the issue email's type, inlined
    header = re.search(r'<td class="header"[^>]*style="([^"]+)"', html)
    assert header is not None and "#164b5f" in header.group(1)  # the issue email's header bar
    assert "<h1" in html and "AASR</h1>" in html
    assert "“Confirm my subscription”" in html or "&ldquo;Confirm my subscription" in html
    assert '"Confirm my subscription" button' in text
    assert "“Confirm”" not in html and '"Confirm"' not in text
    assert "AASR, PO Box 1234" in html and "AASR, PO Box 1234" in text
    token = confirm_token_from(msg)
    page = site.http.get(f"/confirm/{token}")
    button = re.search(r"<button[^>]*>([^<]+)</button>", page.text)
    assert button is not None and button.group(1) == "Confirm my subscription"


def test_a_used_link_says_already_confirmed_and_reveals_nothing(site: Site) -> None:
    site.signup("maria@example.org")
    token = confirm_token_from(site.smtp.wait_for(1)[0].parsed())
    assert site.http.post(f"/confirm/{token}").status_code == 200
    for method in ("GET", "POST"):
        again = site.http.request(method, f"/confirm/{token}")
        assert again.status_code == 200, method
        assert "Already confirmed" in again.text and "<button" not in again.text
        assert "maria" not in again.text.lower()
    # an unknown link still gets the generic page, whatever other links exist
    assert site.http.get("/confirm/" + "A" * 22).status_code == 404


# ---- 10.12: a permanent refusal ----------------------------------------------------------


def test_a_refused_address_is_told_to_check_the_address(site: Site) -> None:
    site.smtp.configure(rcpt_replies={"ann@": "550 5.1.1 No such user here"})
    first = site.signup("ann@example.org", name="Ann")
    assert first.status_code == 200 and "Check your email" in first.text  # answered at once

    def refused() -> bool:
        row = site.row("ann@example.org")
        return row is not None and row.confirm_error is not None

    wait_until(refused)
    second = site.signup("ann@example.org", name="Ann")
    assert second.status_code == 400
    assert "Check the address" in second.text and 'aria-invalid="true"' in second.text
    assert "try again in a few minutes" not in second.text
    assert 'value="ann@example.org"' in second.text
    # told once; the corrected (or same, now fixed) address is tried again
    site.smtp.reset_behaviour()
    third = site.signup("ann@example.org")
    assert third.status_code == 200 and "Check your email" in third.text
    [received] = site.smtp.wait_for(1)
    assert received.rcpt_tos == ["ann@example.org"]


def test_a_temporary_refusal_is_retried_with_backoff(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    settings = settings_for(tmp_path, NEWSLETTER_SMTP_URL=smtp_server.url)
    engine = database(settings)
    t0 = utcnow()
    result = request_signup(engine, settings, "bea@example.org", now=t0, send_now=False)
    assert result.outcome == SignupOutcome.QUEUED and smtp_server.transactions == 0
    smtp_server.configure(rcpt_replies={"bea@": "451 4.3.0 Try later"})
    assert send_owed_confirmations(engine, settings, now=t0).deferred == 1
    assert send_owed_confirmations(engine, settings, now=t0 + timedelta(seconds=5)).deferred == 0
    smtp_server.reset_behaviour()
    assert send_owed_confirmations(engine, settings, now=t0 + timedelta(seconds=31)).sent == 1
    assert smtp_server.recipients() == ["bea@example.org"]
    # sent once: nothing more is owed
    assert send_owed_confirmations(engine, settings, now=t0 + timedelta(hours=1)).sent == 0
    # a content filter's plain 550 is the sender's problem, never "check the address"
    other = request_signup(engine, settings, "cy@example.org", now=t0, send_now=False)
    assert other.outcome == SignupOutcome.QUEUED
    smtp_server.configure(rcpt_replies={"cy@": "550 Rejected by content filter"})
    assert send_owed_confirmations(engine, settings, now=t0).deferred == 1
    with write_session(engine) as session:
        row = session.exec(
            sa.select(Subscriber).where(Subscriber.email == "cy@example.org")  # type: ignore[arg-type]
        ).scalar_one()
        assert row.confirm_error is None and row.confirm_send_at is not None


# ---- 11: the link's own clock -----------------------------------------------------------


def test_a_later_write_to_the_pending_row_does_not_extend_the_link(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    settings = settings_for(tmp_path, NEWSLETTER_SMTP_URL=smtp_server.url)
    engine = database(settings)
    t0 = utcnow() - timedelta(days=6)
    request_signup(engine, settings, "dee@example.org", now=t0)
    token = confirm_token_from(smtp_server.wait_for(1)[0].parsed())
    with write_session(engine) as session:  # an admin edit, an import touching the row...
        row = session.exec(
            sa.select(Subscriber).where(Subscriber.email == "dee@example.org")  # type: ignore[arg-type]
        ).scalar_one()
        row.name = "Dee"
        row.updated_at = utcnow()
        session.add(row)
    late = t0 + CONFIRM_TTL + timedelta(minutes=1)
    assert confirmation_state(engine, token, now=t0 + timedelta(days=1)) == "pending"
    assert confirmation_state(engine, token, now=late) is None
    with pytest.raises(TokenError):
        confirm_signup(engine, token, ip=None, now=late)
    with write_session(engine) as session:
        row = session.exec(
            sa.select(Subscriber).where(Subscriber.email == "dee@example.org")  # type: ignore[arg-type]
        ).scalar_one()
        assert row.status == SubscriberStatus.PENDING
    # within the TTL it works once, then says "already confirmed"
    inside = t0 + timedelta(days=6, hours=23)
    assert confirm_signup(engine, token, ip=None, now=inside) == ConfirmOutcome.CONFIRMED
    assert confirm_signup(engine, token, ip=None, now=inside) == ConfirmOutcome.ALREADY


# ---- 11.10: one confirmation per mailbox ---------------------------------------------------


def test_plus_addressed_signups_get_one_confirmation_per_mailbox(site: Site) -> None:
    def signup(email: str, name: str, ip: str) -> httpx.Response:  # a botnet: one IP each
        data = {"email": email, "name": name}
        return site.http.post("/subscribe", data=data, headers={"X-Forwarded-For": ip})

    answers = [
        signup(f"Name+attack{i}@Example.org", f"Buy pills {i} http://spam.example", f"192.0.2.{i}")
        for i in range(5)
    ]
    answers.append(signup("NAME@example.org", "", "192.0.2.99"))
    assert {r.status_code for r in answers} == {200}
    assert len({r.text for r in answers}) == 1  # nothing tells them apart
    [received] = site.smtp.wait_for(1)
    msg = received.parsed()
    assert msg["To"] == "Name+attack0@example.org"  # the address itself, nothing more
    assert b"spam.example" not in received.data and b"pills" not in received.data
    time.sleep(0.5)  # let a (wrong) second email arrive if one were owed
    assert len(site.smtp.messages) == 1
    with site.engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM subscriber")).scalar_one()
    assert count == 1  # the throttled signups left nothing behind
    # another mailbox on the same domain is not affected
    site.signup("other@example.org")
    assert len(site.smtp.wait_for(2)) == 2


def test_mailbox_key_drops_the_tag_and_case() -> None:
    assert mailbox_key("name+x@example.org") == "name@example.org"
    assert mailbox_key("Name+X+y@Example.ORG") == "name@example.org"
    assert mailbox_key("plain@example.org") == "plain@example.org"


# ---- 10.11: the rate limit is a setting, IPv6 counted per /64 ----------------------------


def test_the_rate_limit_setting_counts_ipv6_clients_per_64(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    with WebServer() as server:
        made = start_site(
            tmp_path, smtp_server, server, env={"NEWSLETTER_SIGNUP_RATE_LIMIT": "2/1h"}
        )
        try:

            def from_ip(ip: str, email: str) -> int:
                response = made.http.post(
                    "/subscribe", data={"email": email}, headers={"X-Forwarded-For": ip}
                )
                if response.status_code == 429:
                    assert response.headers["retry-after"] == "3600"
                    assert "60 minutes" in response.text
                return response.status_code

            assert from_ip("2001:db8:1:2::a", "a1@example.org") == 200
            assert from_ip("2001:db8:1:2:ffff::b", "a2@example.org") == 200
            assert from_ip("2001:db8:1:2::c", "a3@example.org") == 429  # same /64
            assert from_ip("2001:db8:1:3::a", "b1@example.org") == 200  # next /64
            assert from_ip("192.0.2.7", "c1@example.org") == 200
            assert from_ip("192.0.2.8", "c2@example.org") == 200
            smtp_server.wait_for(4)
        finally:
            made.close()
    assert "a3@example.org" not in smtp_server.recipients()


def test_client_key_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") != client_key("2001:db8::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("unknown") == "unknown"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("5/10m", (5, 600.0)), ("20/1h", (20, 3600.0)), ("3/90", (3, 90.0)), ("off", None)],
)
def test_the_rate_limit_setting_parses(
    tmp_path: Path, raw: str, expected: tuple[int, float] | None
) -> None:
    env = {"NEWSLETTER_SIGNUP_RATE_LIMIT": raw}
    assert load_settings(env, tmp_path / "no.env").signup_rate_limit == expected


@pytest.mark.parametrize("raw", ["five", "5/", "0/10m", "5/10y", "-1/1h", "5/0m"])
def test_a_bad_rate_limit_setting_is_one_clear_error(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError, match=r"NEWSLETTER_SIGNUP_RATE_LIMIT.*like '5/10m'"):
        load_settings({"NEWSLETTER_SIGNUP_RATE_LIMIT": raw}, tmp_path / "no.env")
