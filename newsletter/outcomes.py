"""What an SMTP reply means for one delivery (pure; no I/O).

The rules of the trade: 2xx sent; 4xx and 552 try again later; 5.1.x and
5.2.1 the address is dead (bounce, suppress); 5.7.x the *sender* is wrong
(stop the run, suppress nobody); 421 the server is closing (reconnect).
"""

from __future__ import annotations

import re
from enum import Enum

from newsletter.transport import Reply

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


class Outcome(Enum):
    SENT = "sent"
    DEFER = "defer"  # temporary: retry later
    BOUNCE = "bounce"  # permanent, the address is dead: fail and suppress
    FAIL = "fail"  # permanent for this message, address kept
    SENDER = "sender"  # the sender's setup is refused: stop everything
    RECONNECT = "reconnect"  # 421: the server closes; not an attempt


def enhanced_code(text: str) -> tuple[int, int, int] | None:
    """The RFC 3463 enhanced status code at the start of a reply text, if any."""
    match = _ENHANCED.match(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def classify(reply: Reply) -> Outcome:
    code = reply.code
    if 200 <= code < 300:
        return Outcome.SENT
    if code == 421:
        return Outcome.RECONNECT
    enhanced = enhanced_code(reply.text)
    if enhanced and enhanced[0] == 5 and enhanced[1] == 7:
        return Outcome.SENDER
    if code in (530, 535, 538):  # authentication required / failed
        return Outcome.SENDER
    if 400 <= code < 500 or code == 552:
        return Outcome.DEFER
    if enhanced and enhanced[0] == 4:
        return Outcome.DEFER
    if enhanced and (enhanced[1] == 1 or enhanced[1:] == (2, 1)):
        return Outcome.BOUNCE
    if enhanced is None and code in (550, 551, 553):
        return Outcome.BOUNCE
    return Outcome.FAIL
