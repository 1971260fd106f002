"""Shared sends on PostgreSQL: claims, leases, dead workers, the shared rate budget, status.

In-process: several `run_send` calls at once in threads, and workers made up
by hand (a `send_worker` row and claimed deliveries) to play the dead ones.
The same with real processes and SIGKILL is in test_scale_workers.py.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.mail.transport import MemoryTransport, Reply
from newsletter.models import DeliveryStatus, utcnow
from newsletter.sending.claims import Claims, reap
from newsletter.sending.lease import Holder, pid_space
from newsletter.sending.ledger import Ledger
from newsletter.sending.options import SendOptions
from newsletter.sending.pacing import SharedRateLimiter
from newsletter.sending.policy import Policy
from newsletter.sending.registry import WorkerRegistry
from newsletter.sending.run import run_send
from newsletter.status import status_report
from tests.support.helpers import (
    add_subscribers,
    database,
    deliveries,
    many,
    settings_for,
    with_subscribers,
)

pytestmark = [
    pytest.mark.usefixtures("db_backend"),
    pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True),
]


def _send(engine, settings, transport, **options):  # type: ignore[no-untyped-def]
    return run_send(engine, settings, SendOptions(**options), factory=lambda: transport)


def _counts(engine: Engine) -> Counter[str]:
    return Counter(deliveries(engine).values())


def _ghost(engine: Engine, *, host: str = "gone-host", age: float = 300.0) -> str:
    """A worker row whose heartbeat is `age` seconds old (another host: no pid check)."""
    worker_id = f"{host}:4242:dead"
    when = utcnow() - timedelta(seconds=age)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO send_worker (id, host, pid, sent, started_at, heartbeat_at)"
                " VALUES (:id, :host, 4242, 0, :t, :t)"
            ),
            {"id": worker_id, "host": host, "t": when},
        )
    return worker_id


def _make_issue(engine: Engine, settings, readers: int):  # type: ignore[no-untyped-def]
    """An issue whose deliveries are all still pending (a first send that sent nothing)."""
    add_subscribers(engine, many(readers))
    refusing = MemoryTransport(responder=lambda *a: Reply(450, "4.2.0 greylisted"))
    _send(engine, settings, refusing)  # every delivery stays open (deferred)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE delivery SET status='pending', attempts=0, next_attempt_at=NULL,"
                " claimed_by=NULL, lease_until=NULL"
            )
        )
        return conn.execute(sa.text("SELECT id FROM issue")).scalar_one()


def test_two_sends_at_once_share_one_issue_exactly_once(tmp_path: Path) -> None:
    settings, engine = with_subscribers(tmp_path, many(600))
    transports = [
        MemoryTransport(responder=lambda *a: (time.sleep(0.001), Reply(250, "OK"))[1])
        for _ in range(3)
    ]
    results = [None] * 3

    def work(n: int) -> None:
        results[n] = _send(engine, settings, transports[n])  # type: ignore[call-overload]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(r is not None and r.error is None for r in results)
    sent = Counter(m.rcpt for t in transports for m in t.sent)
    assert sorted(sent) == many(600) and set(sent.values()) == {1}
    assert sum(1 for t in transports if t.sent) >= 2  # the others helped
    with engine.connect() as conn:
        issues = conn.execute(sa.text("SELECT status FROM issue")).scalars().all()
    assert issues == ["sent"]  # one issue, finished by whoever sent the last message
    assert _counts(engine) == {DeliveryStatus.SENT: 600}


def test_a_dead_workers_claims_return_after_the_lease_and_its_in_flight_become_unknown(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    engine = database(settings)
    issue_id = _make_issue(engine, settings, 30)
    ghost = _ghost(engine, age=5.0)  # silent for a few seconds only: not dead yet
    claims = Claims(engine, ghost, issue_id, batch=10)
    held = claims.claim()
    with engine.begin() as conn:  # it had handed two messages to the server
        conn.execute(
            sa.text("UPDATE delivery SET status='sending' WHERE id IN (:a, :b)"),
            {"a": held[0].delivery_id, "b": held[1].delivery_id},
        )
    # While its lease runs, nobody touches its deliveries.
    assert reap(engine, issue_id) == 0
    live = Claims(engine, "live:1:x", issue_id, batch=100)
    assert {r.delivery_id for r in live.claim()}.isdisjoint({r.delivery_id for r in held})
    live.release()
    # The lease expires: its in-flight ones become unknown, the rest are sent by another worker.
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE delivery SET lease_until = :t WHERE claimed_by = :w"),
            {"t": utcnow() - timedelta(seconds=1), "w": ghost},
        )
    transport = MemoryTransport()
    result = _send(engine, settings, transport)
    assert result.error is None and result.issues[0].finished
    states = _counts(engine)
    assert states == {DeliveryStatus.SENT: 28, DeliveryStatus.UNKNOWN: 2}
    assert len(transport.sent) == 28


def test_claims_go_on_in_id_order_and_come_back_for_rows_handed_back_behind(
    tmp_path: Path,
) -> None:
    """A claim starts after the last one; rows given back before that point (released
    by a stopped worker, requeued) are still found once the rows ahead run short."""
    settings = settings_for(tmp_path)
    engine = database(settings)
    issue_id = _make_issue(engine, settings, 12)
    stopped = Claims(engine, "stopped:1:a", issue_id, batch=4)
    handed_back = [r.delivery_id for r in stopped.claim()]
    stopped.release()
    worker = Claims(engine, "on:2:b", issue_id, batch=4)
    first = [r.delivery_id for r in worker.claim()]
    assert first == handed_back  # the stopped worker's rows are free again
    second = [r.delivery_id for r in worker.claim()]
    assert min(second) > max(first)
    with engine.begin() as conn:  # one of the first batch is requeued (back to pending)
        conn.execute(
            sa.text("UPDATE delivery SET claimed_by = NULL, lease_until = NULL WHERE id = :d"),
            {"d": first[0]},
        )
    third = [r.delivery_id for r in worker.claim()]
    assert min(third) > max(second) and len(third) == 4
    fourth = [r.delivery_id for r in worker.claim()]
    assert fourth == [first[0]]  # nothing left ahead: the pick starts again from the top
    assert worker.claim() == []
    every = first + second + third + fourth
    assert len(set(every)) == 12 == len(every) - 1


def test_a_live_workers_in_flight_messages_are_never_marked_unknown(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    engine = database(settings)
    issue_id = _make_issue(engine, settings, 5)
    with WorkerRegistry(engine) as other:  # alive, heartbeat fresh
        claims = Claims(engine, other.me.id, issue_id, batch=1)
        (mine,) = claims.claim()
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE delivery SET status='sending' WHERE id=:d"), {"d": mine.delivery_id}
            )
        other.working_on(issue_id, lambda: 0, claims)  # renews the lease
        assert reap(engine) == 0 and reap(engine, issue_id) == 0
        result = _send(engine, settings, MemoryTransport())
        assert result.issues[0].report.sent == 4 and not result.issues[0].finished
        assert result.issues[0].others_sending
        assert deliveries(engine)[mine.email] == DeliveryStatus.SENDING
    # Gone without finishing (its row deleted): what it had in flight is now unknown.
    assert reap(engine) == 1
    assert deliveries(engine)[mine.email] == DeliveryStatus.UNKNOWN


def test_a_claim_taken_over_cannot_be_started_by_its_old_holder(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    engine = database(settings)
    issue_id = _make_issue(engine, settings, 3)
    slow = Claims(engine, "slow:1:a", issue_id, batch=3)
    batch = slow.claim()
    with engine.begin() as conn:  # its lease ran out; another worker claims the same rows
        conn.execute(
            sa.text("UPDATE delivery SET lease_until = :t"), {"t": utcnow() - timedelta(seconds=1)}
        )
    taken = Claims(engine, "fast:2:b", issue_id, batch=3).claim()
    assert {r.delivery_id for r in taken} == {r.delivery_id for r in batch}
    book = Ledger(utcnow(), Policy(), worker_id="slow:1:a")
    with engine.connect() as conn:
        allowed = book.commit(conn, [], [(r, f"<m{r.delivery_id}@x>") for r in batch])
    assert allowed == [None, None, None]  # not ours any more: never handed to the server
    assert set(_counts(engine)) == {DeliveryStatus.PENDING}


def test_a_start_the_bulk_mark_left_over_cannot_undo_the_others_marks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The common commit marks its starts in one statement, then settles the ones it
    could not mark row by row. If that fails, the marked ones must still go out:
    their `sending` is committed, and a raise would leave them unknown."""
    settings = settings_for(tmp_path)
    engine = database(settings)
    issue_id = _make_issue(engine, settings, 3)
    worker = Claims(engine, "w:1:a", issue_id, batch=3)
    batch = worker.claim()
    with engine.begin() as conn:  # the last one left: it cannot be marked in bulk
        conn.execute(
            sa.text("UPDATE subscriber SET status = 'unsubscribed' WHERE id = :s"),
            {"s": batch[2].subscriber_id},
        )
    book = Ledger(utcnow(), Policy(), worker_id="w:1:a")

    def lost(*_: object) -> list[bool | None]:
        raise sa.exc.OperationalError("UPDATE", {}, Exception("connection lost"))

    monkeypatch.setattr(book, "_transaction", lost)
    with engine.connect() as conn:
        allowed = book.commit(conn, [], [(r, f"<m{r.delivery_id}@x>") for r in batch])
    assert allowed == [True, True, None]
    states = deliveries(engine)
    assert [states[r.email] for r in batch] == ["sending", "sending", "pending"]


