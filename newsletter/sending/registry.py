"""A worker (one running `newsletter send`) announces itself in `send_worker` and beats.

The row says which issue the process works on and how many messages it sent,
so `newsletter status` can show who is sending and how fast. On PostgreSQL the
same beat renews the lease of the deliveries the worker claimed or has in
flight (claims.renew): while it beats, nobody takes them over. The beat and
the lease follow the one rule of lease.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.db import write_transaction
from newsletter.models import SendWorker, table_of, utcnow
from newsletter.sending.claims import Claims, renew
from newsletter.sending.lease import HEARTBEAT, LEASE, Heartbeat, Holder

W = table_of(SendWorker)


class WorkerRegistry:
    """`with WorkerRegistry(engine) as me:` registers, beats in a thread, deregisters."""

    def __init__(
        self, engine: Engine, *, interval: float = HEARTBEAT, holder: Holder | None = None
    ) -> None:
        self.engine = engine
        self.me = holder or Holder.this_process()
        self.issue_id: int | None = None
        self._claims: Claims | None = None
        self._sent_before = 0
        self._sent_now: Callable[[], int] = lambda: 0
        self._stop = threading.Event()  # set: stop beating (stop() sets it too)
        self._heartbeat = Heartbeat(
            self.beat, name="send-heartbeat", interval=interval, stopped=self._stop
        )
        self._lock = threading.Lock()  # one beat at a time (thread and explicit calls)

    def working_on(self, issue_id: int, sent: Callable[[], int], claims: Claims | None) -> None:
        """Switch to an issue; `sent()` counts this issue's messages sent so far, `claims`
        (a shared send) are what this worker holds of it, renewed with every beat."""
        self._sent_before += self._sent_now()
        self.issue_id, self._sent_now, self._claims = issue_id, sent, claims
        self.beat()

    @property
    def sent(self) -> int:
        return self._sent_before + self._sent_now()

    def start(self) -> None:
        now = utcnow()
        with write_transaction(self.engine) as conn:
            # rows of runs that died long ago (claims.reap also removes them on PostgreSQL)
            conn.execute(sa.delete(W).where(W.c.heartbeat_at < now - LEASE))
            conn.execute(
                sa.insert(W).values(
                    id=self.me.id,
                    host=self.me.host,
                    pid=self.me.pid,
                    pid_space=self.me.pid_space,
                    sent=0,
                    started_at=now,
                    heartbeat_at=now,
                )
            )
        self._heartbeat.start()

    def beat(self) -> None:
        """Say this worker is alive, on what and how far; renew the lease of its claims."""
        with self._lock:
            with write_transaction(self.engine) as conn:
                conn.execute(
                    sa.update(W)
                    .where(W.c.id == self.me.id)
                    .values(heartbeat_at=utcnow(), issue_id=self.issue_id, sent=self.sent)
                )
            if self._claims is not None:
                renew(self.engine, self.me.id, self.issue_id, self._claims.held_ids())

    def stop(self) -> None:
        self._heartbeat.stop(timeout=10)
        with write_transaction(self.engine) as conn:
            conn.execute(sa.delete(W).where(W.c.id == self.me.id))

    def __enter__(self) -> WorkerRegistry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
