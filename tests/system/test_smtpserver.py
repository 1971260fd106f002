"""The test SMTP server behaves like the real servers the sender will meet.

These drive it with plain smtplib, so a fault seen by the newsletter's own
tests is known to come from the server's configured behaviour, not a bug here.
"""

from __future__ import annotations

import http.server
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from typing import TYPE_CHECKING

import pytest

from tests.support.browser import save_screenshot
from tests.support.smtpserver import SMTPServer

if TYPE_CHECKING:
    from playwright.sync_api import Page

MakeServer = Callable[..., SMTPServer]
FROM = "news@example.org"


def make_message(to: str = "reader@example.com", subject: str = "Hello", body: str = "Hi.\n"):
    msg = EmailMessage()
    msg["From"] = FROM
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP_POLICY)


def connect(server: SMTPServer, timeout: float = 5.0) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=timeout)


def send(server: SMTPServer, to: str | list[str] = "reader@example.com", **kw: float) -> dict:
    rcpts = [to] if isinstance(to, str) else to
    with connect(server, **kw) as client:
        return client.sendmail(FROM, rcpts, make_message(rcpts[0]))


# ---- plain delivery ---------------------------------------------------------


def test_accepts_and_keeps_the_exact_bytes(smtp_server: SMTPServer) -> None:
    raw = make_message(subject="Café ☕ news")
    with connect(smtp_server) as client:
        assert client.sendmail(FROM, ["a@example.com", "b@example.com"], raw) == {}

    [msg] = smtp_server.messages
    assert msg.mail_from == FROM
    assert msg.rcpt_tos == ["a@example.com", "b@example.com"]
    assert msg.data == raw
    assert msg.parsed()["Subject"] == "Café ☕ news"
    assert (msg.number, msg.tls, msg.auth_user, msg.dropped) == (1, False, None, False)
    assert smtp_server.connections_opened == 1
    assert smtp_server.messages_accepted == 1
    assert smtp_server.url == f"smtp://127.0.0.1:{smtp_server.port}"


def test_counts_connections_and_clear_restarts_numbering(smtp_server: SMTPServer) -> None:
    with connect(smtp_server) as client:
        for i in range(3):
            client.sendmail(FROM, [f"r{i}@example.com"], make_message())
    send(smtp_server)
    assert smtp_server.connections_opened == 2
    assert smtp_server.transactions == 4
    assert [m.number for m in smtp_server.messages] == [1, 2, 3, 4]
    assert smtp_server.recipients()[:3] == ["r0@example.com", "r1@example.com", "r2@example.com"]

    smtp_server.clear()
    assert smtp_server.messages == [] and smtp_server.connections_opened == 0
    send(smtp_server)
    assert smtp_server.messages[0].number == 1


# ---- recipient and DATA replies ---------------------------------------------

RCPT_FAULTS = {
    "greylist@": "451 4.7.1 Greylisted, try later",
    "gone@": "550 5.1.1 User unknown",
    "full@": "552 5.2.2 Mailbox full",
    "policy@": "554 5.7.1 Sender rejected",
}


@pytest.mark.parametrize(
    ("address", "code", "text"),
    [
        ("greylist@example.com", 451, b"4.7.1 Greylisted, try later"),
        ("Gone@Example.com", 550, b"5.1.1 User unknown"),
        ("full@example.com", 552, b"5.2.2 Mailbox full"),
        ("policy@example.com", 554, b"5.7.1 Sender rejected"),
    ],
)
def test_rcpt_replies(make_smtp_server: MakeServer, address: str, code: int, text: bytes) -> None:
    server = make_smtp_server(rcpt_replies=RCPT_FAULTS)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        send(server, address)
    assert info.value.recipients == {address: (code, text)}
    assert server.messages == []


