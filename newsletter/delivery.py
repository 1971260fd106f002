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

import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsletter.errors import NewsletterError, SenderRejected, TransportError
from newsletter.message import MessageTemplate, message_date
from newsletter.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus, utcnow
from newsletter.outcomes import Outcome, classify
from newsletter.transport import ConnectionLost, Reply, TransportFactory

D = Delivery.__table__
S = Subscriber.__table__
REQUEUE = "requeue"  # not attempted after all: back to pending
RECONNECT_DELAYS = (0.5, 2.0, 5.0)
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


class Bookkeeper:
    """The per-message writes; one lock for all threads of this process."""

    def __init__(self, issue_created: datetime, policy: Policy) -> None:
        self.lock = threading.Lock()
        self.issue_created = issue_created
        self.policy = policy

    def _finish(self, conn: Connection, done: Finished) -> None:
        now = utcnow()
        r = done.recipient
        values: dict[str, object] = {"updated_at": now, "last_error": done.error}
        status = done.status
        if status == DeliveryStatus.DEFERRED and now - self.issue_created > self.policy.max_age:
            status = DeliveryStatus.FAILED
            values["last_error"] = f"gave up after {self.policy.max_age}: {done.error}"
        if status == "bounce":
            status = DeliveryStatus.FAILED
            conn.execute(
                sa.update(S)
                .where(S.c.id == r.subscriber_id, S.c.status == SubscriberStatus.ACTIVE)
                .values(status=SubscriberStatus.BOUNCED, updated_at=now)
            )
        if status == REQUEUE:
            status = DeliveryStatus.PENDING
        if status == DeliveryStatus.SENT:
            values["sent_at"] = now
        if status == DeliveryStatus.DEFERRED:
            values["next_attempt_at"] = now + timedelta(seconds=done.retry_in or 0)
        values["status"] = status
        conn.execute(sa.update(D).where(D.c.id == r.delivery_id).values(**values))

    def step(
        self,
        conn: Connection,
        done: Finished | None,
        start: Recipient | None = None,
        message_id: str | None = None,
    ) -> bool:
        """Record `done`, then mark `start` as sending; False if its subscriber left."""
        with self.lock, conn.begin():
            if done is not None:
                self._finish(conn, done)
            if start is None:
                return False
            now = utcnow()
            still_active = (
                sa.select(S.c.id)
                .where(S.c.id == start.subscriber_id, S.c.status == SubscriberStatus.ACTIVE)
                .exists()
            )
            open_states = (DeliveryStatus.PENDING, DeliveryStatus.DEFERRED)
            started = conn.execute(
                sa.update(D)
                .where(D.c.id == start.delivery_id, D.c.status.in_(open_states), still_active)
                .values(
                    status=DeliveryStatus.SENDING,
                    message_id=message_id,
                    attempts=D.c.attempts + 1,
                    updated_at=now,
                )
            ).rowcount
            if started:
                return True
            conn.execute(
                sa.update(D)
                .where(D.c.id == start.delivery_id, D.c.status.in_(open_states))
                .values(
                    status=DeliveryStatus.SKIPPED,
                    updated_at=now,
                    last_error="subscriber no longer active",
                )
            )
            return False


class Sender:
    """Runs the worker threads for one pass over an issue's due deliveries."""

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
    ) -> None:
        self.engine = engine
        self.template = template
        self.factory = factory
        self.mail_from = mail_from
        self.policy = policy
        self.report = report
        self.progress = progress
        self.book = Bookkeeper(issue_created, policy)
        self.limiter = RateLimiter(policy.rate)
        self.stop = threading.Event()
        self._progress_lock = threading.Lock()

    def run(self, recipients: Iterator[Recipient]) -> None:
        jobs: queue.Queue[Recipient | None] = queue.Queue(maxsize=self.policy.connections * 64)
        workers = [
            threading.Thread(target=self._work, args=(jobs,), name=f"smtp-{n}", daemon=True)
            for n in range(self.policy.connections)
        ]
        for worker in workers:
            worker.start()
        try:
            for recipient in recipients:
                while not self.stop.is_set():
                    try:
                        jobs.put(recipient, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    break
        except BaseException:
            self.stop.set()  # Ctrl-C: let the messages in flight finish and be recorded
            raise
        finally:
            if self.stop.is_set():
                while True:  # drop what was queued but not started: it stays pending
                    try:
                        jobs.get_nowait()
                    except queue.Empty:
                        break
            for _ in workers:
                jobs.put(None)
            for worker in workers:
                worker.join()

    def _tick(self) -> None:
        if self.progress is not None:
            with self._progress_lock:
                self.progress(1)

    def _work(self, jobs: queue.Queue[Recipient | None]) -> None:
        transport = self.factory()
        conn = self.engine.connect().execution_options(sqlite_begin="IMMEDIATE")
        done: Finished | None = None
        on_connection = 0
        try:
            while True:
                recipient = jobs.get()
                if recipient is None or self.stop.is_set():
                    break
                self.limiter.wait()
                message_id = self.template.new_message_id()
                started = self.book.step(conn, done, recipient, message_id)
                done = None
                if not started:
                    self.report.count("skipped")
                    self._tick()
                    continue
                data = self.template.personalise(
                    recipient.email,
                    recipient.name,
                    recipient.token,
                    message_id=message_id,
                    date=message_date(),
                )
                done = self._deliver(transport, recipient, data)
                on_connection += 1
                if on_connection >= self.policy.max_per_connection:
                    transport.close()
                    on_connection = 0
                if done.status != REQUEUE:
                    self._tick()
        except BaseException as exc:  # noqa: BLE001 - recorded, the run stops cleanly
            self.stop.set()
            if self.report.stopped is None:
                self.report.stopped = (
                    exc
                    if isinstance(exc, NewsletterError)
                    else NewsletterError(f"sending stopped: {exc!r}")
                )
        finally:
            try:
                if done is not None:
                    self.book.step(conn, done)
            finally:
                transport.close()
                conn.close()

    def _deliver(self, transport: object, recipient: Recipient, data: bytes) -> Finished:
        """Send one message, reconnecting on 421 or a drop before the body."""
        for delay in (*RECONNECT_DELAYS, None):
            try:
                reply = transport.send(self.mail_from, recipient.email, data)  # type: ignore[attr-defined]
            except ConnectionLost as lost:
                if lost.after_body:
                    self.report.count("unknown")
                    return Finished(
                        recipient,
                        DeliveryStatus.UNKNOWN,
                        f"connection lost after the message was sent: {lost}",
                    )
                reply = Reply(421, f"connection lost: {lost}")
            except TransportError as exc:
                self._halt(exc)
                return Finished(recipient, REQUEUE, exc.message)
            outcome = classify(reply)
            if outcome is not Outcome.RECONNECT:
                return self._settle(recipient, reply, outcome)
            if delay is None or self.stop.is_set():
                break
            time.sleep(delay)
        self._halt(TransportError(f"the SMTP server keeps closing the connection: {reply}"))
        return Finished(recipient, REQUEUE, str(reply))

    def _halt(self, exc: NewsletterError) -> None:
        if self.report.stopped is None:
            self.report.stopped = exc
        self.stop.set()
        self.report.count("requeued")

    def _settle(self, recipient: Recipient, reply: Reply, outcome: Outcome) -> Finished:
        text = str(reply)
        if outcome is Outcome.SENT:
            self.report.count("sent")
            return Finished(recipient, DeliveryStatus.SENT)
        if outcome is Outcome.DEFER:
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
