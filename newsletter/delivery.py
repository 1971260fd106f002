"""Issue -> Delivery: push one issue's pending deliveries through N connections.

Every message is bracketed by durable bookkeeping, so a crash at any moment
leaves at most the messages in flight undecided:

    pending --(commit)--> sending --SMTP--> sent / deferred / failed / unknown

Each state change of one message is written together with the *start* of the
next one on the same connection, in one short transaction: one commit per
message. The commits of all worker threads are serialised by an in-process
lock, so SQLite's busy handler (which sleeps) is never hit by our own threads.
Deliveries left `sending` by a crashed run become `unknown` (see `recover`),
never `pending`: the server may have them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing.connection import wait

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsletter.errors import NewsletterError, SenderRejected, TransportError
from newsletter.message import MessageTemplate, message_date
from newsletter.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus, utcnow
from newsletter.outcomes import Outcome, classify
from newsletter.transport import Reply, TransportFactory
from newsletter.workers import Worker

D = Delivery.__table__
S = Subscriber.__table__
REQUEUE = "requeue"  # not attempted after all: back to pending
PAGE = 1000


@dataclass(frozen=True)
class Recipient:
    delivery_id: int
    subscriber_id: int
    email: str
    name: str | None
    token: str
    attempts: int


@dataclass
class Report:
    """Counts of one run, for the summary line; thread-safe via `count`."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    bounced: int = 0
    unknown: int = 0
    skipped: int = 0
    requeued: int = 0
    stopped: NewsletterError | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    @property
    def attempted(self) -> int:
        return self.sent + self.deferred + self.failed + self.bounced + self.unknown


@dataclass
class Policy:
    """Retry and pacing knobs (from Settings)."""

    connections: int = 4
    rate: float | None = None  # messages per second over all connections
    max_per_connection: int = 1000
    retry_delays: tuple[float, ...] = (5.0, 30.0)
    max_age: timedelta = timedelta(hours=72)


class RateLimiter:
    """Spaces messages evenly across all threads (NEWSLETTER_SEND_RATE)."""

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


def recover(engine: Engine, issue_id: int | None = None) -> int:
    """Deliveries left `sending` by a crash become `unknown`: the server may have them."""
    query = sa.update(D).where(D.c.status == DeliveryStatus.SENDING)
    if issue_id is not None:
        query = query.where(D.c.issue_id == issue_id)
    query = query.values(
        status=DeliveryStatus.UNKNOWN,
        last_error="interrupted while sending: may have been delivered",
        updated_at=utcnow(),
    )
    with engine.connect() as conn, conn.execution_options(sqlite_begin="IMMEDIATE").begin():
        return conn.execute(query).rowcount


def due_recipients(engine: Engine, issue_id: int, *, now: datetime) -> Iterator[Recipient]:
    """Open deliveries of active subscribers, by id, in pages (memory stays flat)."""
    last = 0
    while True:
        query = (
            sa.select(D.c.id, S.c.id, S.c.email, S.c.name, S.c.token, D.c.attempts)
            .join(S, S.c.id == D.c.subscriber_id)
            .where(
                D.c.issue_id == issue_id,
                D.c.id > last,
                sa.or_(
                    D.c.status == DeliveryStatus.PENDING,
                    sa.and_(
                        D.c.status == DeliveryStatus.DEFERRED,
                        sa.or_(D.c.next_attempt_at.is_(None), D.c.next_attempt_at <= now),
                    ),
                ),
            )
            .order_by(D.c.id)
            .limit(PAGE)
        )
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        for row in rows:
            yield Recipient(*row)
        if len(rows) < PAGE:
            return
        last = rows[-1][0]


@dataclass
class Finished:
    recipient: Recipient
    status: str  # a DeliveryStatus, "bounce" or REQUEUE
    error: str | None = None
    retry_in: float | None = None


_OPEN = (DeliveryStatus.PENDING, DeliveryStatus.DEFERRED)
_P = sa.bindparam

