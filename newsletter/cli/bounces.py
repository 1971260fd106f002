"""`newsletter bounces import|fetch`: read bounce and complaint reports, apply the policy.

The mailbox code (and its mail parsing) is imported when a command runs, not for --help.
"""

from __future__ import annotations

from pathlib import Path

import click

from newsletter.cli.app import App, main, pass_app

#: `bounces.mailbox.DEFAULT_FOLDER`, spelt here so --help need not import the mailbox
#: code (tests/cli/test_startup.py checks that the two agree).
DEFAULT_FOLDER = "Processed"


@main.group()
def bounces() -> None:
    """Bounces and complaints that arrive after sending (NEWSLETTER_BOUNCE_ADDRESS)."""


@bounces.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@pass_app
def import_command(app: App, path: Path) -> None:
    """Read an mbox file or a Maildir folder of bounce reports.

    Hard bounces and complaints suppress at once, soft bounces after 3 within
    30 days; 5.7.x refusals are listed for you and suppress nobody. Reports
    already read are skipped, so importing the same mailbox again changes nothing.
    """
    from newsletter.bounces.mailbox import import_path

    report = import_path(app.engine, app.settings, path)
    click.echo("\n".join(report.lines()))


@bounces.command("fetch")
@click.option(
    "--folder",
    default=DEFAULT_FOLDER,
    show_default=True,
    help="IMAP folder that processed reports are moved to (created if missing).",
)
@pass_app
def fetch_command(app: App, folder: str) -> None:
    """Read the IMAP mailbox NEWSLETTER_BOUNCE_IMAP_URL over TLS.

    Reports are moved to FOLDER once recorded; anything else stays for a person to read.
    """
    from newsletter.bounces.mailbox import fetch_imap

    report = fetch_imap(app.engine, app.settings, folder=folder)
    click.echo("\n".join(report.lines()))
