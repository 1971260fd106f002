"""A real SMTP server for tests, with faults on demand.

The sender's fault handling (retry on 4xx, suppress on 5.1.x, stop on 5.7.x,
"unknown" when the connection drops after the body) can only be trusted if it
is exercised against a real SMTP conversation on a real socket, so this wraps
aiosmtpd's threaded ``Controller`` and lets a test decide, between sends, how
the server answers. This module is the server (port, TLS, AUTH, what it kept
and counted); how it answers is in tests/support/smtphandler.py.

Example::

    server = SMTPServer(auth=("user", "secret"), tls="starttls")
    server.start()
    server.configure(rcpt_replies={"gone@": "550 5.1.1 User unknown"})
    ...  # send to server.host, server.port with server.client_ssl_context()
    assert server.messages[0].parsed()["Subject"] == "Hello"
    server.stop()

Line length: aiosmtpd refuses any line of the message longer than 998
characters plus CRLF with "500 Line too long" (its ``line_length_limit``).
That is the behaviour of strict real servers, and it is kept on purpose:
a sender that forgets to encode long HTML lines must fail here, not in
production.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.lifecycle import ScratchServer
from tests.support.smtphandler import Behaviour, FaultyController, Handler, ReceivedMessage

__all__ = ["SMTPServer"]

TLSMode = Literal["starttls", "implicit"] | None

#: Big enough for a 1 MB newsletter and then some; aiosmtpd answers 552 past it.
DEFAULT_DATA_SIZE_LIMIT = 10 * 1024 * 1024


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Counter:
    """One of the server's counters, read as an attribute under its lock."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, server: SMTPServer, owner: type | None = None) -> int:
        return server._get(self.name)


class SMTPServer(ScratchServer):
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
        self._controller: FaultyController | None = None
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
            controller = FaultyController(
                Handler(self),
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

    def _stop_serving(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

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
        self.ca_file = self._scratch_folder("smtpserver-") / "ca.pem"
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

    #: connections accepted (a STARTTLS on one is not another)
    connections_opened = _Counter()
    #: MAIL FROM commands seen: the number of the last message
    transactions = _Counter()
    #: messages answered with a 2xx after DATA
    messages_accepted = _Counter()
    #: messages kept, but the connection dropped before (or instead of) the reply
    messages_dropped = _Counter()

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

    def _get(self, key: str) -> int:
        with self._lock:
            return self._counts[key]

    # ---- called from the server thread (smtphandler.ServerState) ----------

    def count(self, key: str) -> int:
        """One more of `key` (a connection, a transaction); the new count."""
        with self._lock:
            self._counts[key] += 1
            return self._counts[key]

    def record(self, message: ReceivedMessage) -> None:
        """Keep a message the server took (or dropped after its body)."""
        with self._lock:
            self._messages.append(message)
            self._counts["messages_dropped" if message.dropped else "messages_accepted"] += 1
            self._lock.notify_all()
