"""The units a send hands around: a Recipient to attempt, and what Finished with it.

Both cross module lines (queue and claims produce recipients, dispatch turns
them into Finished, ledger writes those down), so they live here, below all
of them.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Finished.status besides a DeliveryStatus: not attempted after all, back to pending.
REQUEUE = "requeue"
#: Finished.status besides a DeliveryStatus: failed, and the subscriber is suppressed.
BOUNCE = "bounce"


@dataclass(frozen=True)
class Recipient:
    """One due delivery and the subscriber it goes to (a row of queue or claims)."""

    delivery_id: int
    subscriber_id: int
    email: str
    name: str | None
    token: str
    attempts: int


@dataclass
class Finished:
    """What to record for one recipient: a DeliveryStatus, BOUNCE or REQUEUE."""

    recipient: Recipient
    status: str
    error: str | None = None
    retry_in: float | None = None  # DEFERRED: seconds until it is due again
