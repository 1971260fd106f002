"""SMTP connections: each one session in a child process (or a thread), fed over a pipe.

A *connection* here is one SMTP session and the process (or thread) that
drives it; a *worker* is a whole `newsletter send` process (registry.py), which
runs several connections. The parent (dispatch.Sender) keeps the database and
writes the ledger; a connection only pushes bytes and reports what the server
said. SMTP connections run in child processes (forked: the transport factory
needs no pickling) because smtplib is CPU-bound enough that threads add little
under the GIL; the in-memory and outbox transports stay in threads.

The pipe carries small pickled values, one per *batch* of messages, not one
per message (each pipe round trip costs the parent tens of microseconds).
Parent -> connection: (epoch, a list of Jobs), or None (stop). Up to AHEAD
batches are queued per connection, so that it never waits for the parent's
commit (a durable commit takes ~10 ms on PostgreSQL). After any answer but
Replied the connection answers NotTried to the batches already queued
behind it (their epoch is not newer than the troubled one), so that only the
parent decides whether more messages go out; and once the parent stops the
run (`halted`, a byte in shared memory), no connection starts another message.
The connection fills in the issue's message itself (its own copy of the
MessageTemplate, DKIM signing included, so the RSA work runs in the connection
processes, beside the SMTP traffic): only a few short strings cross the pipe
per message.
Connection -> parent, one list per batch, one answer per Job, in order:
    Replied(reply)      the server's answer for that message (Reply.stage says to what)
    Lost(detail)        the connection died after the body: unknown
    Silent(detail)      the body went out, no reply came in time: unknown
    Down(detail, error) the server cannot be used (the TransportError, if one was raised)
    Crashed(detail)     anything else; the run stops
    NotTried()          the batch stopped before this one (after any answer but Replied):
                        the message never left, so it goes back to pending
If the process dies, the parent gets Crashed for the whole batch: unknown.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection as PipeEnd
from typing import Any

from newsletter.errors import TransportError
from newsletter.mail.message import MessageTemplate
from newsletter.mail.transport import BaseTransport, ConnectionLost, Reply, TransportFactory
from newsletter.mail.verp import envelope_sender

#: Pauses before reconnecting after a 421 or a connection lost before the body.
RECONNECT_DELAYS = (0.5, 2.0, 5.0)


#: Parent -> connection: send the issue's message to one recipient. A plain tuple
#: (delivery_id, email, name, token, message_id, date): pickling a list of tuples costs
#: a fraction of a list of dataclasses, and the parent pickles one per message.
Job = tuple[int, str, str | None, str, str, str]


@dataclass(frozen=True)
class Replied:
    """The server answered the message (any code but a 421 that reconnects could not cure)."""

    reply: Reply


@dataclass(frozen=True)
class Lost:
    """The connection died after the body went out: the server may have the message."""

    detail: str


@dataclass(frozen=True)
class Silent:
    """The body went out and no reply came in time: the server may have the message."""

    detail: str


@dataclass(frozen=True)
class Down:
    """The server cannot be used; `error` is the TransportError raised, if any (its type
    says what failed, e.g. the login)."""

    detail: str
    error: TransportError | None = None


@dataclass(frozen=True)
class Crashed:
    """Anything else went wrong in the connection, or its process died."""

    detail: str


@dataclass(frozen=True)
class NotTried:
    """The batch stopped before this message: it never left this process."""


Answer = Replied | Lost | Silent | Down | Crashed | NotTried


def send_one(transport: BaseTransport, mail_from: str, rcpt: str, data: bytes) -> Answer:
    """Send with reconnects on 421 and early drops; the answer to put on the pipe."""
    reply = Reply(421, "not tried")
    for delay in (*RECONNECT_DELAYS, None):
        try:
            reply = transport.send(mail_from, rcpt, data)
        except ConnectionLost as lost:
            if lost.after_body and lost.timed_out:
                return Silent(f"the server took the message and never answered: {lost}")
            if lost.after_body:
                return Lost(f"connection lost after the message was sent: {lost}")
            reply = Reply(421, f"connection lost: {lost}")
        except TransportError as exc:
            return Down(exc.message, exc)
        if reply.code != 421:
            return Replied(reply)
        transport.close()
        if delay is not None:
            time.sleep(delay)
    return Down(f"the SMTP server keeps closing the connection: {reply}")


def connection_loop(
    pipe: PipeEnd,
    factory: TransportFactory,
    template: MessageTemplate,
    max_per_connection: int,
    halted: Any = None,
) -> None:
    """Serve batches of Jobs until told to stop; always answers every Job of a batch once,
    in one list."""
    transport = factory()
    count = 0
    settings = template.settings
    stale = -1  # batches of this epoch or older are answered NotTried (see Connection)
    try:
        while True:
            batch: tuple[int, list[Job]] | None = pipe.recv()
            if batch is None:
                break
            epoch, jobs = batch
            answers: list[Answer] = []
            stop = epoch <= stale  # queued before the parent saw the trouble: not tried
            for delivery_id, email, name, token, message_id, date in jobs:
                if halted is not None and halted.value:
                    stop = True  # the parent stopped the run: nothing more leaves
                if stop:
                    answers.append(NotTried())
                    continue
                try:
                    data = template.personalise(
                        email, name, token, message_id=message_id, date=date
                    )
                    mail_from = envelope_sender(settings, delivery_id)
                    answer = send_one(transport, mail_from, email, data)
                except BaseException as exc:  # reported: the parent stops the run
                    answer = Crashed(repr(exc))
                answers.append(answer)
                # Anything but a reply: the parent decides before more go out.
                stop = not isinstance(answer, Replied)
                count += 1
                if count >= max_per_connection:
                    transport.close()
                    count = 0
            pipe.send(answers)  # after a Crashed too: the parent stops the run, and
            if stop:  # what it queued behind comes back NotTried until then
                stale = max(stale, epoch)
    except (EOFError, OSError):
        pass  # the parent went away
    finally:
        try:
            transport.close()
        finally:
            pipe.close()


def _die_with_parent(parent: int) -> None:
    """Linux: be killed with the parent (kill -9 included); elsewhere a no-op.

    A forked connection process inherits the parent's database sockets; if it
    outlived a killed parent, PostgreSQL would keep that session (and any row
    lock it holds) open, and the sibling processes' copies of each other's
    pipes would keep every one waiting forever. Its message in flight stays
    `sending` and becomes `unknown`, as for any crash.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _process_main(
    parent: int,
    pipe: PipeEnd,
    factory: TransportFactory,
    template: MessageTemplate,
    max_per_connection: int,
    halted: Any,
) -> None:
    _die_with_parent(parent)
    # Everything inherited from the parent is frozen in this child only (the parent,
    # perhaps a long-lived caller of run_send, keeps collecting as before): no collection
    # here walks those objects, so their pages stay shared instead of being copied.
    gc.freeze()
    connection_loop(pipe, factory, template, max_per_connection, halted)