def test_the_rate_budget_holds_across_workers(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    engine = database(settings)
    limiters = [SharedRateLimiter(engine, 40.0) for _ in range(3)]
    stamps: list[float] = []
    lock = threading.Lock()

    def work(limiter: SharedRateLimiter) -> None:
        for _ in range(16):
            limiter.wait()
            with lock:
                stamps.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(lim,)) for lim in limiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    elapsed = time.monotonic() - started
    assert len(stamps) == 48
    # 48 messages at 40/s over all workers: at least 47 intervals of 25 ms (one block may be
    # unused at the end); one worker alone would have gone 3 times faster.
    assert elapsed >= 47 / 40 * 0.9, elapsed
    stamps.sort()
    in_any_second = max(sum(1 for s in stamps if first <= s < first + 1.0) for first in stamps)
    assert in_any_second <= 40 + 4  # one block of slack


def test_status_shows_the_active_workers_and_their_rates(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    engine = database(settings)
    issue_id = _make_issue(engine, settings, 2)
    _ghost(engine, age=600)  # long dead: not shown
    with WorkerRegistry(engine) as me:
        me.working_on(issue_id, lambda: 50, None)
        report = status_report(engine)
    assert [(w.worker_id, w.issue_id, w.sent) for w in report.workers] == [(me.me.id, issue_id, 50)]
    assert status_report(engine).workers == []


def _dead_pid() -> int:
    """A pid with no process on this machine."""
    pid = 2**22 + 4242
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def _twin(engine: Engine, issue_id: int, *, pid: int, space: str | None) -> tuple[str, int]:
    """Register a worker under our host name and `pid` (a real WorkerRegistry row, never
    beating) with one message in flight and a live lease; (its id, that delivery's id)."""
    host = socket.gethostname()
    twin = WorkerRegistry(
        engine, holder=Holder(f"{host}:{pid}:{secrets.token_hex(8)}", host, pid, space)
    )
    twin.start()
    twin._stop.set()  # its heartbeat thread stops; the row and its fresh beat stay
    claims = Claims(engine, twin.me.id, issue_id, batch=1)
    (held,) = claims.claim()
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE delivery SET status='sending' WHERE id = :d"), {"d": held.delivery_id}
        )
    return twin.me.id, held.delivery_id


