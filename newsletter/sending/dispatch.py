"""One pass over an issue's due deliveries: hand them to N SMTP connections, settle the answers.

The loop (`Sender.run`): give a batch of up to `policy.batch` messages to every
idle connection (1, 2, 4 ... at first, so that a small send or the start of a
big one still goes message by message), and up to AHEAD batches queued per
connection, so that it sends one while the parent commits the next (each
connection runs in a child process, or a thread for the in-memory and outbox
transports; see connections.py), wait for a batch's answers,
settle them. Every batch is bracketed by durable writes (ledger.py), so a
crash at any moment leaves at most the batches in flight undecided (at most
connections x AHEAD x batch messages; docs/architecture.md, "Failure model"):

    pending --(commit)--> sending --SMTP--> sent / deferred / failed / unknown

The outcomes of a connection's batch and the `sending` marks of its next batch
go into one commit, made by this process alone (the connections never touch
the database). Deliveries left `sending` by a crashed run become `unknown`
(queue.recover), never `pending`: the server may have them.

Two guards stop a run that is going wrong: the circuit breaker of outcomes.py
(the permanent refusals of the start of a run are held back, unsuppressed,
until it has decided), and SILENT_LIMIT messages in a row that the server took
but never answered.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import selectors
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy.engine import Engine

from newsletter.db import writing
from newsletter.errors import NewsletterError, TransportError
from newsletter.mail.message import MessageTemplate, message_date
from newsletter.mail.transport import Reply, TransportFactory
from newsletter.models import DeliveryStatus
from newsletter.sending.connections import (
    Answer,
    Connection,
    Crashed,
    Down,
    Job,
    Lost,
    NotTried,
    Replied,
    Silent,
)
from newsletter.sending.ledger import Ledger
from newsletter.sending.outcomes import Breaker, Outcome, classify, sender_error
from newsletter.sending.pacing import Limiter, RateLimiter
from newsletter.sending.policy import AHEAD, Policy
from newsletter.sending.work import BOUNCE, REQUEUE, Finished, Recipient

#: The counters of a Report (its attribute names), for `Report.count`.
Counter = Literal["sent", "deferred", "failed", "bounced", "unknown", "skipped", "requeued"]
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
    """Counts of one issue in this run, for the summary line; thread-safe via `count`."""

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

    def count(self, name: Counter) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    @property
    def attempted(self) -> int:
        return self.sent + self.deferred + self.failed + self.bounced + self.unknown


class Sender:
    """Feeds one pass over an issue's due deliveries to N connections, a batch each at a
    time; `worker_id` (a shared send) fences its starts by this worker's claims."""

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
        self.ledger = Ledger(issue_created, policy, worker_id=worker_id)
        self.limiter = limiter or RateLimiter(policy.rate)
        self.stop = threading.Event()
        #: Read by the connections before each message (shared memory: they may be forked).
        self.halted = multiprocessing.RawValue("b", 0)
        self.held: list[Finished] = []  # permanent refusals while the breaker is undecided
        self.silent = 0  # messages in a row the server never answered

    def run(self, recipients: Iterator[Recipient]) -> None:
        """Send to every recipient (or until stopped); every answer is recorded on return."""
        connections = [
            Connection(
                self.factory,
                self.template,
                use_process=self.use_processes,
                max_per_connection=self.policy.max_per_connection,
                name=f"smtp-{n}",
                halted=self.halted,
            )
            for n in range(self.policy.connections)
        ]
        db = writing(self.engine.connect())
        Ledger.durable(db)
        selector = selectors.DefaultSelector()  # kept for the run: cheaper than wait() per round
        for connection in connections:
            selector.register(connection.pipe, selectors.EVENT_READ, connection)
        busy: dict[Connection, deque[list[Recipient]]] = {}  # batches queued, in order
        finished: list[Finished] = []
        source = iter(recipients)
        exhausted = False
        sizes = dict.fromkeys(connections, 1)  # slow start: 1, 2, 4 ... up to policy.batch
        try:
            while True:
                # Room for AHEAD batches each; every connection's first batch comes first.
                idle = [
                    c
                    for round_ in range(AHEAD)
                    for c in connections
                    if len(busy.get(c, ())) <= round_
                ]
                owners: list[Connection] = []  # the connection of each new batch
                starts: list[tuple[int, Recipient, str]] = []  # (batch number, ...)
                for connection in idle:
                    if exhausted or self.stop.is_set():
                        break
                    size = sizes[connection]
                    sizes[connection] = min(size * 2, max(1, self.policy.batch))
                    for _ in range(size):
                        recipient = next(source, None)
                        if recipient is None:
                            exhausted = True
                            break
                        message_id = self.template.new_message_id()
                        starts.append((len(owners), recipient, message_id))
                    owners.append(connection)
                allowed = self.ledger.commit(db, finished, [(r, m) for _, r, m in starts])
                finished = []
                batches: dict[int, tuple[list[Job], list[Recipient]]] = {}
                date = ""
                for (number, recipient, message_id), ok in zip(starts, allowed, strict=True):
                    if ok is None:  # no longer ours (another worker took it over)
                        continue
                    if not ok:
                        self.report.count("skipped")
                        self._tick()
                        continue
                    self.limiter.wait()
                    jobs, sent_to = batches.setdefault(number, ([], []))
                    if not jobs:
                        date = message_date()  # once per batch: they go out within seconds
                    jobs.append(
                        (
                            recipient.delivery_id,
                            recipient.email,
                            recipient.name,
                            recipient.token,
                            message_id,
                            date,
                        )
                    )
                    sent_to.append(recipient)
                for number, (jobs, sent_to) in batches.items():
                    if owners[number].submit(jobs):
                        busy.setdefault(owners[number], deque()).append(sent_to)
                    else:  # never handed over: back to pending, and the run stops
                        self._halt(
                            NewsletterError("sending stopped: a connection ended"),
                            requeued=False,
                        )
                        for recipient in sent_to:
                            finished += self._answer(NotTried(), recipient)
                if not busy:
                    if exhausted or self.stop.is_set():
                        break
                    continue  # every start was skipped: fetch more
                finished += self._collect(selector, busy)
        except BaseException:
            self.stop.set()  # Ctrl-C: what is in flight stays `sending` -> unknown
            raise
        finally:
            try:
                finished += self._release_held()  # the run ends before the breaker decided
                if finished:
                    self.ledger.commit(db, finished, [])
            finally:
                with contextlib.suppress(Exception):  # back to the pool as it came
                    Ledger.durable(db, on=False)
                db.close()
                selector.close()
                for connection in connections:
                    connection.stop()

    def _collect(
        self, selector: selectors.BaseSelector, busy: dict[Connection, deque[list[Recipient]]]
    ) -> list[Finished]:
        """Wait for the connections that answered, and what to record for their answers."""
        finished: list[Finished] = []
        for ready, _events in selector.select():
            connection = ready.data
            queued = busy.get(connection)
            if not queued:  # not waiting on it: a dead connection's EOF
                selector.unregister(connection.pipe)
                continue
            batch = queued.popleft()
            if not queued:
                del busy[connection]
            answers = connection.receive()
            if isinstance(answers, Crashed):  # the process died: nobody knows
                for recipient in batch:
                    finished += self._answer(answers, recipient)
                continue
            if any(not isinstance(a, Replied | NotTried) for a in answers):
                connection.trouble()  # NotTried only echoes a trouble seen before
            for answer, recipient in zip(answers, batch, strict=True):
                finished += self._answer(answer, recipient)
        return finished

    def _answer(self, answer: Answer, recipient: Recipient) -> list[Finished]:
        """What to record for one connection's answer (nothing yet for a held refusal)."""
        match answer:
            case Replied(reply):
                self.silent = 0
                done = self._settle(recipient, reply)
            case Lost(detail) | Silent(detail):
                self.report.count("unknown")
                self.report.breaker.record(permanent=False)
                done = [Finished(recipient, DeliveryStatus.UNKNOWN, detail)]
                self.silent = self.silent + 1 if isinstance(answer, Silent) else 0
                if self.silent >= SILENT_LIMIT:
                    self._halt(
                        ServerSilent(
                            f"the SMTP server took {self.silent} messages in a row and never "
                            f"answered ({detail})"
                        ),
                        requeued=False,
                    )
            case Down(detail, error):
                self._halt(error if error is not None else TransportError(detail))
                return [Finished(recipient, REQUEUE, detail)]
            case NotTried():  # the batch stopped before it: it never left, back to pending
                self.report.count("requeued")
                return [Finished(recipient, REQUEUE, None)]
            case Crashed(detail):
                self._halt(NewsletterError(f"sending stopped: {detail}"))
                # The message may or may not have gone: record it unknown.
                return [Finished(recipient, DeliveryStatus.UNKNOWN, f"sender crashed: {detail}")]
        self._tick()
        return done

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress(1)

    def _halt(self, exc: NewsletterError, *, requeued: bool = True) -> None:
        if self.report.stopped is None:
            self.report.stopped = exc
        self.stop.set()
        self.halted.value = 1
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
        retry_in = base * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret
        return [Finished(recipient, DeliveryStatus.DEFERRED, text, retry_in=retry_in)]

    def _refused(self, recipient: Recipient, reply: Reply, outcome: Outcome) -> list[Finished]:
        """A permanent refusal: held while the circuit breaker is undecided."""
        text = str(reply)
        status = BOUNCE if outcome is Outcome.BOUNCE else DeliveryStatus.FAILED
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
        self.report.count("bounced" if done.status == BOUNCE else "failed")
        return done
