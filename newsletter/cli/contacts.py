"""`newsletter import` and `newsletter subscribers ...`: thin commands over the core.

Each command calls one core function and prints its result; errors are
NewsletterErrors, turned into one line and exit 1 by the `main` group.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from newsletter.cli.app import App, main, pass_app
from newsletter.csvformats import estimate_rows
from newsletter.errors import SubscriberError as ExportError
from newsletter.importer import import_contacts
from newsletter.models import SubscriberStatus
from newsletter.subscribers import (
    add_subscriber,
    export_csv,
    forget_subscriber,
    list_subscribers,
    remove_subscriber,
)

PROGRESS_FROM_ROWS = 20_000  # smaller files finish before a bar is worth showing


@main.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the rejected rows, with a reason column, to this CSV file.",
)
@click.option("--source", help="Provenance to record (default: the file name).")
@pass_app
def import_command(
    app: App, file: Path, dry_run: bool, rejects: Path | None, source: str | None
) -> None:
    """Import contacts from a CSV export (Mailchimp, Ghost, Substack, listmonk, Excel...).

    Nobody who unsubscribed, bounced or complained is ever made active again.
    """
    engine = app.engine
    total = estimate_rows(file) if file.is_file() else 0
    if total < PROGRESS_FROM_ROWS or not sys.stderr.isatty():
        report = import_contacts(engine, file, dry_run=dry_run, source=source, rejects_path=rejects)
    else:
        with click.progressbar(length=total, label="Importing", file=sys.stderr) as bar:
            done = 0

            def progress(rows: int) -> None:
                nonlocal done
                bar.update(rows - done)
                done = rows

            report = import_contacts(
                engine,
                file,
                dry_run=dry_run,
                source=source,
                rejects_path=rejects,
                progress=progress,
            )
    click.echo("\n".join(report.lines()))


@main.group()
def subscribers() -> None:
    """Manage subscribers one by one."""


@subscribers.command("add")
@click.argument("email")
@click.option("--name", help="Display name.")
@pass_app
def add_command(app: App, email: str, name: str | None) -> None:
    """Add EMAIL as an active subscriber (never reactivates someone who left)."""
    result = add_subscriber(app.engine, email, name)
    click.echo(result.message, err=not result.active)


@subscribers.command("remove")
@click.argument("email")
@pass_app
def remove_command(app: App, email: str) -> None:
    """Unsubscribe EMAIL (the row is kept, so an import cannot bring them back)."""
    click.echo(remove_subscriber(app.engine, email).message)


@subscribers.command("list")
@click.option("--status", type=click.Choice(SubscriberStatus.ALL), help="Only this status.")
@pass_app
def list_command(app: App, status: str | None) -> None:
    """List subscribers: email, status, name (tab-separated)."""
    for sub in list_subscribers(app.engine, status):
        click.echo(f"{sub.email}\t{sub.status}\t{sub.name or ''}")


@subscribers.command("export")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def export_command(app: App, file: Path | None) -> None:
    """Export every subscriber as CSV to FILE (standard output by default)."""
    if file is None:
        count = export_csv(app.engine, sys.stdout)
        click.echo(f"Exported {count} subscribers.", err=True)
        return
    part = file.with_name(file.name + ".part")
    try:
        with part.open("w", encoding="utf-8", newline="") as out:
            count = export_csv(app.engine, out)
        part.replace(file)
    except OSError as exc:
        raise ExportError(f"cannot write {file}: {exc.strerror or exc}") from None
    finally:
        part.unlink(missing_ok=True)
    click.echo(f"Exported {count} subscribers to {file}.")


@subscribers.command("forget")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def forget_command(app: App, email: str, yes: bool) -> None:
    """Erase EMAIL's personal data (GDPR); only a hash stays so it is never mailed again."""
    if not yes:
        click.confirm(f"Erase {email} and its delivery history for good?", abort=True)
    click.echo(forget_subscriber(app.engine, email).message)
