"""How bytes leave: a small interface with SMTP, outbox-folder and in-memory transports.

Like httpx's BaseTransport/MockTransport: the send engine only calls
`send(mail_from, rcpt, data) -> Reply` and `close()`, so it is tested both in
memory and against a real SMTP server.

`send` returns the server's reply for that one message (2xx, 4xx or 5xx) and
raises only when the connection itself is gone:

- `ConnectionLost(after_body=False)`: nothing was accepted; retry on a new
  connection is safe;
- `ConnectionLost(after_body=True)`: the body went out but no reply came: the
  server may have the message, so the delivery is *unknown*, never retried
  automatically (the listmonk #1109 / postal #295 duplicate sends);
  `timed_out` says the server kept the connection but never answered within
  the final-reply wait (NEWSLETTER_SMTP_DATA_TIMEOUT);
- `TransportError` (from `connect`): the server cannot be used at all.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import smtplib
import socket
import ssl
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from smtplib import quoteaddr
from typing import cast

from newsletter.config import Settings
from newsletter.errors import LoginRefused, TransportError
from newsletter.settingvalues import SmtpConfig

#: RFC 5321 suggests up to 10 minutes for the reply to the end of DATA; a relay that
#: takes that long holds every message that long, so the default is shorter (a setting).
FINAL_REPLY_TIMEOUT = 120.0
_outbox_sequence = itertools.count(1)


def dot_stuffed(data: bytes) -> bytes:
    """RFC 5321 4.5.2: a line that starts with '.' gets a second one (bytes.replace is
    several times faster than the regular expression on a 30 KB message)."""
    stuffed = data.replace(b"\n.", b"\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


@dataclass(frozen=True)
class Reply:
    code: int
    text: str = ""
    #: the command answered: "mail", "rcpt", "data" (before the body) or "body" (its end)
    stage: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


class ConnectionLost(Exception):
    """The connection broke during a message; `after_body` says whether the server may have it."""

    def __init__(self, detail: str, *, after_body: bool, timed_out: bool = False) -> None:
        super().__init__(detail)
        self.after_body = after_body
        self.timed_out = timed_out  # the body went out and no reply came in time


class BaseTransport(ABC):
    """One connection (or one writer): not shared between threads."""

    @abstractmethod
    def send(self, mail_from: str, rcpt: str, data: bytes) -> Reply:
        """Deliver one message (CRLF line ends) to one recipient."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the connection."""

    def __enter__(self) -> BaseTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- SMTP


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0][:200]


def _reply_text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())[:500]


