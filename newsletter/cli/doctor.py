"""`newsletter doctor`: prints the checks of `newsletter.doctor.run_doctor`, one per line.

`newsletter.doctor` (dnspython, the SMTP client) is imported when the command runs.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from newsletter.cli.app import main
from newsletter.errors import ConfigError

if TYPE_CHECKING:
    from newsletter.doctor import Check

#: Colour per check status, keyed by `newsletter.doctor.Status` values.
_COLOURS = {"OK": "green", "WARN": "yellow", "FAIL": "red"}


def _dns_server(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Validate HOST:PORT early, as a usage error (exit 2)."""
    if value:
        from newsletter.doctor import parse_dns_server

        try:
            parse_dns_server(value)
        except ConfigError as exc:
            raise click.BadParameter(exc.message) from None
    return value


def _line(check: Check) -> str:
    """STATUS  name  summary  Hint: hint; no closing period, which would cling to a record."""
    hint = f"  Hint: {check.hint}" if check.hint else ""
    return f"{check.status.value:<4}  {check.name:<8}  {check.summary}{hint}"


@main.command("doctor")
@click.option(
    "--dns-server",
    metavar="HOST:PORT",
    envvar="NEWSLETTER_DNS_SERVER",
    callback=_dns_server,
    hidden=True,
    help="Ask this DNS server instead of the system resolver (tests, split-horizon DNS).",
)
def doctor(dns_server: str | None) -> None:
    """Check settings, the SMTP server and the From domain's SPF, DKIM and DMARC records.

    Sends nothing. One line per check: OK, WARN or FAIL with a hint; the exit
    code is 1 when any check FAILs, else 0.
    """
    from newsletter.doctor import Status, load_settings_leniently, run_doctor

    # loaded here, not taken from App: a malformed setting is a FAIL line, not an abort
    settings, errors = load_settings_leniently()
    report = run_doctor(settings, config_errors=errors, dns_server=dns_server)
    for check in report.checks:
        click.secho(_line(check), fg=_COLOURS[check.status.value])
    counts = ", ".join(f"{report.count(s)} {s.value}" for s in Status)
    click.echo(f"doctor: {counts}; nothing was sent.")
    sys.exit(0 if report.ok else 1)
