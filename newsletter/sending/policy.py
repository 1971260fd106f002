"""The knobs of one send (connections, pace, retries), read from Settings once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from newsletter.config import Settings

#: Messages handed to one SMTP connection at a time, all marked `sending` in one commit
#: and recorded in one commit after.
BATCH = 8
#: Batches queued per connection: it sends one while the parent commits the next.
AHEAD = 2
#: The most deliveries a killed send leaves `sending` (then `unknown`) per SMTP
#: connection (docs/architecture.md, "Failure model").
IN_FLIGHT_PER_CONNECTION = AHEAD * BATCH


@dataclass
class Policy:
    """Retry and pacing knobs (from Settings)."""

    connections: int = 4
    rate: float | None = None  # messages per second over all connections
    max_per_connection: int = 1000
    retry_delays: tuple[float, ...] = (5.0, 30.0)
    max_age: timedelta = timedelta(hours=72)
    batch: int = BATCH  # messages per connection per commit; 1 under a rate limit


def policy_from(settings: Settings) -> Policy:
    """This run's policy: NEWSLETTER_SMTP_CONNECTIONS connections over SMTP (the outbox
    takes one writer), the send rate, the retry delays and how long to keep retrying."""
    return Policy(
        connections=settings.smtp_connections if settings.smtp else 1,
        rate=settings.send_rate,
        retry_delays=settings.retry_delays,
        max_age=timedelta(hours=settings.retry_max_age_hours),
        batch=1 if settings.send_rate else BATCH,  # the limiter paces single messages
    )