class SMTPTransport(BaseTransport):
    """One SMTP connection, reused for many messages; connects lazily."""

    def __init__(
        self,
        config: SmtpConfig,
        *,
        timeout: float = 30.0,
        final_reply_timeout: float = FINAL_REPLY_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        self.config = config
        self.timeout = timeout
        self.final_reply_timeout = max(final_reply_timeout, timeout)
        self.ssl_context = ssl_context
        self.local_hostname = local_hostname
        self._smtp: smtplib.SMTP | None = None

    # -- connection -------------------------------------------------------------

    def connect(self) -> None:
        """Open, say EHLO, STARTTLS and log in; server-level failures raise TransportError."""
        self._smtp = self._open()

    def _open(self) -> smtplib.SMTP:
        """A connection ready for MAIL FROM (what connect() keeps)."""
        cfg = self.config
        where = f"{cfg.host}:{cfg.port}"
        context = self.ssl_context  # made only for TLS: loading the CA store costs ~25 ms
        if context is None and cfg.security in ("tls", "starttls"):
            context = ssl.create_default_context()
        smtp: smtplib.SMTP | None = None
        try:
            if cfg.security == "tls":
                smtp = smtplib.SMTP_SSL(
                    cfg.host,
                    cfg.port,
                    local_hostname=self.local_hostname,
                    timeout=self.timeout,
                    context=context,
                )
            else:
                smtp = smtplib.SMTP(
                    cfg.host, cfg.port, local_hostname=self.local_hostname, timeout=self.timeout
                )
            smtp.ehlo()
            if cfg.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise TransportError(f"SMTP server {where} does not offer STARTTLS")
                smtp.starttls(context=context)
                smtp.ehlo()
            if cfg.username:
                smtp.login(cfg.username, cfg.password or "")
        except TransportError:
            self._abandon(smtp)
            raise
        except socket.gaierror as exc:
            raise TransportError(f"cannot resolve SMTP host {cfg.host!r}: {exc.strerror}") from None
        except ConnectionRefusedError:
            raise TransportError(f"SMTP server {where} refused the connection") from None
        except TimeoutError:
            self._abandon(smtp)
            raise TransportError(f"SMTP server {where} did not answer in time") from None
        except ssl.SSLError as exc:
            self._abandon(smtp)
            raise TransportError(f"TLS with SMTP server {where} failed: {_describe(exc)}") from None
        except smtplib.SMTPAuthenticationError as exc:
            self._abandon(smtp)
            raise LoginRefused(
                f"SMTP server {where} refused the login for {cfg.username!r}: "
                f"{exc.smtp_code} {_reply_text(exc.smtp_error)}"
            ) from None
        except smtplib.SMTPException as exc:
            self._abandon(smtp)
            raise TransportError(f"SMTP server {where}: {_describe(exc)}") from None
        except OSError as exc:
            self._abandon(smtp)
            raise TransportError(
                f"cannot connect to SMTP server {where}: {_describe(exc)}"
            ) from None
        return smtp

    @staticmethod
    def _abandon(smtp: smtplib.SMTP | None) -> None:
        if smtp is not None:
            with contextlib.suppress(OSError):
                smtp.close()

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    # -- one message ------------------------------------------------------------

    def send(self, mail_from: str, rcpt: str, data: bytes) -> Reply:
        smtp = self._smtp
        if smtp is None:
            smtp = self._smtp = self._open()
        body_sent = False
        try:
            refused = self._envelope(smtp, mail_from, rcpt)
            if refused is not None:
                return refused
            payload = dot_stuffed(data)
            end = b".\r\n" if payload.endswith(b"\r\n") else b"\r\n.\r\n"
            smtp.send(payload + end)
            body_sent = True
            if smtp.sock is not None:
                smtp.sock.settimeout(self.final_reply_timeout)
            try:
                code, text = smtp.getreply()
            finally:
                if smtp.sock is not None:
                    smtp.sock.settimeout(self.timeout)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._smtp = None
            self._abandon(smtp)
            # smtplib turns a read timeout into SMTPServerDisconnected("... timed out")
            timed_out = body_sent and (
                isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)
            )
            if timed_out:
                detail = f"no reply to the end of the message within {self.final_reply_timeout:g} s"
            else:
                detail = _describe(exc)
            raise ConnectionLost(detail, after_body=body_sent, timed_out=timed_out) from None
        reply = Reply(code, _reply_text(text), "body")
        if code == 421:
            self.close()
        return reply

    def _envelope(self, smtp: smtplib.SMTP, mail_from: str, rcpt: str) -> Reply | None:
        """MAIL, RCPT and DATA; None when the server waits for the body (354).

        With PIPELINING (RFC 2920) the three commands go in one write and their
        replies are read together: one round trip instead of three.
        """
        if not smtp.has_extn("pipelining"):
            code, text = smtp.mail(mail_from)
            if code != 250:
                return self._refused(code, text, "mail")
            code, text = smtp.rcpt(rcpt)
            if code not in (250, 251):
                return self._refused(code, text, "rcpt")
            code, text = smtp.docmd("data")
            return None if code == 354 else self._refused(code, text, "data")
        commands = f"MAIL FROM:{quoteaddr(mail_from)}\r\nRCPT TO:{quoteaddr(rcpt)}\r\nDATA\r\n"
        smtp.send(commands.encode("ascii"))
        (m_code, m_text), (r_code, r_text), (d_code, d_text) = (
            smtp.getreply(),
            smtp.getreply(),
            smtp.getreply(),
        )
        envelope_ok = m_code == 250 and r_code in (250, 251)
        if d_code == 354 and not envelope_ok:
            smtp.send(b".\r\n")  # a server that took DATA anyway: end the empty message
            smtp.getreply()
        if m_code != 250:
            return self._refused(m_code, m_text, "mail")
        if r_code not in (250, 251):
            return self._refused(r_code, r_text, "rcpt")
        return None if d_code == 354 else self._refused(d_code, d_text, "data")

    def _refused(self, code: int, text: bytes, stage: str) -> Reply:
        """A refusal before the body: reset the transaction so the connection can go on."""
        reply = Reply(code, _reply_text(text), stage)
        if code in {421, -1}:
            self._abandon(self._smtp)
            self._smtp = None
            if code == -1:
                raise ConnectionLost(reply.text or "connection closed", after_body=False)
            return reply
        try:
            if self._smtp is not None:  # always, on the send that got the refusal
                self._smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._abandon(self._smtp)
            self._smtp = None
        return reply


# --------------------------------------------------------------------------- outbox


class OutboxTransport(BaseTransport):
    """Writes each message as an .eml file: the default when no SMTP server is set."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, mail_from: str, rcpt: str, data: bytes) -> Reply:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransportError(
                f"cannot create outbox folder {self.folder}: {exc.strerror}"
            ) from None
        safe = re.sub(r"[^A-Za-z0-9.@_-]", "_", rcpt)[:100]
        name = f"{os.getpid()}-{next(_outbox_sequence):07d}-{safe}.eml"
        path = self.folder / name
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as exc:
            raise TransportError(f"cannot write to outbox {self.folder}: {exc.strerror}") from None
        return Reply(250, f"written to {path}")


# --------------------------------------------------------------------------- memory


@dataclass
class SentMessage:
    mail_from: str
    rcpt: str
    data: bytes


Responder = Callable[[str, str, bytes], Reply]


@dataclass
class MemoryTransport(BaseTransport):
    """Keeps messages in a list, for unit tests; `responder` may answer or raise instead."""

    responder: Responder | None = None
    sent: list[SentMessage] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def send(self, mail_from: str, rcpt: str, data: bytes) -> Reply:
        reply = self.responder(mail_from, rcpt, data) if self.responder else Reply(250, "OK")
        if reply.ok:
            with self._lock:
                self.sent.append(SentMessage(mail_from, rcpt, data))
        return reply


# --------------------------------------------------------------------------- factory

TransportFactory = Callable[[], BaseTransport]


def transport_factory(settings: Settings) -> TransportFactory:
    """What `newsletter send` uses: SMTP when NEWSLETTER_SMTP_URL is set, else the outbox
    folder, only when NEWSLETTER_OUTBOX asks for it (never a silent fallback)."""
    smtp = settings.smtp
    if smtp is None:

        def outbox() -> BaseTransport:
            settings.require(destination=True)  # neither set: a ConfigError naming both
            return OutboxTransport(cast(Path, settings.outbox))  # set: require() raised otherwise

        return outbox
    return lambda: SMTPTransport(
        smtp, timeout=settings.smtp_timeout, final_reply_timeout=settings.smtp_data_timeout
    )


def describe_destination(settings: Settings) -> str:
    if settings.smtp is None:
        return f"outbox folder {settings.outbox.resolve() if settings.outbox else '(unset)'}"
    return f"SMTP server {settings.smtp.display}"