#: Statements built once: building Core statements per message cost ~1.5 ms each.
_START = (
    sa.update(D)
    .where(
        D.c.id == _P("did"),
        D.c.status.in_(_OPEN),
        sa.select(S.c.id)
        .where(S.c.id == _P("sid"), S.c.status == SubscriberStatus.ACTIVE)
        .exists(),
    )
    .values(
        status=DeliveryStatus.SENDING,
        message_id=_P("mid"),
        attempts=D.c.attempts + 1,
        updated_at=_P("now"),
    )
)
_SKIP = (
    sa.update(D)
    .where(D.c.id == _P("did"), D.c.status.in_(_OPEN))
    .values(status=DeliveryStatus.SKIPPED, updated_at=_P("now"), last_error=_P("why"))
)
_FINISH = (
    sa.update(D)
    .where(D.c.id == _P("did"))
    .values(
        status=_P("status"),
        last_error=_P("error"),
        updated_at=_P("now"),
        sent_at=_P("sent_at"),
        next_attempt_at=_P("next_at"),
    )
)
_BOUNCE = (
    sa.update(S)
    .where(S.c.id == _P("sid"), S.c.status == SubscriberStatus.ACTIVE)
    .values(status=SubscriberStatus.BOUNCED, updated_at=_P("now"))
)


class Bookkeeper:
    """The per-message writes; one lock for all threads of this process."""

    def __init__(self, issue_created: datetime, policy: Policy) -> None:
        self.lock = threading.Lock()
        self.issue_created = issue_created
        self.policy = policy

    def _finish(self, conn: Connection, done: Finished, now: datetime) -> None:
        r = done.recipient
        status, error = done.status, done.error
        next_at = None
        if status == DeliveryStatus.DEFERRED and now - self.issue_created > self.policy.max_age:
            status, error = DeliveryStatus.FAILED, f"gave up after {self.policy.max_age}: {error}"
        if status == DeliveryStatus.DEFERRED:
            next_at = now + timedelta(seconds=done.retry_in or 0)
        if status == "bounce":
            status = DeliveryStatus.FAILED
            conn.execute(_BOUNCE, {"sid": r.subscriber_id, "now": now})
        if status == REQUEUE:
            status = DeliveryStatus.PENDING
        sent_at = now if status == DeliveryStatus.SENT else None
        conn.execute(
            _FINISH,
            {
                "did": r.delivery_id,
                "status": status,
                "error": error,
                "now": now,
                "sent_at": sent_at,
                "next_at": next_at,
            },
        )

    def commit(
        self,
        conn: Connection,
        finished: list[Finished],
        starts: list[tuple[Recipient, str]],
    ) -> list[bool]:
        """One transaction: record `finished`, then mark each start as sending.

        Returns, per start, whether it may be sent (False: its subscriber left,
        and the delivery is now skipped). Several workers' results share one
        commit (group commit); no message is handed over before its mark is durable.
        """
        if not finished and not starts:
            return []
        now = utcnow()
        allowed = []
        with self.lock, conn.begin():
            for done in finished:
                self._finish(conn, done, now)
            for start, message_id in starts:
                params = {"did": start.delivery_id, "sid": start.subscriber_id, "now": now}
                ok = conn.execute(_START, {**params, "mid": message_id}).rowcount > 0
                if not ok:
                    conn.execute(_SKIP, {**params, "why": "subscriber no longer active"})
                allowed.append(ok)
        return allowed


