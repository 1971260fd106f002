"""A real SMTP server for tests, with faults on demand.

The sender's fault handling (retry on 4xx, suppress on 5.1.x, stop on 5.7.x,
"unknown" when the connection drops after the body) can only be trusted if it
is exercised against a real SMTP conversation on a real socket, so this wraps
aiosmtpd's threaded ``Controller`` and lets a test decide, between sends, how
the server answers.

Example::

    server = SMTPServer(auth=("user", "secret"), tls="starttls")
    server.start()
    server.configure(rcpt_replies={"gone@": "550 5.1.1 User unknown"})
    ...  # send to server.host, server.port with server.client_ssl_context()
    assert server.messages[0].parsed()["Subject"] == "Hello"
    server.stop()

Message numbers: every MAIL FROM starts a transaction, numbered 1, 2, 3...
since the server started (or since ``clear()``). Options that act on "the
N-th message" use that number, so a sender's retry is a new number and gets
the normal behaviour.

Line length: aiosmtpd refuses any line of the message longer than 998
characters plus CRLF with "500 Line too long" (its ``line_length_limit``).
That is the behaviour of strict real servers, and it is kept on purpose:
a sender that forgets to encode long HTML lines must fail here, not in
production.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["Behaviour", "ReceivedMessage", "SMTPServer"]

Matcher = str | re.Pattern[str]
TLSMode = Literal["starttls", "implicit"] | None
Stage = Literal["mail", "rcpt", "data"]

#: Big enough for a 1 MB newsletter and then some; aiosmtpd answers 552 past it.
DEFAULT_DATA_SIZE_LIMIT = 10 * 1024 * 1024


def _matches(matcher: Matcher, address: str) -> bool:
    """A str matches as a case-insensitive substring ("gone@"); a Pattern by search()."""
    if isinstance(matcher, re.Pattern):
        return matcher.search(address) is not None
    return matcher.lower() in address.lower()


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


class _SMTPProtocol(SMTP):
    """aiosmtpd's SMTP that tells the owner about each new connection."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._owner = handler.owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # connection_made runs a second time after STARTTLS: count only the first
        is_new = self._original_transport is None
        super().connection_made(transport)
        if is_new:
            self._owner._count("connections_opened")


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _SMTPProtocol(self.handler, **self.SMTP_kwargs)


async def _reply_and_close(server: SMTP, reply: str | None) -> None:
    """Send ``reply`` (if any), close the socket and wait to be cancelled.

    Returning to aiosmtpd would make it send its own reply; instead the
    handler task sleeps until connection_lost() cancels it.
    """
    if reply is not None:
        await server.push(reply)
    transport = server.transport
    if transport is not None:
        if reply is None:
            transport.abort()  # nothing to flush: the client must see no reply at all
        else:
            transport.close()  # flush the reply, then FIN
    await asyncio.sleep(3600)


class _Handler:
    """aiosmtpd hooks; all state lives in the owning SMTPServer."""

    def __init__(self, owner: SMTPServer) -> None:
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
        number = self.owner._count("transactions")
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
            self.owner._record(message)
            await _reply_and_close(server, None)
        if behaviour.never_answer_data:
            message.dropped = True
            self.owner._record(message)
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
        self.owner._record(message)
        return behaviour.data_reply or "250 2.0.0 OK: queued"


def _auth_user(session: Session) -> str | None:
    data = getattr(session, "auth_data", None)
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data if isinstance(data, str) else None


