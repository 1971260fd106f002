"""NEWSLETTER_SEND_RATE: the two rate limiters, one per process and one shared in the database.

`RateLimiter` spaces the messages of this process evenly across all its
connections. `SharedRateLimiter` spaces those of every worker of a shared send
(PostgreSQL): each worker reserves its next send slots with one atomic upsert
on the `rate_budget` row (`next_slot_at` moves forward by the slots taken), so
the slots of all workers, on every host, are disjoint and evenly spaced:
together they never exceed the rate. Times come from the database server's
clock, so hosts whose clocks disagree still share one timeline. A worker
reserves a small block (about 0.1 s of the rate) per round trip; slots a
worker does not use are lost, which can only make the send slower, never
faster.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import timedelta
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

BUDGET_NAME = "send"


class Limiter(Protocol):
    """`wait()` returns when the next message may be handed to a connection."""

    def wait(self) -> None: ...


class RateLimiter:
    """Spaces this process's messages evenly across all its connections."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


_RESERVE = sa.text(
    """
    INSERT INTO rate_budget AS b (name, next_slot_at)
    VALUES (:name, clock_timestamp() + :span)
    ON CONFLICT (name) DO UPDATE
        SET next_slot_at = GREATEST(b.next_slot_at, clock_timestamp()) + :span
    RETURNING EXTRACT(EPOCH FROM (b.next_slot_at - :span - clock_timestamp()))
    """
)


class SharedRateLimiter:
    """`wait()` returns when this worker may hand over its next message (PostgreSQL)."""

    def __init__(self, engine: Engine, rate: float, *, name: str = BUDGET_NAME) -> None:
        self.engine = engine
        self.name = name
        self.interval = 1.0 / rate
        self.block = max(1, int(rate * 0.1))
        self._slots: deque[float] = deque()  # time.monotonic() values
        self._lock = threading.Lock()

    def reserve(self, count: int) -> float:
        """Take `count` slots; returns seconds from now until the first one."""
        span = timedelta(seconds=self.interval * count)
        with self.engine.begin() as conn:
            delay = conn.execute(_RESERVE, {"name": self.name, "span": span}).scalar_one()
        return float(delay)

    def wait(self) -> None:
        with self._lock:
            if not self._slots:
                start = time.monotonic() + max(0.0, self.reserve(self.block))
                self._slots.extend(start + i * self.interval for i in range(self.block))
            slot = self._slots.popleft()
        pause = slot - time.monotonic()
        if pause > 0:
            time.sleep(pause)
