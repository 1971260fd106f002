"""Several `newsletter send` processes on one issue (PostgreSQL): claims, leases, reaping.

A worker (one `newsletter send` process, registered by registry.WorkerRegistry)
claims a batch of due deliveries with `SELECT ... FOR UPDATE SKIP LOCKED`,
stamping `claimed_by` (its id) and `lease_until`. Its heartbeat renews the
lease of what it holds (`renew`). The claim is also the fence: a worker may
only mark `sending` a delivery it still claims (ledger's start statement
checks `claimed_by`), so a claim taken over after its lease expired can never
be sent by both.

A worker is identified by a random id per process (`send_worker.id`), never
by its host name and pid: two hosts may share a name. It is dead by the rule
of lease.is_dead: its heartbeat is older than the lease, or its process is
gone from our own pid space; or its row is gone. Its claimed-but-unstarted
deliveries are claimable again once their lease expires or it is found dead;
its `sending` ones become `unknown` (the server may have them). A live
worker's in-flight messages are never touched: their lease is renewed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.models import Delivery, DeliveryStatus, SendWorker, table_of, utcnow
from newsletter.sending.lease import HEARTBEAT, LEASE, is_dead, pid_space
from newsletter.sending.work import Recipient

D = table_of(Delivery)
W = table_of(SendWorker)
BATCH = 200
#: A worker that missed three heartbeats looks dead: wait for its lease, then take over.
SUSPECT_AFTER = 3 * timedelta(seconds=HEARTBEAT)
#: Why a delivery left `sending` by a dead process is `unknown` (queue.recover says it too).
LOST = "interrupted while sending: may have been delivered"


def shared_sends(engine: Engine) -> bool:
    """Whether several senders may share an issue here (row locks with SKIP LOCKED)."""
    return engine.dialect.name == "postgresql"


#: Subscribers are joined inside the pick, so that each claim reads its 200 rows by
#: key (a join after the UPDATE hashed the whole subscriber table per claim). Picking
#: in id order after a cursor, within the issue's ids (`id_span`), keeps a claim from
#: walking past the rows the send already finished or other issues' rows: a
#: sequential scan did, on statistics that still say "all pending".
_CLAIM = sa.text(
    """
    WITH picked AS (
        SELECT d.id, d.subscriber_id, s.email, s.name, s.token
        FROM delivery d JOIN subscriber s ON s.id = d.subscriber_id
        WHERE d.issue_id = :issue AND d.status = :status AND d.id > :after AND d.id <= :last
          AND (:any_time OR d.next_attempt_at IS NULL OR d.next_attempt_at <= :now)
          AND (d.claimed_by IS NULL OR d.lease_until < :now)
        ORDER BY d.id
        LIMIT :n
        FOR UPDATE OF d SKIP LOCKED
    ), claimed AS (
        UPDATE delivery d SET claimed_by = :me, lease_until = :until
        FROM picked WHERE d.id = picked.id
        RETURNING d.id, picked.subscriber_id, picked.email, picked.name, picked.token,
          d.attempts
    )
    SELECT * FROM claimed ORDER BY id
    """
)


def id_span(engine: Engine, issue_id: int) -> tuple[int, int]:
    """The lowest and highest delivery id of the issue; (1, 0) when it has none.

    An issue's deliveries are all made by one INSERT when it is created, so its
    rows lie within these ids: a walk in id order starts and stops there instead
    of at the ends of a table that holds every issue ever sent.
    """
    # `id + 0`: read the issue's rows through its key; min(id) alone lets PostgreSQL walk
    # the primary key from the table's first row, through every older issue's rows.
    ids = D.c.id + 0
    query = sa.select(sa.func.min(ids), sa.func.max(ids)).where(D.c.issue_id == issue_id)
    with engine.connect() as conn:
        first, last = conn.execute(query).one()
    return (first, last) if first is not None else (1, 0)


class Claims:
    """One worker's claims on one issue: a source of recipients for `dispatch.Sender`."""

    def __init__(self, engine: Engine, worker_id: str, issue_id: int, *, batch: int = BATCH):
        self.engine = engine
        self.worker_id = worker_id
        self.issue_id = issue_id
        self.batch = batch
        self.held: deque[list[int]] = deque(maxlen=2)  # a batch may be half-committed
        self.span: tuple[int, int] | None = None  # the issue's ids (id_span), read once
        self.after = 0  # the last pending delivery claimed: the next pick goes on from it
        self.reaped = 0

    def claim(self) -> list[Recipient]:
        """Claim up to `batch` due deliveries (pending first, then deferred ones now due).

        Pending ones are taken in id order from where the last claim stopped; a pass
        that finds too few starts again from the issue's first id, for the ones handed
        back before the cursor (requeued, released, or reaped from a dead worker).
        """
        if self.span is None:
            self.span = id_span(self.engine, self.issue_id)
            self.after = self.span[0] - 1
        first, last = self.span
        start, cursor = first - 1, self.after  # picks take ids above `after`
        now = utcnow()
        out: list[Recipient] = []
        with self.engine.begin() as conn:

            def pick(status: DeliveryStatus, after: int) -> list[Recipient]:
                params = {
                    "issue": self.issue_id,
                    "status": status,
                    "after": after,
                    "last": last,
                    "any_time": status == DeliveryStatus.PENDING,  # deferred: when due
                    "now": now,
                    "n": self.batch - len(out),
                    "me": self.worker_id,
                    "until": now + LEASE,
                }
                return [Recipient(*row) for row in conn.execute(_CLAIM, params)]

            out += pick(DeliveryStatus.PENDING, cursor)
            if len(out) < self.batch and cursor > start:
                self.after = start
                out += pick(DeliveryStatus.PENDING, start)
            if out:
                self.after = out[-1].delivery_id
            if len(out) < self.batch:
                out += pick(DeliveryStatus.DEFERRED, start)
        self.held.append([r.delivery_id for r in out])
        return out

    def recipients(self) -> Iterator[Recipient]:
        """Claim batch after batch until nothing is due; take over dead workers' claims."""
        last_reap = 0.0
        while True:
            if time.monotonic() - last_reap > HEARTBEAT:
                self.reaped += reap(self.engine, self.issue_id)
                last_reap = time.monotonic()
            batch = self.claim()
            if not batch:
                self.reaped += reap(self.engine, self.issue_id)
                last_reap = time.monotonic()
                batch = self.claim()
            if not batch:
                wake = self._suspect_lease_end()
                if wake is None:
                    return
                time.sleep(max(0.0, (wake - utcnow()).total_seconds()) + 0.5)
                last_reap = 0.0
                continue
            yield from batch

    def held_ids(self) -> list[int]:
        """(Read by the heartbeat's thread while the sending one appends: from a copy.)"""
        return [i for ids in list(self.held) for i in ids]

    def release(self) -> None:
        """Hand back what was claimed but not started (a stopped run): others may take it."""
        ids = self.held_ids()
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(D)
                .where(
                    _unlocked(
                        D.c.id.in_(ids),
                        D.c.claimed_by == self.worker_id,
                        D.c.status.in_(DeliveryStatus.OPEN),
                    )
                )
                .values(claimed_by=None, lease_until=None)
            )
        self.held.clear()

    def _suspect_lease_end(self) -> datetime | None:
        """When the lease of a silent worker's open deliveries ends, if one holds any."""
        fresh = utcnow() - SUSPECT_AFTER
        live = sa.select(W.c.id).where(W.c.heartbeat_at >= fresh)
        query = sa.select(sa.func.max(D.c.lease_until)).where(
            D.c.issue_id == self.issue_id,
            D.c.status.in_(DeliveryStatus.UNFINISHED),
            D.c.claimed_by.is_not(None),
            D.c.claimed_by != self.worker_id,
            D.c.claimed_by.not_in(live),
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()


def _unlocked(*where: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """Rows matching `where` that no other transaction is changing right now.

    The heartbeat and the reaper never wait for a row lock (SKIP LOCKED): a
    locked row is being settled by its worker's ledger at this moment,
    and waiting could deadlock with it; the next beat or reap gets it.
    """
    return D.c.id.in_(sa.select(D.c.id).where(*where).with_for_update(skip_locked=True))


def renew(engine: Engine, worker_id: str, issue_id: int | None, held: list[int]) -> None:
    """Extend the lease of this worker's in-flight and claimed deliveries."""
    if issue_id is None:
        return
    until = utcnow() + LEASE
    with engine.begin() as conn:
        conn.execute(
            sa.update(D)
            .where(
                _unlocked(
                    D.c.issue_id == issue_id,
                    D.c.status == DeliveryStatus.SENDING,
                    D.c.claimed_by == worker_id,
                )
            )
            .values(lease_until=until)
        )
        if held:
            conn.execute(
                sa.update(D)
                .where(_unlocked(D.c.id.in_(held), D.c.claimed_by == worker_id))
                .values(lease_until=until)
            )


def dead_workers(engine: Engine) -> list[str]:
    """Workers whose heartbeat is older than the lease, or whose process is gone from
    this very pid space (a same-named host's pid says nothing about ours)."""
    here, now = pid_space(), utcnow()
    with engine.connect() as conn:
        rows = conn.execute(sa.select(W.c.id, W.c.pid, W.c.pid_space, W.c.heartbeat_at)).all()
    return [
        r.id
        for r in rows
        if is_dead(pid=r.pid, space=r.pid_space, heartbeat_at=r.heartbeat_at, here=here, now=now)
    ]


def reap(engine: Engine, issue_id: int | None = None) -> int:
    """Dead workers' `sending` deliveries -> unknown, their claims -> free; returns how many
    became unknown. Only `sending` rows whose claimer is not alive are touched."""
    dead = dead_workers(engine)
    now = utcnow()
    live = sa.select(W.c.id).where(W.c.heartbeat_at >= now - LEASE, W.c.id.not_in(dead))
    # every issue at the start of a run (one scan), the current one while sending
    scope = D.c.issue_id == issue_id if issue_id is not None else sa.true()
    orphaned = sa.or_(
        D.c.claimed_by.is_(None),
        D.c.lease_until.is_(None),
        D.c.lease_until < now,
        D.c.claimed_by.not_in(live),
    )
    with engine.begin() as conn:
        lost = conn.execute(
            sa.update(D)
            .where(_unlocked(scope, D.c.status == DeliveryStatus.SENDING, orphaned))
            .values(
                status=DeliveryStatus.UNKNOWN,
                last_error=LOST,
                updated_at=now,
                claimed_by=None,
                lease_until=None,
            )
        ).rowcount
        if dead:
            conn.execute(
                sa.update(D)
                .where(
                    _unlocked(
                        scope,
                        D.c.claimed_by.in_(dead),
                        D.c.status.in_(DeliveryStatus.OPEN),
                    )
                )
                .values(claimed_by=None, lease_until=None)
            )
            conn.execute(sa.delete(W).where(W.c.id.in_(dead)))
    return lost