class Sender:
    """Feeds one pass over an issue's due deliveries to N workers, one message each at a time.

    The loop: hand a message to every idle worker (after its `sending` mark is
    committed), wait for answers, settle them; the settlements and the next
    marks go into one commit.
    """

    def __init__(
        self,
        engine: Engine,
        template: MessageTemplate,
        factory: TransportFactory,
        *,
        mail_from: str,
        issue_created: datetime,
        policy: Policy,
        report: Report,
        progress: Callable[[int], None] | None = None,
        use_processes: bool = False,
    ) -> None:
        self.engine = engine
        self.template = template
        self.factory = factory
        self.mail_from = mail_from
        self.policy = policy
        self.report = report
        self.progress = progress
        self.use_processes = use_processes
        self.book = Bookkeeper(issue_created, policy)
        self.limiter = RateLimiter(policy.rate)
        self.stop = threading.Event()

    def run(self, recipients: Iterator[Recipient]) -> None:
        workers = [
            Worker(
                self.factory,
                self.mail_from,
                use_process=self.use_processes,
                max_per_connection=self.policy.max_per_connection,
                name=f"smtp-{n}",
            )
            for n in range(self.policy.connections)
        ]
        conn = self.engine.connect().execution_options(sqlite_begin="IMMEDIATE")
        busy: dict[Worker, Recipient] = {}
        finished: list[Finished] = []
        source = iter(recipients)
        exhausted = False
        try:
            while True:
                idle = [w for w in workers if w not in busy]
                starts: list[tuple[Worker, Recipient, str]] = []
                while idle and not exhausted and not self.stop.is_set():
                    recipient = next(source, None)
                    if recipient is None:
                        exhausted = True
                        break
                    starts.append((idle.pop(), recipient, self.template.new_message_id()))
                allowed = self.book.commit(conn, finished, [(r, m) for _, r, m in starts])
                finished = []
                for (worker, recipient, message_id), ok in zip(starts, allowed, strict=True):
                    if not ok:
                        self.report.count("skipped")
                        self._tick()
                        continue
                    self.limiter.wait()
                    worker.submit(
                        recipient.email,
                        self.template.personalise(
                            recipient.email,
                            recipient.name,
                            recipient.token,
                            message_id=message_id,
                            date=message_date(),
                        ),
                    )
                    busy[worker] = recipient
                if not busy:
                    if exhausted or self.stop.is_set():
                        break
                    continue  # every start was skipped: fetch more
                for ready in wait([w.conn for w in busy]):
                    worker = next(w for w in busy if w.conn is ready)
                    recipient = busy.pop(worker)
                    finished.append(self._answer(worker, recipient))
        except BaseException:
            self.stop.set()  # Ctrl-C: what is in flight stays `sending` -> unknown
            raise
        finally:
            try:
                if finished:
                    self.book.commit(conn, finished, [])
            finally:
                conn.close()
                for worker in workers:
                    worker.stop()

    def _answer(self, worker: Worker, recipient: Recipient) -> Finished:
        try:
            answer = worker.conn.recv()
        except (EOFError, OSError):
            answer = ("crash", "the worker process died")
        kind = answer[0]
        if kind == "reply":
            done = self._settle(recipient, Reply(answer[1], answer[2]))
        elif kind == "lost":
            self.report.count("unknown")
            done = Finished(recipient, DeliveryStatus.UNKNOWN, answer[1])
        elif kind == "down":
            self._halt(TransportError(answer[1]))
            return Finished(recipient, REQUEUE, answer[1])
        else:
            self._halt(NewsletterError(f"sending stopped: {answer[1]}"))
            # The message may or may not have gone: leave it `sending` (-> unknown).
            return Finished(recipient, DeliveryStatus.UNKNOWN, f"sender crashed: {answer[1]}")
        self._tick()
        return done

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress(1)

    def _halt(self, exc: NewsletterError) -> None:
        if self.report.stopped is None:
            self.report.stopped = exc
        self.stop.set()
        self.report.count("requeued")

    def _settle(self, recipient: Recipient, reply: Reply) -> Finished:
        text = str(reply)
        outcome = classify(reply)
        if outcome is Outcome.SENT:
            self.report.count("sent")
            return Finished(recipient, DeliveryStatus.SENT)
        if outcome is Outcome.DEFER or outcome is Outcome.RECONNECT:
            self.report.count("deferred")
            delays = self.policy.retry_delays or (60.0,)
            base = delays[min(recipient.attempts, len(delays) - 1)]
            return Finished(
                recipient, DeliveryStatus.DEFERRED, text, retry_in=base * random.uniform(0.8, 1.2)
            )
        if outcome is Outcome.BOUNCE:
            self.report.count("bounced")
            return Finished(recipient, "bounce", text)
        if outcome is Outcome.SENDER:
            self._halt(SenderRejected(f"the SMTP server refused the sender: {text}"))
            return Finished(recipient, REQUEUE, text)
        self.report.count("failed")
        return Finished(recipient, DeliveryStatus.FAILED, text)
