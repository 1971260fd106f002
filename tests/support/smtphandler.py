"""How the test SMTP server answers: 250, or the fault a test asked for.

The aiosmtpd hooks of tests/support/smtpserver.py, kept apart from the server's
life cycle (port, TLS, AUTH, counters) so the faults read in one place: a RCPT
refused (550, 451...), a 421 that closes the connection at MAIL, RCPT or the end
of DATA, a connection dropped after the body with no reply, an end of DATA
answered late or never. A test sets them as a `Behaviour`; what the server took
responsibility for comes back as `ReceivedMessage`s.

Message numbers: every MAIL FROM starts a transaction, numbered 1, 2, 3...
since the server started (or since ``clear()``). Options that act on "the
N-th message" use that number, so a sender's retry is a new number and gets
the normal behaviour.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Literal, Protocol, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["Behaviour", "FaultyController", "Handler", "ReceivedMessage", "ServerState"]

Matcher = str | re.Pattern[str]
Stage = Literal["mail", "rcpt", "data"]


def _matches(matcher: Matcher, address: str) -> bool:
    """A str matches as a case-insensitive substring ("gone@"); a Pattern by search()."""
    if isinstance(matcher, re.Pattern):
        return matcher.search(address) is not None
    return matcher.lower() in address.lower()


def _match_any(matchers: Iterable[Matcher], address: str) -> bool:
    return any(_matches(m, address) for m in matchers)


@dataclass(frozen=True)
class Behaviour:
    """How the server answers; replaced as a whole so a send never sees half an update."""

    #: reply for RCPT TO by address: {"gone@": "550 5.1.1 User unknown"}; first match wins
    rcpt_replies: Mapping[Matcher, str] = field(default_factory=dict)
    #: reply for the end of DATA instead of 250, e.g. "554 5.7.1 Spam"
    data_reply: str | None = None
    #: answer 421 and close the connection on this message number (see module doc)
    fail_421_on: int | None = None
    fail_421_reply: str = "421 4.7.0 Try again later"
    #: when the 421 comes: in reply to MAIL FROM, RCPT TO or the end of DATA
    fail_421_stage: Stage = "data"
    #: close the connection after the body, before any reply, on this message number
    drop_after_body_on: int | None = None
    #: ...or when any recipient of the message matches one of these
    drop_after_body_rcpts: tuple[Matcher, ...] = ()
    #: seconds to wait before replying to the end of DATA
    data_delay: float = 0.0
    #: take the whole body, keep the connection open and never reply to the end of DATA
    #: (kept as a dropped message: the sender cannot know whether it was delivered)
    never_answer_data: bool = False


@dataclass
class ReceivedMessage:
    """One message the server took responsibility for."""

    mail_from: str
    rcpt_tos: list[str]
    #: the message exactly as received (CRLF line ends, dot-unstuffed, not decoded)
    data: bytes
    number: int
    mail_options: list[str] = field(default_factory=list)
    tls: bool = False
    auth_user: str | None = None
    #: True when the server kept the message but dropped the connection before replying
    dropped: bool = False

    def parsed(self) -> EmailMessage:
        """The message parsed with the modern policy, so headers come back decoded."""
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


class ServerState(Protocol):
    """What the hooks need from the server that owns them (SMTPServer), thread-safe."""

    pipelining: bool

    @property
    def behaviour(self) -> Behaviour: ...

    def count(self, key: str) -> int: ...

    def record(self, message: ReceivedMessage) -> None: ...


class _SMTPProtocol(SMTP):
    """aiosmtpd's SMTP that tells the owner about each new connection."""

    def __init__(self, handler: Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._owner = handler.owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # connection_made runs a second time after STARTTLS: count only the first
        is_new = self._original_transport is None
        super().connection_made(transport)
        if is_new:
            self._owner.count("connections_opened")


class FaultyController(Controller):
    """aiosmtpd's threaded Controller serving `Handler`, connections counted."""

    def factory(self) -> SMTP:
        return _SMTPProtocol(self.handler, **self.SMTP_kwargs)


async def _reply_and_close(server: SMTP, reply: str | None) -> None:
    """Send ``reply`` (if any), close the socket and wait to be cancelled.

    Returning to aiosmtpd would make it send its own reply; instead the
    handler task sleeps until connection_lost() cancels it.
    """
    if reply is not None:
        await server.push(reply)
    # aiosmtpd types it as BaseTransport; it is a Transport, which has abort()
    transport = cast("asyncio.Transport | None", server.transport)
    if transport is not None:
        if reply is None:
            transport.abort()  # nothing to flush: the client must see no reply at all
        else:
            transport.close()  # flush the reply, then FIN
    await asyncio.sleep(3600)


class Handler:
    """aiosmtpd hooks; all state lives in the owning server."""

    def __init__(self, owner: ServerState) -> None:
        self.owner = owner

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.owner.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        number = self.owner.count("transactions")
        session.message_number = number  # type: ignore[attr-defined]
        behaviour = self.owner.behaviour
        if behaviour.fail_421_stage == "mail" and behaviour.fail_421_on == number:
            await _reply_and_close(server, behaviour.fail_421_reply)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        behaviour = self.owner.behaviour
        number = getattr(session, "message_number", 0)
        if behaviour.fail_421_stage == "rcpt" and behaviour.fail_421_on == number:
            await _reply_and_close(server, behaviour.fail_421_reply)
        for matcher, reply in behaviour.rcpt_replies.items():
            if _matches(matcher, address):
                if reply.startswith("421"):
                    await _reply_and_close(server, reply)
                if reply.startswith("2"):
                    envelope.rcpt_tos.append(address)
                    envelope.rcpt_options.extend(rcpt_options)
                return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        behaviour = self.owner.behaviour
        number = getattr(session, "message_number", 0)
        transport = server.transport
        message = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            number=number,
            mail_options=list(envelope.mail_options),
            tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
            auth_user=_auth_user(session),
        )
        drop = behaviour.drop_after_body_on == number or any(
            _match_any(behaviour.drop_after_body_rcpts, rcpt) for rcpt in message.rcpt_tos
        )
        if drop:
            message.dropped = True
            self.owner.record(message)
            await _reply_and_close(server, None)
        if behaviour.never_answer_data:
            message.dropped = True
            self.owner.record(message)
            await asyncio.sleep(3600)  # cancelled when the client hangs up or the server stops
        if behaviour.data_delay > 0:
            # a client that gives up meanwhile cancels this task: nothing is recorded
            await asyncio.sleep(behaviour.data_delay)
        if behaviour.fail_421_stage == "data" and behaviour.fail_421_on == number:
            await _reply_and_close(server, behaviour.fail_421_reply)
        if behaviour.data_reply is not None:
            if behaviour.data_reply.startswith("421"):
                await _reply_and_close(server, behaviour.data_reply)
            if not behaviour.data_reply.startswith("2"):
                return behaviour.data_reply
        self.owner.record(message)
        return behaviour.data_reply or "250 2.0.0 OK: queued"


def _auth_user(session: Session) -> str | None:
    data = getattr(session, "auth_data", None)
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data if isinstance(data, str) else None