def _match_any(matchers: Iterable[Matcher], address: str) -> bool:
    return any(_matches(m, address) for m in matchers)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SMTPServer:
    """A real SMTP server on 127.0.0.1 and a free port, run in a thread.

    Constructor options (fixed for the server's life):
      auth: (username, password) to offer AUTH PLAIN/LOGIN; required when given
        unless ``auth_required=False``. Works on plain connections too.
      tls: None, "starttls" (offer STARTTLS) or "implicit" (smtps). The
        certificate is made at start by a throw-away CA (trustme); trust it
        with ``client_ssl_context()`` or ``ca_file``.
      require_starttls: refuse mail before STARTTLS (only with tls="starttls").
      data_size_limit: bytes; 552 past it.
    Behaviour options (see ``Behaviour``) may be given here and changed at any
    time with ``configure()``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        auth_required: bool | None = None,
        tls: TLSMode = None,
        require_starttls: bool = False,
        data_size_limit: int = DEFAULT_DATA_SIZE_LIMIT,
        pipelining: bool = True,
        **behaviour: Any,
    ) -> None:
        if tls not in (None, "starttls", "implicit"):
            raise ValueError(f"tls must be None, 'starttls' or 'implicit', not {tls!r}")
        self.auth = auth
        self.auth_required = bool(auth) if auth_required is None else auth_required
        self.tls: TLSMode = tls
        self.require_starttls = require_starttls
        self.data_size_limit = data_size_limit
        #: advertise RFC 2920 PIPELINING in EHLO (aiosmtpd reads pipelined commands fine)
        self.pipelining = pipelining
        self.port = 0
        self._lock = threading.Condition(threading.RLock())
        self._behaviour = Behaviour(**behaviour)
        self._messages: list[ReceivedMessage] = []
        self._counts = dict.fromkeys(
            ("connections_opened", "transactions", "messages_accepted", "messages_dropped"), 0
        )
        self._controller: _Controller | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._ca: Any = None
        self.ca_file: Path | None = None

    # ---- life cycle -------------------------------------------------------

    def start(self) -> SMTPServer:
        """Bind and serve; retries on the (rare) race for the free port."""
        server_ctx = self._make_tls() if self.tls else None
        kwargs: dict[str, Any] = {
            "data_size_limit": self.data_size_limit,
            "server_hostname": "localhost",  # avoids a slow getfqdn() per connection
            "ident": "newsletter-test-smtpd",
        }
        if self.auth is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=self.auth_required,
                auth_require_tls=False,
            )
        if self.tls == "starttls":
            kwargs.update(tls_context=server_ctx, require_starttls=self.require_starttls)
        last_error: Exception | None = None
        for _ in range(5):
            self.port = _free_port(self.host)
            controller = _Controller(
                _Handler(self),
                hostname=self.host,
                port=self.port,
                ssl_context=server_ctx if self.tls == "implicit" else None,
                **kwargs,
            )
            try:
                controller.start()
            except Exception as error:  # port taken between probe and bind
                last_error = error
                continue
            self._controller = controller
            self.clear()  # forget the controller's own readiness probe connection
            return self
        raise RuntimeError(f"could not start the test SMTP server: {last_error}")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> SMTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- addresses and TLS ------------------------------------------------

    @property
    def url(self) -> str:
        """NEWSLETTER_SMTP_URL for this server, credentials included."""
        scheme = {None: "smtp", "starttls": "smtp+starttls", "implicit": "smtps"}[self.tls]
        creds = ""
        if self.auth is not None:
            creds = f"{quote(self.auth[0], safe='')}:{quote(self.auth[1], safe='')}@"
        return f"{scheme}://{creds}{self.host}:{self.port}"

    def _make_tls(self) -> ssl.SSLContext:
        import trustme  # test dependency, only needed for TLS servers

        self._ca = trustme.CA()
        cert = self._ca.issue_cert("127.0.0.1", "localhost")
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(server_ctx)
        self._tmpdir = tempfile.TemporaryDirectory(prefix="smtpserver-")
        self.ca_file = Path(self._tmpdir.name) / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))
        return server_ctx

    def client_ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts this server's certificate.

        Code that builds its own ``ssl.create_default_context()`` trusts it too
        when the test sets the environment variable SSL_CERT_FILE to ``ca_file``.
        """
        if self._ca is None:
            raise RuntimeError("this server has no TLS (pass tls='starttls' or 'implicit')")
        ctx = ssl.create_default_context()
        self._ca.configure_trust(ctx)
        return ctx

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        assert self.auth is not None
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = self.auth
        ok = auth_data.login == user.encode() and auth_data.password == password.encode()
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    # ---- behaviour --------------------------------------------------------

    @property
    def behaviour(self) -> Behaviour:
        with self._lock:
            return self._behaviour

    def configure(self, **changes: Any) -> None:
        """Change some behaviour options; the others keep their values."""
        with self._lock:
            self._behaviour = dataclasses.replace(self._behaviour, **changes)

    def reset_behaviour(self) -> None:
        """Back to a server that accepts everything at once."""
        with self._lock:
            self._behaviour = Behaviour()

    # ---- what was received ------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of the messages kept so far (dropped-after-body ones included)."""
        with self._lock:
            return list(self._messages)

    @property
    def connections_opened(self) -> int:
        return self._get("connections_opened")

    @property
    def transactions(self) -> int:
        """MAIL FROM commands seen: the number of the last message."""
        return self._get("transactions")

    @property
    def messages_accepted(self) -> int:
        """Messages answered with a 2xx after DATA."""
        return self._get("messages_accepted")

    @property
    def messages_dropped(self) -> int:
        return self._get("messages_dropped")

    def clear(self) -> None:
        """Forget messages and zero the counters (message numbers restart at 1)."""
        with self._lock:
            self._messages.clear()
            for key in self._counts:
                self._counts[key] = 0

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until ``count`` messages are kept, for senders running in other threads."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = len(self._messages)
                    raise TimeoutError(f"{got} of {count} messages after {timeout}s")
                self._lock.wait(remaining)
            return list(self._messages)

    def recipients(self) -> list[str]:
        """Every envelope recipient of every kept message, in order."""
        return [rcpt for msg in self.messages for rcpt in msg.rcpt_tos]

    # ---- called from the server thread ------------------------------------

    def _get(self, key: str) -> int:
        with self._lock:
            return self._counts[key]

    def _count(self, key: str) -> int:
        with self._lock:
            self._counts[key] += 1
            return self._counts[key]

    def _record(self, message: ReceivedMessage) -> None:
        with self._lock:
            self._messages.append(message)
            self._counts["messages_dropped" if message.dropped else "messages_accepted"] += 1
            self._lock.notify_all()
