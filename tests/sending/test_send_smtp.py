"""`newsletter send` against a real SMTP server on localhost, faults included."""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from newsletter.config import Settings
from newsletter.errors import SenderRejected, TransportError
from newsletter.mail.transport import SMTPTransport
from newsletter.models import DeliveryStatus, SubscriberStatus
from newsletter.sending.options import SendOptions
from newsletter.sending.run import run_send
from tests.support.helpers import deliveries, many, subscriber_status, with_subscribers
from tests.support.smtpserver import SMTPServer

pytestmark = pytest.mark.usefixtures("db_backend")


def _told(result) -> str:  # type: ignore[no-untyped-def]
    """Everything the run tells the user: its notes and why no new issue was made."""
    return " ".join([*result.notes, getattr(result, "nothing_new", None) or ""])


def _setup(
    tmp_path: Path, server: SMTPServer, emails: list[str], **env: str
) -> tuple[Settings, Engine]:
    return with_subscribers(tmp_path, emails, NEWSLETTER_SMTP_URL=server.url, **env)


def _run(engine, settings, **options):  # type: ignore[no-untyped-def]
    return run_send(engine, settings, SendOptions(**options))


def test_every_subscriber_gets_one_well_formed_message(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    emails = [*many(6), "siobhan@example.ie"]
    settings, engine = _setup(tmp_path, smtp_server, emails)
    result = _run(engine, settings)
    assert result.error is None and result.issues[0].report.sent == 7
    assert sorted(smtp_server.recipients()) == sorted(emails)
    ids = set()
    for received in smtp_server.messages:
        assert received.mail_from == "news@endseclusion.org"
        assert all(len(line) <= 998 for line in received.data.split(b"\r\n"))
        assert b"\n" not in received.data.replace(b"\r\n", b"")  # no bare LF
        msg = received.parsed()
        assert isinstance(msg, EmailMessage)
        assert msg.get_content_type() == "multipart/alternative"
        parts = [p.get_content_type() for p in msg.iter_parts()]
        assert parts == ["text/plain", "text/html"]  # text first, HTML last
        assert msg["To"] == received.rcpt_tos[0]
        assert msg["Date"]
        assert re.fullmatch(r"<[^@>]+@endseclusion\.org>", msg["Message-ID"])
        ids.add(msg["Message-ID"])
        unsubscribe = msg["List-Unsubscribe"]
        assert re.fullmatch(
            r"<https://news\.endseclusion\.org/unsubscribe/[\w-]{22,}>", unsubscribe
        )
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["List-Id"] and msg["Precedence"] == "bulk"
        url = unsubscribe[1:-1]
        token = url.rsplit("/", 1)[1]
        assert received.rcpt_tos[0].split("@")[0] not in token
        html = msg.get_body(("html",)).get_content()
        text = msg.get_body(("plain",)).get_content()
        assert url in html and url in text  # visible unsubscribe link in both parts
        assert "PO Box 1234" in html and "PO Box 1234" in text
        assert "%%" not in html and "%%" not in text
    assert len(ids) == 7  # a Message-ID per recipient


def test_second_run_sends_nothing(tmp_path: Path, smtp_server: SMTPServer) -> None:
    settings, engine = _setup(tmp_path, smtp_server, many(3))
    _run(engine, settings)
    smtp_server.clear()
    result = _run(engine, settings)
    assert "no new stories" in _told(result)
    assert smtp_server.messages == []


def test_non_ascii_subject_is_rfc2047_encoded(tmp_path: Path, smtp_server: SMTPServer) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_text(
        """<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>
        <title>AASR</title><link>https://endseclusion.org</link>
        <item><title>Siobhán’s “win” — ✊ in Zürich\r\nBcc: victim@example.com</title>
        <link>https://endseclusion.org/a/</link><guid>a1</guid>
        <description>Body</description></item></channel></rss>""",
        encoding="utf-8",
    )
    settings, engine = _setup(tmp_path, smtp_server, ["x@example.org"])
    assert _run(engine, settings).error is None
    received = smtp_server.messages[0]
    raw_headers = received.data.split(b"\r\n\r\n", 1)[0]
    assert raw_headers.isascii()
    assert b"=?utf-8?" in raw_headers.lower()
    assert b"\r\nBcc:" not in raw_headers
    assert received.rcpt_tos == ["x@example.org"]
    subject = received.parsed()["Subject"]
    assert subject.startswith("Siobhán’s “win” — ✊ in Zürich")
    assert "\n" not in subject and "\r" not in subject


def test_hard_bounce_suppresses_and_others_still_get_it(tmp_path: Path, make_smtp_server) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(rcpt_replies={"gone@": "550 5.1.1 User unknown"})
    settings, engine = _setup(tmp_path, server, ["gone@example.org", *many(3)])
    result = _run(engine, settings)
    assert result.error is None
    assert result.issues[0].report.bounced == 1 and result.issues[0].report.sent == 3
    assert deliveries(engine)["gone@example.org"] == DeliveryStatus.FAILED
    assert subscriber_status(engine, "gone@example.org") == SubscriberStatus.BOUNCED


def test_greylisting_defers_then_the_next_run_delivers(tmp_path: Path, make_smtp_server) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(rcpt_replies={"grey@": "451 4.7.1 Greylisted, try later"})
    settings, engine = _setup(tmp_path, server, ["grey@example.org", *many(2)])
    result = _run(engine, settings)
    assert result.error is None and not result.issues[0].finished
    assert deliveries(engine)["grey@example.org"] == DeliveryStatus.DEFERRED
    assert subscriber_status(engine, "grey@example.org") == SubscriberStatus.ACTIVE
    server.reset_behaviour()
    server.clear()
    with engine.begin() as conn:  # the retry time has come
        conn.exec_driver_sql("UPDATE delivery SET next_attempt_at = NULL")
    again = _run(engine, settings)
    assert server.recipients() == ["grey@example.org"]
    assert again.issues[0].resumed and again.issues[0].finished


def test_in_run_retry_after_a_short_wait(tmp_path: Path, make_smtp_server) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(rcpt_replies={"grey@": "452 4.2.2 Try later"})
    settings, engine = _setup(
        tmp_path, server, ["grey@example.org"], NEWSLETTER_RETRY_DELAYS="0.2,0.2"
    )
    result = _run(engine, settings)
    report = result.issues[0].report
    assert report.deferred == 3  # the first try and two in-run retries
    assert deliveries(engine)["grey@example.org"] == DeliveryStatus.DEFERRED


def test_sender_rejected_stops_and_suppresses_nobody(tmp_path: Path, make_smtp_server) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(data_reply="554 5.7.1 Sender not authorised")
    settings, engine = _setup(tmp_path, server, many(5))
    result = _run(engine, settings)
    assert isinstance(result.error, SenderRejected)
    assert set(deliveries(engine).values()) == {DeliveryStatus.PENDING}
    assert all(subscriber_status(engine, e) == SubscriberStatus.ACTIVE for e in many(5))
    server.reset_behaviour()
    again = _run(engine, settings)
    assert again.error is None and again.issues[0].report.sent == 5


def test_drop_after_body_is_unknown_and_not_resent(tmp_path: Path, make_smtp_server) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(drop_after_body_rcpts=("maybe@",))
    settings, engine = _setup(tmp_path, server, ["maybe@example.org", *many(3)])
    result = _run(engine, settings)
    assert result.error is None
    assert result.issues[0].report.unknown == 1 and result.issues[0].report.sent == 3
    assert deliveries(engine)["maybe@example.org"] == DeliveryStatus.UNKNOWN
    server.reset_behaviour()
    server.clear()
    _run(engine, settings)
    assert server.messages == []
    _run(engine, settings, retry_unknown=True)
    assert server.recipients() == ["maybe@example.org"]


def test_421_mid_send_reconnects_and_delivers_exactly_once(
    tmp_path: Path, make_smtp_server
) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(fail_421_on=3)
    settings, engine = _setup(tmp_path, server, many(6), NEWSLETTER_SMTP_CONNECTIONS="1")
    result = _run(engine, settings)
    assert result.error is None and result.issues[0].report.sent == 6
    accepted = [m for m in server.messages if not m.dropped]
    assert sorted(r for m in accepted for r in m.rcpt_tos) == many(6)
    assert server.connections_opened >= 2


def test_server_down_is_one_error_and_deliveries_stay_pending(tmp_path: Path) -> None:
    probe = SMTPServer().start()
    url = probe.url
    probe.stop()  # nothing listens there any more
    settings, engine = with_subscribers(tmp_path, many(3), NEWSLETTER_SMTP_URL=url)
    result = _run(engine, settings)
    assert isinstance(result.error, TransportError)
    assert "refused" in result.error.message
    assert set(deliveries(engine).values()) == {DeliveryStatus.PENDING}


def test_auth_over_starttls(tmp_path: Path, make_smtp_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(tls="starttls", auth=("news", "s3cret pass"), auth_required=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
    settings, engine = _setup(tmp_path, server, many(2))
    result = _run(engine, settings)
    assert result.error is None
    assert all(m.tls and m.auth_user == "news" for m in server.messages)


def test_implicit_tls(tmp_path: Path, make_smtp_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(tls="implicit")
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
    settings, engine = _setup(tmp_path, server, many(2))
    assert _run(engine, settings).error is None
    assert len(server.messages) == 2


def test_wrong_password_is_a_clear_error(tmp_path: Path, make_smtp_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(tls="starttls", auth=("news", "right"), auth_required=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
    url = server.url.replace(":right@", ":wrong@")
    settings, engine = with_subscribers(tmp_path, many(2), NEWSLETTER_SMTP_URL=url)
    result = _run(engine, settings)
    assert isinstance(result.error, TransportError)
    assert "refused the login" in result.error.message
    assert "wrong" not in result.error.message  # never print the password


def test_slow_final_reply_times_out_as_unknown(make_smtp_server) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(data_delay=2.0)
    from newsletter.mail.transport import ConnectionLost
    from newsletter.settingvalues import parse_smtp_url

    transport = SMTPTransport(parse_smtp_url(server.url), timeout=0.5, final_reply_timeout=0.5)
    with pytest.raises(ConnectionLost) as lost:
        transport.send("a@example.org", "b@example.org", b"Subject: x\r\n\r\nbody\r\n")
    assert lost.value.after_body


def test_dot_stuffing_keeps_lines_that_start_with_a_dot(smtp_server: SMTPServer) -> None:
    from newsletter.settingvalues import parse_smtp_url

    with SMTPTransport(parse_smtp_url(smtp_server.url)) as transport:
        reply = transport.send(
            "a@example.org", "b@example.org", b"Subject: x\r\n\r\n.\r\n..two\r\nend\r\n"
        )
    assert reply.ok
    assert smtp_server.messages[0].data.endswith(b"\r\n.\r\n..two\r\nend\r\n")


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_both_envelope_styles_handle_refusals(tmp_path: Path, make_smtp_server, pipelining) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(
        pipelining=pipelining,
        rcpt_replies={"gone@": "550 5.1.1 User unknown", "grey@": "450 4.2.0 Busy"},
    )
    settings, engine = _setup(tmp_path, server, ["gone@example.org", "grey@example.org", *many(3)])
    result = _run(engine, settings)
    report = result.issues[0].report
    assert (report.sent, report.bounced, report.deferred) == (3, 1, 1)
    assert sorted(server.recipients()) == many(3)
    assert all(not m.dropped for m in server.messages)


def test_retry_failed_resends_only_the_failed_on_purpose(tmp_path: Path, make_smtp_server) -> None:  # type: ignore[no-untyped-def]
    server = make_smtp_server(rcpt_replies={"odd@": "554 5.6.0 Message content rejected"})
    settings, engine = _setup(tmp_path, server, ["odd@example.org", *many(2)])
    result = _run(engine, settings)
    assert result.issues[0].report.failed == 1
    assert deliveries(engine)["odd@example.org"] == DeliveryStatus.FAILED
    assert subscriber_status(engine, "odd@example.org") == SubscriberStatus.ACTIVE  # not a bounce
    server.reset_behaviour()
    server.clear()
    assert not _run(engine, settings).issues  # failed is final unless asked
    again = _run(engine, settings, retry_failed=True)
    assert server.recipients() == ["odd@example.org"]
    assert again.issues[0].finished