class Connection:
    """The parent's end of one SMTP connection: `submit` a batch of Jobs, then `receive`
    their answers when `pipe` is ready to read."""

    def __init__(
        self,
        factory: TransportFactory,
        template: MessageTemplate,
        *,
        use_process: bool,
        max_per_connection: int,
        name: str,
        halted: Any = None,
    ) -> None:
        self.pipe, child = multiprocessing.Pipe()
        self.epoch = 0
        args = (child, factory, template, max_per_connection, halted)
        self.runner: Any
        if use_process:
            context = multiprocessing.get_context("fork")
            self.runner = context.Process(
                target=_process_main, args=(os.getpid(), *args), name=name, daemon=True
            )
        else:
            self.runner = threading.Thread(
                target=connection_loop, args=args, name=name, daemon=True
            )
        self.runner.start()
        if use_process:
            child.close()  # the child has its own copy

    def submit(self, jobs: list[Job]) -> bool:
        """Queue a batch; False when the connection is gone (none of it left)."""
        try:
            self.pipe.send((self.epoch, jobs))
        except OSError:  # BrokenPipeError: it ended (its Crashed answer is on the way)
            return False
        return True

    def trouble(self) -> None:
        """The parent saw an answer other than a reply: the batch already queued behind
        it comes back NotTried, so that only the parent decides whether more go out."""
        self.epoch += 1

    def receive(self) -> list[Answer] | Crashed:
        """The answers to the batch submitted last (Crashed if the process died: then
        nobody knows which of its messages went)."""
        try:
            answers: list[Answer] = self.pipe.recv()
        except (EOFError, OSError):
            return Crashed("the connection process died")
        return answers

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.send(None)
        self.runner.join(timeout=30)
        self.pipe.close()
