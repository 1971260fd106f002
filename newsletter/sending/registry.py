"""A running `newsletter send` announces itself in `send_worker` and keeps a heartbeat.

The row says which issue the process works on and how many messages it sent,
so `newsletter status` can show who is sending and how fast. On PostgreSQL the
same beat renews the lease of the deliveries the process claimed or has in
flight (claims.renew): while it beats, nobody takes them over.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.models import SendWorker, utcnow
from newsletter.sending.claims import HEARTBEAT_SECONDS, LEASE, Claims, pid_space, renew

W = SendWorker.__table__


@contextmanager
def _writing(engine: Engine) -> Iterator[sa.Connection]:
    with engine.connect() as conn, conn.execution_options(sqlite_begin="IMMEDIATE").begin():
        yield conn


class WorkerRegistry:
    """`with WorkerRegistry(engine) as me:` registers, beats in a thread, deregisters."""

    def __init__(self, engine: Engine, *, interval: float = HEARTBEAT_SECONDS) -> None:
        self.engine = engine
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.pid_space = pid_space()
        # random per process: the host name and pid only make it readable
        self.id = f"{self.host}:{self.pid}:{secrets.token_hex(8)}"
        self.interval = interval
        self.claims: Claims | None = None
        self.issue_id: int | None = None
        self._sent_before = 0
        self._sent_now: Callable[[], int] = lambda: 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one beat at a time (thread and explicit calls)

    def working_on(self, issue_id: int, sent: Callable[[], int], claims: Claims | None) -> None:
        """Switch to an issue; `sent()` counts this issue's messages sent so far."""
        self._sent_before += self._sent_now()
        self.issue_id, self._sent_now, self.claims = issue_id, sent, claims
        self.beat()

    @property
    def sent(self) -> int:
        return self._sent_before + self._sent_now()

    def start(self) -> None:
        now = utcnow()
        with _writing(self.engine) as conn:
            # rows of runs that died long ago (claims.reap also removes them on PostgreSQL)
            conn.execute(sa.delete(W).where(W.c.heartbeat_at < now - LEASE))
            conn.execute(
                sa.insert(W).values(
                    id=self.id,
                    host=self.host,
                    pid=self.pid,
                    pid_space=self.pid_space,
                    sent=0,
                    started_at=now,
                    heartbeat_at=now,
                )
            )
        self._thread = threading.Thread(target=self._run, name="send-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        with self._lock:
            with _writing(self.engine) as conn:
                conn.execute(
                    sa.update(W)
                    .where(W.c.id == self.id)
                    .values(heartbeat_at=utcnow(), issue_id=self.issue_id, sent=self.sent)
                )
            if self.claims is not None:
                renew(self.engine, self.id, self.issue_id, self.claims.held_ids())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a missed beat is retried; the lease is long
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with _writing(self.engine) as conn:
            conn.execute(sa.delete(W).where(W.c.id == self.id))

    def __enter__(self) -> WorkerRegistry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
