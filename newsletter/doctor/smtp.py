"""The SMTP probe: connect, EHLO, STARTTLS, AUTH, MAIL FROM and RSET; nothing is sent."""

from __future__ import annotations

import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from newsletter.doctor.local import is_loopback
from newsletter.doctor.report import Check, Status
from newsletter.settingvalues import SmtpConfig


def _reply(code: int, text: bytes | str) -> str:
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(raw.split())}"[:200]


def _extensions(smtp: smtplib.SMTP, offered_starttls: bool, security: str) -> str:
    size = smtp.esmtp_features.get("size", "").strip()
    size_text = f"{int(size) / 1e6:.1f} MB" if size.isdigit() and int(size) else "yes"
    parts = [
        "STARTTLS " + ("n/a (smtps)" if security == "tls" else "yes" if offered_starttls else "no"),
        "PIPELINING " + ("yes" if smtp.has_extn("pipelining") else "no"),
        "SIZE " + (size_text if smtp.has_extn("size") else "no"),
    ]
    return ", ".join(parts)


class _ProbeFailed(Exception):
    """A step of the SMTP probe failed; carries the hint for the user."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class _RemembersHost(smtplib.SMTP):
    """smtplib takes the TLS server name from the constructor's host; we connect later
    (to read the greeting, which the constructor discards), so `connect` records it."""

    def connect(
        self,
        host: str = "localhost",
        port: int = 0,
        source_address: Any = None,  # smtplib's own type for it is private to its stubs
    ) -> tuple[int, bytes]:
        self._host = host
        return super().connect(host, port, source_address)


class _SMTP(_RemembersHost):
    pass


class _SMTPSSL(_RemembersHost, smtplib.SMTP_SSL):
    pass


@dataclass
class _Probe:
    """What the probe learnt so far, so a failure can still report the greeting."""

    config: SmtpConfig
    context: ssl.SSLContext
    step: str = "connecting"
    found: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def run(self, smtp: smtplib.SMTP, mail_from: str | None) -> Check | None:
        """The conversation; a Check when the server refused MAIL FROM, else None."""
        cfg = self.config
        code, text = smtp.connect(cfg.host, cfg.port)
        self.found.append(f'greeting "{_reply(code, text)}"')
        if code != 220:
            raise _ProbeFailed("the server did not greet with 220", "check the host and port")
        self.step = "EHLO"
        code, text = smtp.ehlo()
        if code != 250:
            raise _ProbeFailed(f"EHLO refused: {_reply(code, text)}", "check the server")
        offered_starttls = smtp.has_extn("starttls")
        if cfg.security == "starttls":
            if not offered_starttls:
                raise _ProbeFailed(
                    "the server does not offer STARTTLS",
                    "use smtps:// if the port expects TLS at once (465), else check the port",
                )
            self.step = "STARTTLS"
            smtp.starttls(context=self.context)
            smtp.ehlo()
        self.found.append(_extensions(smtp, offered_starttls, cfg.security))
        if cfg.security == "none" and not is_loopback(cfg.host):
            if cfg.username:
                self.warnings.append("the password and every email travel unencrypted")
            elif offered_starttls:
                self.warnings.append("mail travels unencrypted though the server offers STARTTLS")
        if cfg.username:
            self.step = "AUTH"
            if not smtp.has_extn("auth"):
                raise _ProbeFailed(
                    "the server offers no AUTH, but NEWSLETTER_SMTP_URL has a user name",
                    "remove the user name, or use smtp+starttls:// if it offers AUTH after TLS",
                )
            smtp.login(cfg.username, cfg.password or "")
            self.found.append(f"logged in as {cfg.username}")
        if mail_from:
            self.step = "MAIL FROM"
            code, text = smtp.mail(mail_from)
            if code >= 400:
                return self._sender_refused(mail_from, code, text)
            self.found.append(f"accepts MAIL FROM:<{mail_from}>")
            smtp.rset()
        return None

    def _sender_refused(self, mail_from: str, code: int, text: bytes) -> Check:
        if code == 530:
            hint = "the server wants a login: put user:password in NEWSLETTER_SMTP_URL"
        else:
            hint = (
                "the server does not let this sender send: check the SMTP user, "
                "NEWSLETTER_FROM / NEWSLETTER_BOUNCE_ADDRESS and the provider's sender rules"
            )
        return Check(
            "smtp",
            Status.FAIL if code >= 500 else Status.WARN,
            self.summary(f"MAIL FROM:<{mail_from}> refused: {_reply(code, text)}"),
            hint + "; nothing was sent",
        )

    def summary(self, reason: str | None = None) -> str:
        return f"{self.config.display}: " + "; ".join([*self.found, *([reason] if reason else [])])

    def failed(self, reason: str, hint: str) -> Check:
        return Check(
            "smtp",
            Status.FAIL,
            self.summary(reason),
            (hint + "; " if hint else "") + "nothing was sent",
        )


def check_smtp(
    config: SmtpConfig,
    *,
    mail_from: str | None = None,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> Check:
    """Connect, EHLO, STARTTLS and AUTH as configured, try MAIL FROM, then RSET: nothing is sent."""
    probe = _Probe(config, ssl_context or ssl.create_default_context())
    smtp: smtplib.SMTP = (
        _SMTPSSL(timeout=timeout, context=probe.context)
        if config.security == "tls"
        else _SMTP(timeout=timeout)
    )
    polite = False  # QUIT only after a clean conversation
    try:
        refused = probe.run(smtp, mail_from)
        polite = True
    except _ProbeFailed as exc:
        return probe.failed(str(exc), exc.hint)
    except socket.gaierror as exc:
        return probe.failed(
            f"cannot resolve host {config.host!r}: {exc.strerror}", "check the host"
        )
    except ConnectionRefusedError:
        return probe.failed(
            "connection refused",
            "is the server running, and are the host and port in NEWSLETTER_SMTP_URL right?",
        )
    except TimeoutError:
        return probe.failed(
            f"no answer within {timeout:g}s during {probe.step}", "check host, port, firewall"
        )
    except ssl.SSLCertVerificationError as exc:
        return probe.failed(
            f"TLS certificate not trusted: {exc.verify_message}",
            f"the server's certificate must be valid for {config.host} and signed by a trusted CA",
        )
    except ssl.SSLError as exc:
        return probe.failed(
            f"TLS failed during {probe.step}: {exc.reason or exc}",
            "smtps:// is TLS at once (port 465), smtp+starttls:// upgrades (port 587)",
        )
    except smtplib.SMTPAuthenticationError as exc:
        return probe.failed(
            f"login refused for {config.username!r}: {_reply(exc.smtp_code, exc.smtp_error)}",
            "check user and password in NEWSLETTER_SMTP_URL (percent-encode special characters)",
        )
    except smtplib.SMTPServerDisconnected:
        return probe.failed(f"the server closed the connection during {probe.step}", "")
    except (smtplib.SMTPException, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        return probe.failed(f"{probe.step} failed: {detail}", "check NEWSLETTER_SMTP_URL")
    finally:
        _hang_up(smtp, polite=polite)
    if refused is not None:
        return refused
    if probe.warnings:
        return Check(
            "smtp",
            Status.WARN,
            probe.summary("but " + "; ".join(probe.warnings)),
            "use smtp+starttls:// (port 587) or smtps:// (port 465)",
        )
    return Check("smtp", Status.OK, probe.summary())


def _hang_up(smtp: smtplib.SMTP, *, polite: bool) -> None:
    """QUIT after a clean conversation; after a failure just close (QUIT could wait again)."""
    if polite:
        try:
            smtp.quit()
            return
        except (smtplib.SMTPException, OSError):
            pass
    smtp.close()
