"""`newsletter dkim keygen`: make a signing key and say exactly what to publish and set.

For senders whose relay does not sign: the key stays on this machine, the
public half goes into DNS under the selector, and two settings turn signing on.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import click

from newsletter.cli.app import App, main, pass_app
from newsletter.errors import ConfigError

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def _selector(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _SELECTOR.fullmatch(value):
        raise click.BadParameter(f"{value!r} is not a DNS label like 'news2026'")
    return value


@main.group("dkim")
def dkim_group() -> None:
    """DKIM signing keys (for senders whose SMTP relay does not sign)."""


@dkim_group.command("keygen")
@click.option(
    "--selector",
    callback=_selector,
    help="DNS selector (default: NEWSLETTER_DKIM_SELECTOR, else news<year><month>).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key file to write (default: dkim-<selector>.pem here); never overwritten.",
)
@click.option("--domain", help="Signing domain (default: the domain of NEWSLETTER_FROM).")
@pass_app
def keygen(app: App, selector: str | None, out: Path | None, domain: str | None) -> None:
    """Write a 2048-bit RSA private key and print the DNS TXT record to publish.

    Without NEWSLETTER_FROM, pass --domain.
    """
    from newsletter.mail.dkimkey import KEY_BITS, generate_key  # cryptography: only when run

    settings = app.settings
    selector = selector or settings.dkim_selector or f"news{datetime.now(UTC):%Y%m}"
    if domain is None:
        if settings.from_address is None:
            raise ConfigError(
                "NEWSLETTER_FROM is not set: the key signs for its domain",
                hint="Set it in the environment or in .env, or pass --domain.",
            )
        domain = settings.from_address.domain
    out = out or Path(f"dkim-{selector}.pem")
    made = generate_key(out, selector=selector, domain=domain)
    click.echo(f"Wrote a {KEY_BITS}-bit RSA private key to {out} (mode 600). Keep it private.")
    click.echo()
    click.echo("1. Publish this DNS TXT record (the quoted strings form one value;")
    click.echo("   DNS allows at most 255 characters per string):")
    click.echo()
    click.echo(f"   {made.zone_line}")
    click.echo()
    click.echo("2. Once it resolves, set (in the environment or .env):")
    click.echo()
    click.echo(f"   NEWSLETTER_DKIM_PRIVATE_KEY={out.resolve()}")
    click.echo(f"   NEWSLETTER_DKIM_SELECTOR={made.selector}")
    click.echo()
    click.echo(f"   Every message is then signed for {made.domain} (rsa-sha256, relaxed/relaxed).")
