"""`newsletter doctor`: is this installation ready to send mail that arrives?

`run_doctor` returns a `DoctorReport`: one `Check` per line (OK / WARN / FAIL,
one sentence, a hint); the CLI only prints it. Nothing is ever sent: the SMTP
probe stops after MAIL FROM and RSET. DNS goes through an injectable dnspython
resolver with short timeouts.

    report.py      Status, Check, DoctorReport
    local.py       settings, NEWSLETTER_BASE_URL, the outbox folder
    smtp.py        the SMTP probe
    dnsrecords.py  the DNS lookup (resolver, TXT records) the three below share
    spf.py         the From domain's SPF record and the DNS lookups it costs
    dkim.py        the key `send` signs with, and its published DKIM record
    dmarc.py       the DMARC policy of the From domain (or its organisational domain)

May import: mail/ (dkim, verp) and the foundation. Never sending/,
subscribers/, bounces/ (siblings) or the edges.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import dns.resolver

from newsletter.config import Settings
from newsletter.doctor.dkim import check_dkim
from newsletter.doctor.dmarc import check_dmarc
from newsletter.doctor.dnsrecords import TxtLookup, make_resolver, parse_dns_server
from newsletter.doctor.local import (
    check_base_url,
    check_outbox,
    check_settings,
    load_settings_leniently,
)
from newsletter.doctor.report import Check, DoctorReport, Status
from newsletter.doctor.smtp import check_smtp
from newsletter.doctor.spf import check_spf
from newsletter.errors import ConfigError
from newsletter.mail.verp import envelope_sender

__all__ = [
    "Check",
    "DoctorReport",
    "Status",
    "load_settings_leniently",
    "make_resolver",
    "parse_dns_server",
    "run_doctor",
]

SMTP_TIMEOUT_CAP = 15.0  # a doctor answers quickly even when NEWSLETTER_SMTP_TIMEOUT is long


def run_doctor(
    settings: Settings,
    *,
    config_errors: Mapping[str, str] | None = None,
    dns_server: str | None = None,
    resolver: dns.resolver.Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> DoctorReport:
    """Every check, in the order a user fixes them: settings, links, mail server, DNS.

    `config_errors` are the settings `load_settings_leniently` had to drop; a
    check that depends on one of them says so instead of running on a default.
    `dns_server` (HOST:PORT) or `resolver` replace the system resolver.
    """
    errors = dict(config_errors or {})
    checks: list[Check] = [check_settings(settings, errors)]
    if "NEWSLETTER_BASE_URL" not in errors:
        checks.append(check_base_url(settings))
    if "NEWSLETTER_SMTP_URL" in errors:
        checks.append(_skipped("smtp", "NEWSLETTER_SMTP_URL is malformed"))
    elif settings.smtp is not None:
        checks.append(
            check_smtp(
                settings.smtp,
                mail_from=_mail_from(settings),
                timeout=min(settings.smtp_timeout, SMTP_TIMEOUT_CAP),
                ssl_context=ssl_context,
            )
        )
    elif settings.outbox is not None:
        checks.append(check_outbox(settings.outbox))
    else:
        checks.append(
            Check(
                "smtp",
                Status.FAIL,
                "neither NEWSLETTER_SMTP_URL nor NEWSLETTER_OUTBOX is set: `send` refuses to run",
                "set NEWSLETTER_SMTP_URL (or NEWSLETTER_OUTBOX to write .eml files to a folder)",
            )
        )
    checks.extend(_dns_checks(settings, errors, dns_server, resolver))
    return DoctorReport(tuple(checks))


def _mail_from(settings: Settings) -> str | None:
    """The envelope sender `send` uses (without its VERP token), if it is known."""
    try:
        return envelope_sender(settings, None)
    except ConfigError:
        return None


def _skipped(name: str, reason: str) -> Check:
    return Check(name, Status.WARN, f"not checked: {reason}", "fix the settings first")


def _dns_checks(
    settings: Settings,
    errors: Mapping[str, str],
    dns_server: str | None,
    resolver: dns.resolver.Resolver | None,
) -> list[Check]:
    names = ("spf", "dkim", "dmarc")
    if settings.from_address is None:
        why = "NEWSLETTER_FROM is " + ("malformed" if "NEWSLETTER_FROM" in errors else "not set")
        return [_skipped(name, why) for name in names]
    if resolver is None:
        try:
            resolver = make_resolver(dns_server)
        except dns.resolver.NoResolverConfiguration:
            resolver = None  # TxtLookup then reports "no DNS server configured"
    lookup = TxtLookup(resolver)
    domain = settings.from_address.domain
    checks = [check_spf(lookup, domain)]
    if any(name in errors for name in ("NEWSLETTER_DKIM_SELECTOR", "NEWSLETTER_DKIM_PRIVATE_KEY")):
        checks.append(_skipped("dkim", "a DKIM setting is malformed"))
    else:
        checks.append(check_dkim(lookup, settings))
    checks.append(check_dmarc(lookup, domain))
    return checks
