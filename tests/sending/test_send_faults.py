"""Relay faults that must not wipe a list or hold a send for hours (issue 11).

Against the real aiosmtpd server of tests/support/smtpserver.py: a plain
`550 Rejected by content filter`, a run of `550 5.1.1` refusals (the circuit
breaker), and a server that takes the body and never answers.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from newsletter.mail.transport import MemoryTransport, Reply
from newsletter.models import DeliveryStatus, SubscriberStatus
from newsletter.sending.dispatch import ServerSilent
from newsletter.sending.options import SendOptions
from newsletter.sending.outcomes import BREAKER_FAILURES, RefusedNotRecipient, TooManyRefusals
from newsletter.sending.run import run_send
from tests.support.helpers import deliveries, many, with_subscribers
from tests.support.smtpserver import SMTPServer

pytestmark = pytest.mark.usefixtures("db_backend")


def _setup(tmp_path: Path, server: SMTPServer | None, emails: list[str], **env: str):  # type: ignore[no-untyped-def]
    if server is not None:
        env = {"NEWSLETTER_SMTP_URL": server.url, **env}
    settings, engine = with_subscribers(tmp_path, emails, **env)
    return settings, engine


def _statuses(engine, emails: list[str]) -> Counter[str]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT email, status FROM subscriber").all()
    return Counter(status for email, status in rows if email in emails)


@pytest.mark.parametrize("where", ["data", "rcpt"])
def test_a_plain_content_filter_550_stops_the_run_and_suppresses_nobody(
    tmp_path: Path,
    make_smtp_server,
    where: str,  # type: ignore[no-untyped-def]
) -> None:
    reply = "550 Rejected by content filter"
    if where == "data":
        server = make_smtp_server(data_reply=reply)
    else:
        server = make_smtp_server(rcpt_replies={"@": reply})
    emails = many(12)
    settings, engine = _setup(tmp_path, server, emails)
    result = run_send(engine, settings, SendOptions())
    assert isinstance(result.error, RefusedNotRecipient)
    assert "550 Rejected by content filter" in result.error.message
    assert _statuses(engine, emails) == {SubscriberStatus.ACTIVE: 12}
    assert set(deliveries(engine).values()) == {DeliveryStatus.PENDING}
    # the admin fixes it; the next run delivers everyone, once
    server.reset_behaviour()
    again = run_send(engine, settings, SendOptions())
    assert again.error is None
    assert sorted(server.recipients()) == sorted(emails)


def test_a_run_of_5_1_1_refusals_trips_the_breaker_and_suppresses_nobody(
    tmp_path: Path,
    make_smtp_server,  # type: ignore[no-untyped-def]
) -> None:
    server = make_smtp_server(rcpt_replies={"gone": "550 5.1.1 User unknown"})
    gone = [f"gone{n:02d}@example.org" for n in range(BREAKER_FAILURES + 5)]
    emails = [*gone, *many(4)]
    settings, engine = _setup(tmp_path, server, emails)
    result = run_send(engine, settings, SendOptions())
    assert isinstance(result.error, TooManyRefusals)
    assert "refused permanently" in result.error.message
    assert _statuses(engine, emails) == {SubscriberStatus.ACTIVE: len(emails)}
    states = deliveries(engine)
    assert DeliveryStatus.FAILED not in states.values()
    assert {states[e] for e in gone} == {DeliveryStatus.PENDING}
    assert result.issues[0].report.bounced == 0


def test_a_few_5_1_1_refusals_among_many_are_bounced(
    tmp_path: Path,
    make_smtp_server,  # type: ignore[no-untyped-def]
) -> None:
    server = make_smtp_server(rcpt_replies={"gone": "550 5.1.1 User unknown"})
    gone = [f"gone{n}@example.org" for n in range(3)]
    emails = [*many(12), *gone]
    settings, engine = _setup(tmp_path, server, emails)
    result = run_send(engine, settings, SendOptions())
    assert result.error is None and result.issues[0].report.bounced == 3
    assert _statuses(engine, gone) == {SubscriberStatus.BOUNCED: 3}
    assert sorted(server.recipients()) == sorted(many(12))


def test_the_breaker_settles_when_refusals_are_a_minority(tmp_path: Path) -> None:
    """In memory (one connection, in order): the 20th refusal comes with the 60th attempt."""
    emails = [f"s{n:03d}@example.org" for n in range(3 * BREAKER_FAILURES + 6)]
    dead = {e for n, e in enumerate(emails) if n % 3 == 2}

    def answer(mail_from: str, rcpt: str, data: bytes) -> Reply:
        return Reply(550, "5.1.1 User unknown", "rcpt") if rcpt in dead else Reply(250, "OK")

    transport = MemoryTransport(responder=answer)
    settings, engine = _setup(tmp_path, None, emails)
    result = run_send(engine, settings, SendOptions(), factory=lambda: transport)
    assert result.error is None
    assert result.issues[0].report.bounced == len(dead)
    assert _statuses(engine, sorted(dead)) == {SubscriberStatus.BOUNCED: len(dead)}
    assert len(transport.sent) == len(emails) - len(dead)


def test_a_server_that_never_answers_stops_after_two_unknown(
    tmp_path: Path,
    make_smtp_server,  # type: ignore[no-untyped-def]
) -> None:
    server = make_smtp_server(never_answer_data=True)
    emails = many(6)
    settings, engine = _setup(
        tmp_path,
        server,
        emails,
        NEWSLETTER_SMTP_TIMEOUT="1",
        NEWSLETTER_SMTP_DATA_TIMEOUT="1",
        NEWSLETTER_SMTP_CONNECTIONS="1",
    )
    assert settings.smtp_data_timeout == 1.0
    result = run_send(engine, settings, SendOptions())
    assert isinstance(result.error, ServerSilent)
    assert "never answered" in result.error.message
    states = Counter(deliveries(engine).values())
    assert states == {DeliveryStatus.UNKNOWN: 2, DeliveryStatus.PENDING: 4}
    assert len(server.messages) == 2  # the server has them: never sent again by itself
    assert _statuses(engine, emails) == {SubscriberStatus.ACTIVE: 6}
    server.reset_behaviour()
    again = run_send(engine, settings, SendOptions())
    assert again.error is None
    assert len(server.messages) == 6  # the 4 pending ones; the unknown ones are not resent
