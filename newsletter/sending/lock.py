"""One `newsletter send` at a time per database (SQLite): a lock row with a heartbeat.

A second run (cron overlap, a second terminal) is told another send is in
progress. A lock left by a crashed run is taken over by the one rule of
lease.py: at once when its process is gone from our pid space (same boot,
same pid namespace; a host name alone can be shared), or once its heartbeat
is older than the lease.

On PostgreSQL several sends share an issue instead (claims.py); only the
making of an issue is serialised, with `creation_lock`: a session-level
advisory lock, released by the server itself if the process dies.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.db import write_session
from newsletter.errors import SendInProgress
from newsletter.models import SendLock, utcnow
from newsletter.sending.lease import Heartbeat, Holder, is_dead

LOCK_NAME = "send"

#: pg_advisory_lock key for "making an issue" (any constant shared by all workers).
CREATION_LOCK_KEY = 0x6E6C_6973  # "nlis"


@contextmanager
def creation_lock(engine: Engine) -> Iterator[None]:
    """Wait until no other worker is making an issue, and hold that turn (PostgreSQL)."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": CREATION_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": CREATION_LOCK_KEY})
            conn.commit()


class SendLockHolder:
    """Acquire with `acquire()`, keep alive with a heartbeat thread, `release()` at the end."""

    def __init__(self, engine: Engine, *, holder: Holder | None = None) -> None:
        self.engine = engine
        self.me = holder or Holder.this_process()
        self.took_over: SendLock | None = None
        self._stop = threading.Event()  # set: stop beating (release() sets it too)
        self._heartbeat = Heartbeat(self._beat, name="send-lock-heartbeat", stopped=self._stop)

    def _is_stale(self, lock: SendLock) -> bool:
        return is_dead(
            pid=lock.pid,
            space=lock.pid_space,
            heartbeat_at=lock.heartbeat_at,
            here=self.me.pid_space,
            now=utcnow(),
        )

    def acquire(self) -> None:
        with write_session(self.engine) as session:
            lock = session.get(SendLock, LOCK_NAME)
            if lock is not None and lock.owner != self.me.id:
                if not self._is_stale(lock):
                    since = lock.acquired_at.strftime("%Y-%m-%d %H:%M UTC")
                    raise SendInProgress(
                        f"another send is in progress (pid {lock.pid} on {lock.host}, "
                        f"since {since})"
                    )
                self.took_over = SendLock(
                    name=lock.name,
                    owner=lock.owner,
                    host=lock.host,
                    pid=lock.pid,
                    pid_space=lock.pid_space,
                    acquired_at=lock.acquired_at,
                    heartbeat_at=lock.heartbeat_at,
                )
                session.delete(lock)
                session.flush()
            if lock is None or lock.owner != self.me.id:
                me = self.me
                session.add(
                    SendLock(
                        name=LOCK_NAME,
                        owner=me.id,
                        host=me.host,
                        pid=me.pid,
                        pid_space=me.pid_space,
                    )
                )
        self._heartbeat.start()

    def _beat(self) -> None:
        with write_session(self.engine) as session:
            lock = session.get(SendLock, LOCK_NAME)
            if lock is not None and lock.owner == self.me.id:
                lock.heartbeat_at = utcnow()
                session.add(lock)

    def release(self) -> None:
        self._heartbeat.stop(timeout=5)
        with write_session(self.engine) as session:
            lock = session.get(SendLock, LOCK_NAME)
            if lock is not None and lock.owner == self.me.id:
                session.delete(lock)

    def __enter__(self) -> SendLockHolder:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