def test_rcpt_reply_by_regex_refuses_only_that_recipient(smtp_server: SMTPServer) -> None:
    smtp_server.configure(rcpt_replies={re.compile(r"^bounce\d+@"): "550 5.1.1 No such user"})
    refused = send(smtp_server, ["bounce7@example.com", "ok@example.com"])
    assert refused == {"bounce7@example.com": (550, b"5.1.1 No such user")}
    assert smtp_server.messages[0].rcpt_tos == ["ok@example.com"]


@pytest.mark.parametrize(
    ("reply", "code"), [("451 4.3.0 Temporary failure", 451), ("554 5.7.1 Spam", 554)]
)
def test_data_reply(smtp_server: SMTPServer, reply: str, code: int) -> None:
    smtp_server.configure(data_reply=reply)
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(smtp_server)
    assert info.value.smtp_code == code
    assert smtp_server.messages == []

    smtp_server.reset_behaviour()  # settable between sends, on the running server
    send(smtp_server)
    assert smtp_server.messages_accepted == 1


# ---- connection faults ------------------------------------------------------


def test_421_on_the_nth_message_closes_the_connection(smtp_server: SMTPServer) -> None:
    smtp_server.configure(fail_421_on=2)
    client = connect(smtp_server)
    client.sendmail(FROM, ["one@example.com"], make_message())
    with pytest.raises(smtplib.SMTPDataError) as info:
        client.sendmail(FROM, ["two@example.com"], make_message())
    assert (info.value.smtp_code, info.value.smtp_error) == (421, b"4.7.0 Try again later")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.sendmail(FROM, ["three@example.com"], make_message())

    send(smtp_server, "two@example.com")  # the retry is message 3: accepted
    assert smtp_server.recipients() == ["one@example.com", "two@example.com"]
    assert smtp_server.connections_opened == 2


def test_421_at_mail_from(smtp_server: SMTPServer) -> None:
    smtp_server.configure(fail_421_on=1, fail_421_stage="mail")
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        send(smtp_server)
    assert info.value.smtp_code == 421


def test_drop_after_body_is_ambiguous(smtp_server: SMTPServer) -> None:
    smtp_server.configure(drop_after_body_on=1)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        send(smtp_server, "maybe@example.com")
    # the server kept it: a sender that retries now makes a duplicate
    [msg] = smtp_server.messages
    assert msg.dropped and msg.rcpt_tos == ["maybe@example.com"]
    assert (smtp_server.messages_dropped, smtp_server.messages_accepted) == (1, 0)


def test_drop_after_body_for_matching_recipients(smtp_server: SMTPServer) -> None:
    smtp_server.configure(drop_after_body_rcpts=("flaky@",))
    send(smtp_server, "fine@example.com")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        send(smtp_server, "flaky@example.com")
    assert [m.dropped for m in smtp_server.messages] == [False, True]


def test_delayed_reply_trips_the_client_timeout(smtp_server: SMTPServer) -> None:
    smtp_server.configure(data_delay=1.5)
    started = time.monotonic()
    with pytest.raises((smtplib.SMTPServerDisconnected, TimeoutError)):
        send(smtp_server, timeout=0.3)
    assert time.monotonic() - started < 1.2
    time.sleep(1.5)  # past the delay: the server saw the client leave and kept nothing
    assert smtp_server.messages == []

    smtp_server.configure(data_delay=0.2)
    send(smtp_server, timeout=5)  # a patient client gets its 250
    assert smtp_server.messages_accepted == 1


# ---- AUTH and TLS -----------------------------------------------------------


def test_auth_success_and_failure(make_smtp_server: MakeServer) -> None:
    server = make_smtp_server(auth=("news", "s3cret:/@"))
    assert server.url == f"smtp://news:s3cret%3A%2F%40@127.0.0.1:{server.port}"

    with connect(server) as client:
        client.login("news", "s3cret:/@")
        client.sendmail(FROM, ["r@example.com"], make_message())
    assert server.messages[0].auth_user == "news"

    with connect(server) as client, pytest.raises(smtplib.SMTPAuthenticationError) as info:
        client.login("news", "wrong")
    assert info.value.smtp_code == 535

    with pytest.raises(smtplib.SMTPSenderRefused) as refused:  # no login at all
        send(server)
    assert refused.value.smtp_code == 530


