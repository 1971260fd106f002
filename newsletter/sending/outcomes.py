"""What an SMTP reply means for one delivery (pure; no I/O).

The rules of the trade: 2xx sent; 4xx and 552 try again later; 421 the
server is closing (reconnect). A permanent refusal suppresses the subscriber
only when it names the *recipient*: an enhanced code 5.1.x (but 5.1.7/5.1.8,
which are about the sender) or 5.2.1, or, with no enhanced code, words such
as "user unknown". Everything else that is permanent and not clearly about the
recipient (5.7.x, a refused MAIL FROM, a 5xx without an enhanced code naming the
content, a policy, spam, the sender, or nothing at all) is the *sender's*
problem: stop the run, suppress nobody. A relay that answers
"550 Rejected by content filter" must never wipe a list.

The circuit breaker (`Breaker`) is the second line: when permanent failures
dominate the start of a run, the run stops and nobody is suppressed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from newsletter.errors import SenderRejected
from newsletter.mail.transport import Reply

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")

#: Without an enhanced code, a 5xx suppresses only when its text names the recipient...
RECIPIENT_WORDS = re.compile(
    r"user\s+unknown|unknown\s+user|no\s+such\s+(user|mailbox|recipient|account|address)"
    r"|mailbox\s+(unavailable|not\s+found|does\s+not\s+exist|is\s+disabled|disabled)"
    r"|unknown\s+(recipient|mailbox|address)|recipient\s+(unknown|rejected|not\s+found)"
    r"|recipient\s+address\s+rejected|invalid\s+(recipient|mailbox)|user\s+not\s+found"
    r"|address\s+(unknown|does\s+not\s+exist)|account\s+(does\s+not\s+exist|disabled)"
    r"|not\s+a\s+valid\s+(mailbox|recipient)|no\s+mailbox\s+here",
    re.IGNORECASE,
)
#: ...and never when it also names the content, a policy, spam or the sender.
SENDER_WORDS = re.compile(
    r"content|polic|spam|junk|virus|malware|phish|block|black\s*list|deny\s*list|reputation"
    r"|sender|from\s+address|relay|authenticat|\bauth\b|dmarc|\bspf\b|dkim|rate\s+limit"
    r"|too\s+many|abuse|filter|\brbl\b|dnsbl",
    re.IGNORECASE,
)


class Outcome(Enum):
    SENT = "sent"
    DEFER = "defer"  # temporary: retry later
    BOUNCE = "bounce"  # permanent, the address is dead: fail and suppress
    FAIL = "fail"  # permanent for this message, address kept
    SENDER = "sender"  # the sender's setup or content is refused: stop everything
    RECONNECT = "reconnect"  # 421: the server closes; not an attempt

    @property
    def permanent(self) -> bool:
        """A permanent refusal of one message (what the circuit breaker counts)."""
        return self in (Outcome.BOUNCE, Outcome.FAIL)


def enhanced_code(text: str) -> tuple[int, int, int] | None:
    """The RFC 3463 enhanced status code at the start of a reply text, if any."""
    match = _ENHANCED.match(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def names_recipient(text: str) -> bool:
    """Whether a reply text without an enhanced code is clearly about the recipient."""
    return bool(RECIPIENT_WORDS.search(text)) and not SENDER_WORDS.search(text)


def classify(reply: Reply) -> Outcome:
    code = reply.code
    if 200 <= code < 300:
        return Outcome.SENT
    if code == 421:
        return Outcome.RECONNECT
    enhanced = enhanced_code(reply.text)
    if code in (530, 535, 538):  # authentication required / failed
        return Outcome.SENDER
    if enhanced and enhanced[0] == 5 and enhanced[1] == 7:
        return Outcome.SENDER
    if 400 <= code < 500 or code == 552:
        return Outcome.DEFER
    if enhanced and enhanced[0] == 4:
        return Outcome.DEFER
    if reply.stage == "mail":  # MAIL FROM refused for good: never about a recipient
        return Outcome.SENDER
    if enhanced is None:
        return Outcome.BOUNCE if names_recipient(reply.text) else Outcome.SENDER
    if enhanced[1] == 1:
        # X.1.7 bad sender's mailbox syntax, X.1.8 bad sender's system address
        return Outcome.SENDER if enhanced[2] in (7, 8) else Outcome.BOUNCE
    if enhanced[1:] == (2, 1):  # mailbox disabled
        return Outcome.BOUNCE
    return Outcome.FAIL


class RefusedNotRecipient(SenderRejected):
    """A permanent refusal that does not name the recipient: the sender's problem."""

    hint = (
        "Nobody was suppressed; that message and the unsent ones stay pending. Ask your SMTP "
        "provider why (content, policy, the sender's setup), then run `newsletter send` again."
    )


class TooManyRefusals(SenderRejected):
    """The circuit breaker tripped."""

    hint = (
        "So many refusals point at the sender or the server, not the list: nobody was "
        "suppressed and those deliveries are pending again. Check the refusals with your "
        "SMTP provider, then run `newsletter send` again."
    )


def sender_error(reply: Reply) -> SenderRejected:
    """Why the run stops on `reply`, an Outcome.SENDER refusal."""
    enhanced = enhanced_code(reply.text)
    if reply.code in (530, 535, 538) or (enhanced and enhanced[1] == 7):
        return SenderRejected(f"the SMTP server refused the sender: {reply}")
    return RefusedNotRecipient(
        f"the SMTP server refused a message without naming its recipient as unknown: {reply}"
    )


#: The circuit breaker, defined once: when the first BREAKER_FAILURES permanent failures
#: of a run exceed BREAKER_SHARE of the attempts so far, the run stops, nobody suppressed.
BREAKER_FAILURES = 20
BREAKER_SHARE = 0.5


@dataclass
class Breaker:
    """Counts one run's attempts and permanent failures; says when to stop.

    Until BREAKER_FAILURES permanent failures have been seen the verdict is
    open (`undecided`): the sender holds those failures back (no subscriber is
    suppressed yet) so that a trip can put every one of them back to pending.
    """

    attempts: int = 0
    permanent: int = 0
    settled: bool = False  # the first BREAKER_FAILURES failures came and did not trip it

    def record(self, *, permanent: bool) -> bool:
        """Count one answered attempt; True when the breaker trips on it."""
        self.attempts += 1
        if not permanent:
            return False
        self.permanent += 1
        if self.settled or self.permanent < BREAKER_FAILURES:
            return False
        if self.permanent > self.attempts * BREAKER_SHARE:
            return True
        self.settled = True
        return False

    @property
    def undecided(self) -> bool:
        """Permanent failures must still be held back (the breaker may yet trip)."""
        return not self.settled

    def error(self, last: Reply) -> TooManyRefusals:
        """The one line for the admin when the breaker trips."""
        return TooManyRefusals(
            f"sending stopped: {self.permanent} of the first {self.attempts} messages were "
            f"refused permanently (the last: {last})"
        )
