"""`newsletter import` and `newsletter subscribers ...`: thin commands over the core.

Each command calls one core function and prints its result; errors are
NewsletterErrors, turned into one line and exit 1 by the `main` group. The core
(SQLAlchemy, the models, the importer) is imported when a command runs, not for --help.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import click

from newsletter.cli.app import App, main, pass_app
from newsletter.errors import SubscriberError as ExportError

PROGRESS_FROM_ROWS = 20_000  # smaller files finish before a bar is worth showing

#: `models.SubscriberStatus.ALL`, spelt here so `subscribers list --help` need not import
#: the models (tests/cli/test_startup.py checks that the two agree).
SUBSCRIBER_STATUSES = ("pending", "active", "unsubscribed", "bounced", "complained")


def _duration(seconds: float) -> str:
    seconds = max(int(seconds + 0.5), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_progress(label: str, done: int, total: int, elapsed: float, width: int = 20) -> str:
    """One line of the import's progress: bar, rows done of total, percent, rate, ETA.

    Once done reaches total it reads 100% with the time taken instead of an ETA.
    """
    total = max(total, done, 1)
    share = done / total
    filled = int(share * width)
    rate = done / elapsed if elapsed > 0 else 0.0
    if done >= total:
        tail = f"in {_duration(elapsed)}"
    elif rate > 0:
        tail = f"ETA {_duration((total - done) / rate)}"
    else:
        tail = "ETA --:--"
    return (
        f"{label:<9}[{'#' * filled}{'-' * (width - filled)}] {done:,}/{total:,} rows "
        f"{int(share * 100):3d}%  {rate:,.0f} rows/s  {tail}"
    )


class ImportProgress:
    """The import's progress on a terminal: a line per stage, redrawn at most 10 times/s."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.stage: str | None = None
        self.last_at = clock()  # the previous call: where a new stage's clock starts
        self.started = self.last_at
        self.drawn: tuple[float, int, int] | None = None
        self.width = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if stage != self.stage:
            self.close()
            self.stage, self.started, self.drawn = stage, self.last_at, None
        self.last_at = now
        if self.drawn is not None and (
            self.drawn[1:] == (done, total) or (done < total and now - self.drawn[0] < 0.1)
        ):
            return
        self.drawn = (now, done, total)
        # the importer's stages are "checking" and "writing": shown as Checking, Writing
        line = format_progress(stage.capitalize(), done, total, now - self.started)
        self.stream.write("\r" + line.ljust(self.width))
        self.width = len(line)
        self.stream.flush()

    def close(self) -> None:
        """End the current line (the bar stays on screen, at 100% when the stage finished)."""
        if self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


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
    The whole file is checked before anything is written; then contacts are
    written in small batches, so the web pages keep working during a large
    import. If it is stopped midway, run the same import again to finish it.
    """
    from newsletter.subscribers.csvformats import estimate_rows
    from newsletter.subscribers.importer import import_contacts

    engine = app.engine
    show = sys.stderr.isatty() and file.is_file() and estimate_rows(file) >= PROGRESS_FROM_ROWS
    bar = ImportProgress(sys.stderr) if show else None
    try:
        report = import_contacts(
            engine, file, dry_run=dry_run, source=source, rejects_path=rejects, progress=bar
        )
    finally:
        if bar is not None:
            bar.close()
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
    from newsletter.subscribers.manage import add_subscriber

    result = add_subscriber(app.engine, email, name)
    click.echo(result.message, err=not result.active)


@subscribers.command("remove")
@click.argument("email")
@pass_app
def remove_command(app: App, email: str) -> None:
    """Unsubscribe EMAIL (the row is kept, so an import cannot bring them back)."""
    from newsletter.subscribers.manage import remove_subscriber

    click.echo(remove_subscriber(app.engine, email).message)


@subscribers.command("list")
@click.option("--status", type=click.Choice(SUBSCRIBER_STATUSES), help="Only this status.")
@pass_app
def list_command(app: App, status: str | None) -> None:
    """List subscribers: email, status, name (tab-separated)."""
    from newsletter.subscribers.manage import list_subscribers

    for sub in list_subscribers(app.engine, status):
        click.echo(f"{sub.email}\t{sub.status}\t{sub.name or ''}")


@subscribers.command("export")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def export_command(app: App, file: Path | None) -> None:
    """Export every subscriber as CSV to FILE (standard output by default)."""
    from newsletter.subscribers.manage import export_csv

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
    from newsletter.subscribers.manage import forget_subscriber

    if not yes:
        click.confirm(f"Erase {email} and its delivery history for good?", abort=True)
    click.echo(forget_subscriber(app.engine, email).message)
