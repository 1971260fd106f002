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

Two guards stop a run that is going wrong: the circuit breaker of
newsletter.sending.outcomes (the permanent refusals of the start of a run are held
back, unsuppressed, until it has decided), and SILENT_LIMIT messages in a row
that the server took but never answered.
"""

from __future__ import annotations

import random
import selectors
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.errors import NewsletterError, TransportError
from newsletter.mail.message import MessageTemplate, message_date
from newsletter.mail.transport import Reply, TransportFactory
from newsletter.models import Delivery, DeliveryStatus, Subscriber, utcnow
from newsletter.sending.claims import reap, shared_sends
from newsletter.sending.connections import Worker
from newsletter.sending.ledger import REQUEUE, Bookkeeper, Finished, Recipient
from newsletter.sending.outcomes import Breaker, Outcome, classify, sender_error

D = Delivery.__table__
S = Subscriber.__table__
PAGE = 1000
#: Messages in a row taken by the server and never answered before the run stops.
SILENT_LIMIT = 2


class ServerSilent(TransportError):
    """The SMTP server takes messages and never answers: stop before it holds them all."""

    hint = (
        "Those messages are marked unknown (they may have been delivered; "
        "`newsletter send --retry-unknown` sends them again); the rest stay pending. "
        "Check the SMTP server, then run `newsletter send` again."
    )


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
    recovered: int = 0  # dead workers' in-flight deliveries this run marked unknown
    stopped: NewsletterError | None = None
    breaker: Breaker = field(default_factory=Breaker, repr=False)
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


class Limiter(Protocol):
    def wait(self) -> None: ...


class RateLimiter:
    """Spaces messages evenly across all threads (NEWSLETTER_SEND_RATE).

    On a shared send, ratebudget.SharedRateLimiter spaces them across workers.
    """

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
    """Deliveries left `sending` by a crash become `unknown`: the server may have them.

    With one sender per database (SQLite, under the send lock) that is every
    `sending` one; on a shared send only those whose worker is dead (claims.reap).
    """
    if shared_sends(engine):
        return reap(engine, issue_id)
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


def is_due(now: datetime) -> sa.ColumnElement[bool]:
    """A delivery to attempt now: pending, or deferred and its retry time has come."""
    return sa.or_(
        D.c.status == DeliveryStatus.PENDING,
        sa.and_(
            D.c.status == DeliveryStatus.DEFERRED,
            sa.or_(D.c.next_attempt_at.is_(None), D.c.next_attempt_at <= now),
        ),
    )


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
                is_due(now),
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
        issue_created: datetime,
        policy: Policy,
        report: Report,
        progress: Callable[[int], None] | None = None,
        use_processes: bool = False,
        limiter: Limiter | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.engine = engine
        self.template = template
        self.factory = factory
        self.policy = policy
        self.report = report
        self.progress = progress
        self.use_processes = use_processes
        self.book = Bookkeeper(issue_created, policy, worker_id=worker_id)
        self.limiter = limiter or RateLimiter(policy.rate)
        self.stop = threading.Event()
        self.held: list[Finished] = []  # permanent refusals while the breaker is undecided
        self.silent = 0  # messages in a row the server never answered

    def run(self, recipients: Iterator[Recipient]) -> None:
        workers = [
            Worker(
                self.factory,
                self.template,
                use_process=self.use_processes,
                max_per_connection=self.policy.max_per_connection,
                name=f"smtp-{n}",
            )
            for n in range(self.policy.connections)
        ]
        conn = self.engine.connect().execution_options(sqlite_begin="IMMEDIATE")
        selector = selectors.DefaultSelector()  # kept for the run: cheaper than wait() per round
        for worker in workers:
            selector.register(worker.conn, selectors.EVENT_READ, worker)
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
                    if ok is None:  # no longer ours (another worker took it over)
                        continue
                    if not ok:
                        self.report.count("skipped")
                        self._tick()
                        continue
                    self.limiter.wait()
                    worker.submit(
                        recipient.delivery_id,
                        recipient.email,
                        recipient.name,
                        recipient.token,
                        message_id,
                        message_date(),
                    )
                    busy[worker] = recipient
                if not busy:
                    if exhausted or self.stop.is_set():
                        break
                    continue  # every start was skipped: fetch more
                for key, _events in selector.select():
                    worker = key.data
                    recipient = busy.pop(worker, None)
                    if recipient is None:  # not waiting on it: a dead worker's EOF
                        selector.unregister(worker.conn)
                        continue
                    finished += self._answer(worker, recipient)
        except BaseException:
            self.stop.set()  # Ctrl-C: what is in flight stays `sending` -> unknown
            raise
        finally:
            try:
                finished += self._release_held()  # the run ends before the breaker decided
                if finished:
                    self.book.commit(conn, finished, [])
            finally:
                conn.close()
                selector.close()
                for worker in workers:
                    worker.stop()

    def _answer(self, worker: Worker, recipient: Recipient) -> list[Finished]:
        """What to record for one worker's answer (nothing yet for a held refusal)."""
        try:
            answer = worker.conn.recv()
        except (EOFError, OSError):
            answer = ("crash", "the worker process died")
        kind = answer[0]
        if kind == "reply":
            self.silent = 0
            done = self._settle(recipient, Reply(*answer[1:]))
        elif kind in ("lost", "silent"):
            self.report.count("unknown")
            self.report.breaker.record(permanent=False)
            done = [Finished(recipient, DeliveryStatus.UNKNOWN, answer[1])]
            self.silent = self.silent + 1 if kind == "silent" else 0
            if self.silent >= SILENT_LIMIT:
                self._halt(
                    ServerSilent(
                        f"the SMTP server took {self.silent} messages in a row and never "
                        f"answered ({answer[1]})"
                    ),
                    requeued=False,
                )
        elif kind == "down":
            self._halt(answer[2] if len(answer) > 2 else TransportError(answer[1]))
            return [Finished(recipient, REQUEUE, answer[1])]
        else:
            self._halt(NewsletterError(f"sending stopped: {answer[1]}"))
            # The message may or may not have gone: leave it `sending` (-> unknown).
            return [Finished(recipient, DeliveryStatus.UNKNOWN, f"sender crashed: {answer[1]}")]
        self._tick()
        return done

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress(1)

    def _halt(self, exc: NewsletterError, *, requeued: bool = True) -> None:
        if self.report.stopped is None:
            self.report.stopped = exc
        self.stop.set()
        if requeued:
            self.report.count("requeued")

    def _settle(self, recipient: Recipient, reply: Reply) -> list[Finished]:
        text = str(reply)
        outcome = classify(reply)
        if outcome is Outcome.SENDER:
            self._halt(sender_error(reply))
            return [Finished(recipient, REQUEUE, text)]
        if outcome.permanent:
            return self._refused(recipient, reply, outcome)
        self.report.breaker.record(permanent=False)
        if outcome is Outcome.SENT:
            self.report.count("sent")
            return [Finished(recipient, DeliveryStatus.SENT)]
        self.report.count("deferred")  # DEFER or RECONNECT (421 after every reconnect)
        delays = self.policy.retry_delays or (60.0,)
        base = delays[min(recipient.attempts, len(delays) - 1)]
        retry_in = base * random.uniform(0.8, 1.2)
        return [Finished(recipient, DeliveryStatus.DEFERRED, text, retry_in=retry_in)]

    def _refused(self, recipient: Recipient, reply: Reply, outcome: Outcome) -> list[Finished]:
        """A permanent refusal: held while the circuit breaker is undecided."""
        text = str(reply)
        status = "bounce" if outcome is Outcome.BOUNCE else DeliveryStatus.FAILED
        done = Finished(recipient, status, text)
        breaker = self.report.breaker
        was_undecided = breaker.undecided
        if breaker.record(permanent=True):
            # Trip: every held refusal and this one go back to pending, nobody suppressed.
            self._halt(breaker.error(reply), requeued=False)
            back = [*self.held, done]
            self.held = []
            for _ in back:
                self.report.count("requeued")
            return [Finished(d.recipient, REQUEUE, d.error) for d in back]
        if breaker.undecided:
            self.held.append(done)  # stays `sending` until the breaker decides
            return []
        if was_undecided:  # decided just now, without a trip: record what was held
            return [*self._release_held(), self._count(done)]
        return [self._count(done)]

    def _release_held(self) -> list[Finished]:
        held, self.held = self.held, []
        return [self._count(done) for done in held]

    def _count(self, done: Finished) -> Finished:
        self.report.count("bounced" if done.status == "bounce" else "failed")
        return done
