"""Where a send's time goes before and around its first message (`newsletter send -v`).

Diagnostics only: `enable()` wraps a few module-level functions the send
calls by name (feed, issue creation, CSS inlining, recovery, delivery) and
times every `INSERT INTO delivery` statement, so that the code being measured
carries no timing calls of its own. Nothing here changes what a send does.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path
from typing import Any

import sqlalchemy as sa

#: (phase name, seconds), in the order they ended; several calls of one phase add up.
PHASES: dict[str, float] = {}
_WRAPPED: list[tuple[Any, str, Any]] = []
#: (module, function name, phase name): what `enable` times.
_TARGETS = (
    ("newsletter.sending.run", "read_feed", "feed fetch and parse"),
    ("newsletter.sending.run", "recover", "recovery of interrupted deliveries"),
    ("newsletter.issues.create", "create_issue", "issue creation (all of it)"),
    ("newsletter.issues.render", "inline_css", "premailer (CSS inlining)"),
    ("newsletter.sending.run", "deliver", "delivery (SMTP, bookkeeping)"),
)
DELIVERY_ROWS = "delivery rows (INSERT ... SELECT)"


def add(name: str, seconds: float) -> None:
    PHASES[name] = PHASES.get(name, 0.0) + seconds


@contextmanager
def phase(name: str) -> Any:
    """Time a block as `name` (added to any earlier time of that phase)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - start)


def _timed(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with phase(name):
            return fn(*args, **kwargs)

    return wrapper


def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    if statement.lstrip().upper().startswith("INSERT INTO DELIVERY"):
        conn.info["phases_started"] = time.perf_counter()


def _after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    started = conn.info.pop("phases_started", None)
    if started is not None:
        add(DELIVERY_ROWS, time.perf_counter() - started)


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


def enable() -> None:
    """Start timing the phases (idempotent)."""
    if _WRAPPED:
        return
    for module_name, attribute, name in _TARGETS:
        module = import_module(module_name)
        original = getattr(module, attribute)
        _WRAPPED.append((module, attribute, original))
        setattr(module, attribute, _timed(original, name))
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", _before)
    sa.event.listen(sa.engine.Engine, "after_cursor_execute", _after)


def report() -> list[str]:
    """One line per phase, in the order they first ended."""
    return [f"phase {name}: {seconds:.3f} s" for name, seconds in PHASES.items()]