def test_starttls_with_trusted_generated_certificate(make_smtp_server: MakeServer) -> None:
    server = make_smtp_server(tls="starttls", require_starttls=True, auth=("u", "p"))
    assert server.url.startswith("smtp+starttls://u:p@127.0.0.1:")
    with connect(server) as client:
        client.starttls(context=server.client_ssl_context())
        client.login("u", "p")
        client.sendmail(FROM, ["r@example.com"], make_message())
    assert server.messages[0].tls
    assert server.connections_opened == 1  # the TLS upgrade is the same connection

    with connect(server) as client, pytest.raises(ssl.SSLCertVerificationError):
        client.starttls(context=ssl.create_default_context())  # untrusted CA


def test_smtps_and_ssl_cert_file(make_smtp_server: MakeServer, monkeypatch) -> None:
    server = make_smtp_server(tls="implicit")
    assert server.url == f"smtps://127.0.0.1:{server.port}"
    ctx = server.client_ssl_context()
    with smtplib.SMTP_SSL(server.host, server.port, context=ctx, timeout=5) as client:
        client.sendmail(FROM, ["r@example.com"], make_message())
    assert server.messages[0].tls

    # code that builds its own default context trusts the CA through SSL_CERT_FILE
    assert server.ca_file is not None and server.ca_file.exists()
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
    with smtplib.SMTP_SSL(
        server.host, server.port, context=ssl.create_default_context(), timeout=5
    ) as client:
        client.noop()


# ---- size and line length ---------------------------------------------------


def test_one_megabyte_message_with_long_quoted_printable_lines(smtp_server: SMTPServer) -> None:
    # inlined CSS makes HTML lines far longer than 998: quoted-printable folds them
    row = '<td style="padding:0;font-family:Georgia,serif;color:#222">Café naïve</td>' * 400
    html = "<table>" + "\n".join(f"<tr>{row}</tr>" for _ in range(40)) + "</table>\n"
    assert len(html) > 1_000_000
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = FROM, "r@example.com", "Big"
    msg.set_content(html, subtype="html", cte="quoted-printable")
    raw = msg.as_bytes(policy=SMTP_POLICY)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78

    send_raw(smtp_server, raw)
    [got] = smtp_server.messages
    # compare outside assert: pytest's diff of two 1 MB strings would take minutes
    same_bytes = got.data == raw
    same_html = got.parsed().get_content().replace("\r\n", "\n") == html
    assert same_bytes and same_html


def test_lines_over_998_characters_are_refused(smtp_server: SMTPServer) -> None:
    raw = b"From: " + FROM.encode() + b"\r\nSubject: long\r\n\r\n" + b"x" * 2000 + b"\r\n"
    with pytest.raises(smtplib.SMTPDataError) as info:
        send_raw(smtp_server, raw)
    assert info.value.smtp_code == 500
    assert smtp_server.messages == []


def send_raw(server: SMTPServer, raw: bytes) -> None:
    with connect(server, timeout=30) as client:
        client.sendmail(FROM, ["r@example.com"], raw)


# ---- browser self-test ------------------------------------------------------

PAGE = b"""<!doctype html><meta charset="utf-8"><title>Self-test</title>
<button id="go" onclick="document.getElementById('out').textContent='clicked'">Go</button>
<p id="out">waiting</p>"""


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def tiny_site() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.browser
def test_browser_clicks_a_button(page: Page, tiny_site: str) -> None:
    page.goto(tiny_site)
    page.click("#go")
    assert page.text_content("#out") == "clicked"
    assert save_screenshot(page, "browser self-test").stat().st_size > 0
