"""Where a send's time goes before and around its first message (`newsletter send -v`).

Diagnostics only. The code being measured marks its phases itself with
`with phase(NAME):` blocks (the names are below, one home for each); nothing is
recorded until the CLI calls `enable()`, so an ordinary run, and every test that
sends in-process, pays two clock reads per phase and keeps no state. Part of the
foundation (it imports nothing of the project) so that every layer can mark a
phase: issue creation times its delivery rows, rendering its CSS inlining.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_UP = "start-up (interpreter, imports)"
OPEN_DATABASE = "migrations check (open the database)"
FEED = "feed fetch and parse"
RECOVERY = "recovery of interrupted deliveries"
CSS_INLINING = "premailer (CSS inlining)"
DELIVERY_ROWS = "delivery rows (INSERT ... SELECT)"
ISSUE_CREATION = "issue creation (all of it)"
DELIVERY = "delivery (SMTP, bookkeeping)"


class _Record:
    """Phase name -> seconds, in the order they first ended (several blocks of one phase
    add up); nothing is kept until `enable()`."""

    enabled = False
    seconds: dict[str, float] = {}  # noqa: RUF012 (one record per process, on purpose)


def enable() -> None:
    """Start recording (again from nothing)."""
    _Record.enabled = True
    _Record.seconds = {}


def add(name: str, seconds: float) -> None:
    if _Record.enabled:
        _Record.seconds[name] = _Record.seconds.get(name, 0.0) + seconds


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a block as `name` (added to any earlier time of that phase)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - start)


def process_age() -> float | None:
    """Seconds since this process started (Linux), so that interpreter start-up and
    imports count too; None where /proc is not there."""
    try:
        stat = Path(f"/proc/{os.getpid()}/stat").read_text(encoding="ascii")
        fields = stat.rsplit(")", 1)[1].split()
        now = float(Path("/proc/uptime").read_text(encoding="ascii").split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return now - int(fields[19]) / os.sysconf("SC_CLK_TCK")


def report() -> list[str]:
    """One line per phase, in the order they first ended."""
    return [f"phase {name}: {seconds:.3f} s" for name, seconds in _Record.seconds.items()]
