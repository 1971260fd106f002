"""SMTP workers: one connection each, in a thread or a child process, fed over a pipe.

The parent (delivery.Sender) keeps the database and does the bookkeeping;
a worker only pushes bytes and reports what the server said. SMTP sends are
run in child processes because smtplib is CPU-bound enough that threads add
little under the GIL; the in-memory and outbox transports stay in threads.

Messages on the pipe, parent -> worker: `(delivery_id, email, name, token, message_id, date)`, or
`None` (stop). The worker fills in the issue's message itself (its own copy of the
MessageTemplate), so only a few short strings cross the pipe per message.
Worker -> parent: one of
    ("reply", code, text, stage) the server's answer for that message (Reply.stage)
    ("lost", detail)             the connection died after the body: unknown
    ("silent", detail)           the body went out, no reply came in time: unknown
    ("down", message[, error])   the server cannot be used (the TransportError, if raised)
    ("crash", detail)            anything else; the run stops
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from newsletter.errors import TransportError
from newsletter.mail.message import MessageTemplate
from newsletter.mail.transport import BaseTransport, ConnectionLost, Reply, TransportFactory
from newsletter.mail.verp import envelope_sender

#: Pauses before reconnecting after a 421 or a connection lost before the body.
RECONNECT_DELAYS = (0.5, 2.0, 5.0)


def send_one(transport: BaseTransport, mail_from: str, rcpt: str, data: bytes) -> tuple[Any, ...]:
    """Send with reconnects on 421 and early drops; the answer to put on the pipe."""
    reply = Reply(421, "not tried")
    for delay in (*RECONNECT_DELAYS, None):
        try:
            reply = transport.send(mail_from, rcpt, data)
        except ConnectionLost as lost:
            if lost.after_body and lost.timed_out:
                return ("silent", f"the server took the message and never answered: {lost}")
            if lost.after_body:
                return ("lost", f"connection lost after the message was sent: {lost}")
            reply = Reply(421, f"connection lost: {lost}")
        except TransportError as exc:
            return ("down", exc.message, exc)  # its type says what failed (e.g. the login)
        if reply.code != 421:
            return ("reply", reply.code, reply.text, reply.stage)
        transport.close()
        if delay is not None:
            time.sleep(delay)
    return ("down", f"the SMTP server keeps closing the connection: {reply}")


def worker_loop(
    conn: Connection,
    factory: TransportFactory,
    template: MessageTemplate,
    max_per_connection: int,
) -> None:
    """Serve send requests until told to stop; always answers every request once."""
    transport = factory()
    count = 0
    try:
        while True:
            job = conn.recv()
            if job is None:
                break
            delivery_id, email, name, token, message_id, date = job
            try:
                data = template.personalise(email, name, token, message_id=message_id, date=date)
                mail_from = envelope_sender(template.settings, delivery_id)
                answer = send_one(transport, mail_from, email, data)
            except BaseException as exc:  # noqa: BLE001 - reported, the parent stops the run
                conn.send(("crash", repr(exc)))
                break
            conn.send(answer)
            count += 1
            if count >= max_per_connection:
                transport.close()
                count = 0
    except (EOFError, OSError):
        pass  # the parent went away
    finally:
        try:
            transport.close()
        finally:
            conn.close()


def _die_with_parent(parent: int) -> None:
    """Linux: be killed with the parent (kill -9 included); elsewhere a no-op.

    A forked worker inherits the parent's database sockets; if it outlived a
    killed parent, PostgreSQL would keep that session (and any row lock it
    holds) open, and the sibling workers' copies of each other's pipes would
    keep every worker waiting forever. Its message in flight stays `sending`
    and becomes `unknown`, as for any crash.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _process_main(parent: int, *args: Any) -> None:
    _die_with_parent(parent)
    worker_loop(*args)


class Worker:
    """The parent's end of one worker: `submit`, then read `conn` when it is ready."""

    def __init__(
        self,
        factory: TransportFactory,
        template: MessageTemplate,
        *,
        use_process: bool,
        max_per_connection: int,
        name: str,
    ) -> None:
        self.conn, child = multiprocessing.Pipe()
        args = (child, factory, template, max_per_connection)
        if use_process:
            # fork: the factory (a closure over the settings) needs no pickling.
            context = multiprocessing.get_context("fork")
            self.runner: Any = context.Process(
                target=_process_main, args=(os.getpid(), *args), name=name, daemon=True
            )
        else:
            self.runner = threading.Thread(target=worker_loop, args=args, name=name, daemon=True)
        self.runner.start()
        if use_process:
            child.close()  # the child has its own copy

    def submit(
        self, delivery_id: int, email: str, name: str | None, token: str, message_id: str, date: str
    ) -> None:
        self.conn.send((delivery_id, email, name, token, message_id, date))

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.runner.join(timeout=30)
        self.conn.close()