def _status(engine: Engine, delivery_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT status FROM delivery WHERE id = :d"), {"d": delivery_id}
        ).scalar_one()


def test_a_same_named_hosts_worker_is_not_reaped_while_its_lease_is_live(tmp_path: Path) -> None:
    """Same host name and pid, different ids (another machine): its in-flight messages stay
    `sending` while its lease runs, whatever that pid means here."""
    settings = settings_for(tmp_path)
    engine = database(settings)
    issue_id = _make_issue(engine, settings, 5)
    pid = _dead_pid()  # same pid for both: dead here, alive on the other machine
    first, first_delivery = _twin(engine, issue_id, pid=pid, space="other-machine-boot:1")
    second, second_delivery = _twin(engine, issue_id, pid=pid, space="third-machine-boot:1")
    assert first != second and first.split(":")[:2] == second.split(":")[:2]
    assert reap(engine, issue_id) == 0
    assert reap(engine) == 0
    assert _status(engine, first_delivery) == _status(engine, second_delivery) == "sending"
    with engine.connect() as conn:
        ids = set(conn.execute(sa.text("SELECT id FROM send_worker")).scalars())
    assert {first, second} <= ids


def test_a_dead_process_in_our_own_pid_space_is_reaped_at_once(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    engine = database(settings)
    issue_id = _make_issue(engine, settings, 3)
    here = pid_space()
    assert here is not None  # Linux: /proc tells the boot and the pid namespace
    _gone, delivery_id = _twin(engine, issue_id, pid=_dead_pid(), space=here)
    assert reap(engine, issue_id) == 1  # lease still live, but the process is gone here
    assert _status(engine, delivery_id) == DeliveryStatus.UNKNOWN
