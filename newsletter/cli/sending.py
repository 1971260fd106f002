"""`newsletter send` and `newsletter status`: thin wrappers that print core results.

The core is imported when a command runs: `status` loads only the report and the
database, never the send path; --help loads neither.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from newsletter.cli.app import App, main, pass_app

if TYPE_CHECKING:
    from datetime import timedelta

    from newsletter.config import Settings
    from newsletter.sending.deliver import IssueResult
    from newsletter.sending.options import SendOptions, SendResult


@contextmanager
def _progress_bar(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A click progress bar with position, rate and ETA, on a terminal only: on a pipe
    (cron) click would still print the label, and a successful run must leave stderr empty."""
    if not sys.stderr.isatty():
        yield lambda steps: None
        return
    started = time.monotonic()
    done = 0

    with click.progressbar(
        length=total,
        label=label,
        show_pos=True,
        show_eta=True,
        item_show_func=lambda rate: rate,
        file=sys.stderr,
    ) as bar:

        def advance(steps: int) -> None:
            nonlocal done
            done += steps
            elapsed = time.monotonic() - started
            bar.update(steps, f"{done / elapsed:,.0f} msg/s" if elapsed > 0 else None)

        yield advance


def _took(seconds: float) -> str:
    """How long an issue took this run: "in 3.2 s", "in 4 min 5 s", "in 2 h 13 min"."""
    if seconds < 59.95:
        return f"in {seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"in {minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"in {hours} h {minutes} min"


def _headline(done: IssueResult) -> str:
    """One sentence per issue: what this run did with it, and how long it took."""
    r = done.report
    took = _took(done.elapsed)
    if r.stopped is not None:  # the error line on stderr says why
        line = f"Issue {done.issue_id} stopped: {r.sent:,} sent {took}"
        if done.left:
            many = "delivery stays" if done.left == 1 else "deliveries stay"
            line += f"; {done.left:,} {many} pending, and the next `newsletter send` resumes them"
        return line + "."
    if done.resumed:
        label = f"Resumed issue {done.issue_id} (stopped earlier)"
    else:
        label = f"Sent issue {done.issue_id}"
    others = [
        (r.deferred, "deferred"),
        (r.failed, "failed"),
        (r.bounced, "bounced"),
        (r.unknown, "unknown"),
        (r.skipped, "skipped (they left before their turn)"),
    ]
    if r.sent and not any(n for n, _ in others):
        readers = "subscriber" if r.sent == 1 else "subscribers"
        if done.resumed:
            return f"{label}: sent to {r.sent:,} more {readers} {took}."
        return f"{label} to {r.sent:,} {readers} {took}."
    counts = ", ".join(f"{n:,} {what}" for n, what in [(r.sent, "sent"), *others] if n)
    return f"{label} {took}: {counts or 'no delivery was due'}."


def _print_result(app: App, result: SendResult, options: SendOptions) -> None:
    from newsletter.mail.transport import describe_destination

    if options.dry_run or options.preview or options.to:
        if result.stories:
            if result.latest:
                what = "preview" if options.preview else "test copy"
                click.echo(
                    f"No new stories since the last issue: the {what} shows the feed's "
                    f"latest {len(result.stories)}:"
                )
            else:
                click.echo(f"{len(result.stories)} stories would go in the next issue:")
            for story in result.stories:
                date = story.published_at.strftime("%Y-%m-%d") if story.published_at else "----"
                click.echo(f"  {date}  {story.title}")
        else:
            click.echo("No new stories.")
        if options.dry_run:
            click.echo(f"{result.recipients} active subscribers would receive it.")
            click.echo("Dry run: nothing was sent and nothing was written.")
    for note in result.notes:
        click.echo(note)
    for done in result.issues:
        click.echo(_headline(done))
        click.echo(f"  Subject: {done.subject}")
        if done.report.sent:
            click.echo(f"  Delivered to the {describe_destination(app.settings)}.")
        if done.others_sending and result.error is None:
            click.echo("  Other workers are still sending this issue; it finishes with them.")
        elif not done.finished and result.error is None:
            click.echo("  Some deliveries are deferred; run `newsletter send` later to retry them.")
    if result.nothing_new is not None:
        # after what was resumed: one story, in the order it happened
        if not result.issues:
            click.echo(f"Nothing new to send: {result.nothing_new}.")
        elif result.nothing_new == "no new stories":
            click.echo("No new stories since, so no new issue.")
        else:
            click.echo(f"No new issue: {result.nothing_new}.")
    if result.not_yet is not None:  # NEWSLETTER_MIN_INTERVAL has not passed: exit 0
        click.echo(result.not_yet)


def _interval(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    """--min-interval 7d: parsed as NEWSLETTER_MIN_INTERVAL is; a bad one is a usage error."""
    if value is None:
        return None
    from newsletter.errors import ConfigError
    from newsletter.settingvalues import parse_interval

    try:
        return parse_interval(value, "--min-interval")
    except ConfigError as exc:
        raise click.BadParameter(exc.message.partition(": ")[2]) from None


def _send_owed_mail(app: App, settings: Settings) -> None:
    """Welcome emails (and confirmations) that the web worker could not send: sending/
    may not import subscribers/, so the edge calls it after the send. `settings` are the
    configured ones: a welcome describes NEWSLETTER_STORY_CONTENT, not this run's --content."""
    from newsletter.subscribers.confirming import send_owed_mail

    owed = send_owed_mail(app.engine, settings)
    welcomes, confirmations = owed.welcomes.sent, owed.confirmations.sent
    if welcomes or confirmations:
        parts = [
            f"{n} {what}{'' if n == 1 else 's'}"
            for n, what in ((welcomes, "welcome email"), (confirmations, "confirmation email"))
            if n
        ]
        click.echo(f"Also sent {' and '.join(parts)} owed to new subscribers.")


@main.command()
@click.option("--dry-run", is_flag=True, help="Show what would be sent; send and write nothing.")
@click.option(
    "--preview",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the next issue's HTML to FILE; send nothing.",
)
@click.option("--to", "to", metavar="ADDRESS", help="Send a test copy to one address only.")
@click.option("--baseline", is_flag=True, help="Record the current stories as sent, send nothing.")
@click.option("--max-stories", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option("--min-stories", type=click.IntRange(1, 100), default=1, show_default=True)
@click.option("--retry-unknown", is_flag=True, help="Resend deliveries whose outcome is unknown.")
@click.option("--retry-failed", is_flag=True, help="Retry deliveries that failed.")
@click.option(
    "--content",
    type=click.Choice(["summary", "full", "title"], case_sensitive=False),
    help="What each story shows, this run only (also --preview and --to) "
    "[NEWSLETTER_STORY_CONTENT].",
)
@click.option(
    "--issue-per",
    type=click.Choice(["send", "story"], case_sensitive=False),
    help="One digest of the new stories, or one issue per story [NEWSLETTER_ISSUE_PER].",
)
@click.option(
    "--min-interval",
    metavar="INTERVAL",
    callback=_interval,
    help="No new issue until this long after the last one: 12h, 1d, 7d, or off "
    "[NEWSLETTER_MIN_INTERVAL].",
)
@click.option("-v", "--verbose", is_flag=True, help="Also print where the time went, by phase.")
@pass_app
def send(
    app: App,
    dry_run: bool,
    preview: Path | None,
    to: str | None,
    baseline: bool,
    max_stories: int,
    min_stories: int,
    retry_unknown: bool,
    retry_failed: bool,
    content: str | None,
    issue_per: str | None,
    min_interval: timedelta | None,
    verbose: bool = False,
) -> None:
    """Send the feed's new stories to every active subscriber."""
    configured = app.settings
    if content is not None:  # one run's content mode: the core reads settings.story_content
        import dataclasses

        app.settings = dataclasses.replace(app.settings, story_content=content.lower())
    gc.disable()  # the send's imports make only objects that live until exit: a
    try:  # collection during them (about 50 ms) frees nothing
        from newsletter import phases
        from newsletter.sending.options import SendOptions
        from newsletter.sending.run import check_settings, run_send
    finally:
        # Nor would any later one: frozen, they are never walked again (the send's own
        # collections took 60-120 ms at 5,000 subscribers, most of it walking them).
        # Thawed when the command ends, for a process that runs several (tests).
        gc.enable()
        if not gc.get_freeze_count():  # a caller's own freeze stays as it is
            gc.freeze()
            click.get_current_context().call_on_close(gc.unfreeze)

    if verbose:
        phases.enable()
        age = phases.process_age()
        if age is not None:
            phases.add(phases.START_UP, age)

    if to is not None:
        from newsletter.mail.addresses import normalise_address

        to = normalise_address(to).email
    options = SendOptions(
        dry_run=dry_run,
        preview=preview,
        to=to,
        baseline=baseline,
        max_stories=max_stories,
        min_stories=min_stories,
        retry_unknown=retry_unknown,
        retry_failed=retry_failed,
        issue_per=issue_per.lower() if issue_per else None,
        min_interval=min_interval,
    )
    check_settings(app.settings, options)  # all missing settings first, then the database
    trial = dry_run or preview is not None or to is not None  # records nothing
    with phases.phase(phases.OPEN_DATABASE):
        engine = app.trial_engine() if trial else app.engine
    result = run_send(engine, app.settings, options, progress=_progress_bar)
    _print_result(app, result, options)
    if not (trial or baseline) and result.error is None:
        _send_owed_mail(app, configured)
    if verbose:
        for line in phases.report():
            click.echo(f"  {line}")
    if result.error is not None:
        raise result.error


@main.command()
@click.option("--issues", "limit", type=click.IntRange(1, 100), default=5, show_default=True)
@pass_app
def status(app: App, limit: int) -> None:
    """Subscribers by status, and the last issues with their delivery counts."""
    from newsletter.models import DeliveryStatus
    from newsletter.status import status_report

    report = status_report(app.engine, limit=limit)
    click.echo("Subscribers:")
    for name, count in report.subscribers.items():
        click.echo(f"  {name:<13}{count:>8}")
    if report.unmatched_bounces:
        click.echo(
            f"Bounce reports matching no delivery: {report.unmatched_bounces} (nobody suppressed)"
        )
    if report.welcomes_owed:
        many = "email is" if report.welcomes_owed == 1 else "emails are"
        click.echo(
            f"{report.welcomes_owed} welcome {many} owed to new subscribers "
            "(`newsletter serve` retries; the next `newsletter send` sends them)."
        )
    if report.sending:
        click.echo(f"A send is running now ({report.sending}).")
    if report.workers:
        click.echo(f"Send workers active now: {len(report.workers)}")
        for w in report.workers:
            issue = f"issue #{w.issue_id}" if w.issue_id is not None else "starting"
            click.echo(
                f"  {w.host} pid {w.pid}  {issue}  {w.sent} sent  {w.rate:,.0f} msg/s"
                f"  (heartbeat {w.heartbeat_at:%H:%M:%S} UTC)"
            )
    if not report.issues:
        click.echo("No issues sent yet.")
        return
    click.echo("Issues:")
    for line in report.issues:
        when = line.created_at.strftime("%Y-%m-%d %H:%M")
        click.echo(f"  #{line.issue_id}  {when}  {line.status:<8} {line.subject}")
        counts = ", ".join(f"{n} {s}" for s, n in line.counts.items() if n)
        click.echo(f"       {counts or 'no deliveries'}")
        reports = ", ".join(f"{n} {kind}" for kind, n in line.bounces.items() if n)
        if reports:
            click.echo(f"       bounce reports: {reports}")
        for kind, error in line.last_errors.items():
            if kind == DeliveryStatus.PENDING:  # why the last run stopped
                click.echo(f"       last error (deliveries still pending): {error}")
            else:
                click.echo(f"       last {kind}: {error}")
