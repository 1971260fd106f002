"""The one liveness rule of a `newsletter send` process: a heartbeat, a lease, its pid.

A process that holds something in the database (the send lock on SQLite, a
worker row and its claims on PostgreSQL) beats every HEARTBEAT seconds. It is
dead when its last beat is older than LEASE (six beats), or at once when its
pid is gone from the pid space we share with it (`pid_space`: this kernel
boot and pid namespace). A host name alone never says so: two machines or
containers may share one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

#: Seconds between two beats of a live process.
HEARTBEAT = 10.0
#: How long a process's holdings outlive its last beat (missed beats are retried).
LEASE = timedelta(seconds=6 * HEARTBEAT)


def pid_space() -> str | None:
    """Where a pid names one process: this kernel boot and pid namespace (Linux).

    A host name is not enough (two machines or containers may share one); None
    where it cannot be told, and then only the lease says a process is dead.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = Path("/proc/self/ns/pid").stat().st_ino
    except OSError:
        return None
    return f"{boot}:{namespace}" if boot else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs here (one we may not signal counts).

    A zombie does not: a killed `newsletter send` whose parent has not yet
    collected its exit status still answers signal 0, but it will never beat again.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """State Z in /proc (Linux); False where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def is_dead(
    *, pid: int, space: str | None, heartbeat_at: datetime, here: str | None, now: datetime
) -> bool:
    """The rule: its lease ran out, or its pid is gone from our very pid space `here`."""
    if now - heartbeat_at > LEASE:
        return True
    return here is not None and space == here and not pid_alive(pid)


@dataclass(frozen=True)
class Holder:
    """A process as the holder of a lease (the send lock, a worker row): what both rows
    store to say who holds it and to tell later whether it still lives."""

    #: random per process (the host name and pid only make it readable), so that a
    #: same-named host's process is never mistaken for this one
    id: str
    host: str
    pid: int
    pid_space: str | None

    @classmethod
    def this_process(cls) -> Holder:
        host, pid = socket.gethostname(), os.getpid()
        return cls(f"{host}:{pid}:{secrets.token_hex(8)}", host, pid, pid_space())


class Heartbeat:
    """Calls `beat` every `interval` seconds in a daemon thread until `stopped` is set.

    A failed beat is retried at the next one: the lease outlasts several.
    """

    def __init__(
        self,
        beat: Callable[[], None],
        *,
        name: str,
        interval: float = HEARTBEAT,
        stopped: threading.Event | None = None,
    ) -> None:
        self.beat = beat
        self.interval = interval
        self.stopped = stopped or threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, timeout: float) -> None:
        self.stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            with contextlib.suppress(Exception):  # retried at the next beat; the lease is long
                self.beat()
