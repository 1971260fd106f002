"""The classification table of SMTP replies and the circuit breaker (pure, no I/O).

A permanent refusal suppresses a subscriber only when it names the recipient;
anything else that is permanent stops the run and suppresses nobody.
"""

from __future__ import annotations

import pytest

from newsletter.errors import SenderRejected
from newsletter.mail.transport import Reply
from newsletter.sending.outcomes import (
    BREAKER_FAILURES,
    Breaker,
    Outcome,
    RefusedNotRecipient,
    TooManyRefusals,
    classify,
    sender_error,
)

TABLE: list[tuple[int, str, str, Outcome]] = [
    # (code, text, stage, outcome)
    (250, "2.0.0 OK: queued", "body", Outcome.SENT),
    (251, "User not local; will forward", "rcpt", Outcome.SENT),
    (421, "4.7.0 Try again later", "body", Outcome.RECONNECT),
    (450, "4.2.0 Mailbox busy", "rcpt", Outcome.DEFER),
    (451, "4.7.1 Greylisted", "rcpt", Outcome.DEFER),
    (452, "Insufficient system storage", "body", Outcome.DEFER),
    (552, "5.2.2 Mailbox full", "body", Outcome.DEFER),
    # the recipient, by enhanced code
    (550, "5.1.1 User unknown", "rcpt", Outcome.BOUNCE),
    (550, "5.1.1 <gone@example.org>: Recipient address rejected", "rcpt", Outcome.BOUNCE),
    (553, "5.1.3 Bad destination mailbox address syntax", "rcpt", Outcome.BOUNCE),
    (550, "5.1.10 Recipient address rejected: access denied", "rcpt", Outcome.BOUNCE),
    (550, "5.2.1 Mailbox disabled", "rcpt", Outcome.BOUNCE),
    (550, "5.1.1 User unknown", "body", Outcome.BOUNCE),  # checked after DATA: still them
    # the recipient, without an enhanced code: named in words
    (550, "User unknown", "rcpt", Outcome.BOUNCE),
    (550, "No such user here", "rcpt", Outcome.BOUNCE),
    (550, "Requested action not taken: mailbox unavailable", "rcpt", Outcome.BOUNCE),
    (550, "Unknown recipient", "rcpt", Outcome.BOUNCE),
    (554, "Recipient rejected", "rcpt", Outcome.BOUNCE),
    (550, "<gone@example.org>: Recipient address rejected: User unknown", "rcpt", Outcome.BOUNCE),
    (551, "User not local; please try <x@example.net>... no such user", "rcpt", Outcome.BOUNCE),
    # without an enhanced code and not clearly about the recipient: the sender's problem
    (550, "Rejected by content filter", "body", Outcome.SENDER),
    (550, "Rejected by content filter", "rcpt", Outcome.SENDER),
    (554, "Message rejected as spam", "body", Outcome.SENDER),
    (554, "Transaction failed: policy violation", "body", Outcome.SENDER),
    (550, "Sender address rejected", "rcpt", Outcome.SENDER),
    (550, "Relaying denied", "rcpt", Outcome.SENDER),
    (550, "Rejected", "rcpt", Outcome.SENDER),
    (554, "", "body", Outcome.SENDER),
    (500, "Line too long", "body", Outcome.SENDER),
    (553, "Mailbox name not allowed", "rcpt", Outcome.SENDER),
    # names the recipient AND the content/spam/sender: never suppress on that
    (550, "Mailbox unavailable: blocked by spam policy", "rcpt", Outcome.SENDER),
    (550, "User unknown or sender blocked", "rcpt", Outcome.SENDER),
    # the sender, by enhanced code or by stage
    (554, "5.7.1 Message rejected as spam", "body", Outcome.SENDER),
    (550, "5.7.1 Relaying denied", "rcpt", Outcome.SENDER),
    (535, "5.7.8 Authentication credentials invalid", "mail", Outcome.SENDER),
    (530, "Authentication required", "mail", Outcome.SENDER),
    (553, "5.1.7 Bad sender's mailbox address syntax", "mail", Outcome.SENDER),
    (550, "5.1.8 Bad sender's system address", "rcpt", Outcome.SENDER),
    (550, "5.1.1 User unknown", "mail", Outcome.SENDER),  # a MAIL FROM refusal is ours
    (550, "User unknown", "mail", Outcome.SENDER),
    # permanent for this one message, address kept
    (554, "5.6.0 Message content rejected", "rcpt", Outcome.FAIL),
    (552, "5.3.4 Message too big for system", "body", Outcome.DEFER),  # 552 is temporary
    (554, "5.3.4 Message too big for system", "body", Outcome.FAIL),
]


@pytest.mark.parametrize(("code", "text", "stage", "expected"), TABLE)
def test_classification_table(code: int, text: str, stage: str, expected: Outcome) -> None:
    assert classify(Reply(code, text, stage)) is expected


@pytest.mark.parametrize(("code", "text", "stage", "expected"), TABLE)
def test_only_recipient_replies_suppress(
    code: int, text: str, stage: str, expected: Outcome
) -> None:
    """Only a bounce suppresses; a bounce always names the recipient (5.1.x, 5.2.1, words)."""
    if classify(Reply(code, text, stage)) is Outcome.BOUNCE:
        lowered = text.lower()
        assert text.startswith(("5.1.", "5.2.1")) or any(
            words in lowered for words in ("user", "mailbox", "recipient", "no such")
        )


def test_the_stop_message_says_what_happened() -> None:
    content = sender_error(Reply(550, "Rejected by content filter", "body"))
    assert isinstance(content, RefusedNotRecipient) and isinstance(content, SenderRejected)
    assert "550 Rejected by content filter" in content.message
    assert "suppressed" in (content.hint or "")
    auth = sender_error(Reply(535, "5.7.8 Authentication credentials invalid", "mail"))
    assert type(auth) is SenderRejected


def _feed(breaker: Breaker, outcomes: list[bool]) -> list[bool]:
    return [breaker.record(permanent=p) for p in outcomes]


def test_breaker_trips_when_the_first_failures_exceed_half_the_attempts() -> None:
    breaker = Breaker()
    trips = _feed(breaker, [True] * (BREAKER_FAILURES - 1))
    assert not any(trips) and breaker.undecided  # too few to judge: held, not tripped
    assert breaker.record(permanent=True)  # the 20th of 20 attempts
    error = breaker.error(Reply(550, "5.1.1 User unknown", "rcpt"))
    assert isinstance(error, TooManyRefusals)
    assert f"{BREAKER_FAILURES} of the first {BREAKER_FAILURES}" in error.message


def test_breaker_settles_when_failures_are_a_minority() -> None:
    breaker = Breaker()
    # the 20th failure comes with the 60th attempt: 20 is not more than 30
    trips = _feed(breaker, [False, False, True] * BREAKER_FAILURES)
    assert breaker.permanent == BREAKER_FAILURES
    assert not any(trips) and not breaker.undecided
    # once settled, later failures never trip it (it is defined on the first 20 only)
    assert not any(_feed(breaker, [True] * 100))


def test_breaker_exactly_half_does_not_trip() -> None:
    breaker = Breaker()
    assert not any(_feed(breaker, [False, True] * BREAKER_FAILURES))
    assert not breaker.undecided
