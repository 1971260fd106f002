"""What every command shares: settings loaded once, the database opened lazily,
and the single place where a NewsletterError becomes a message and exit code 1.

Imports only click and the error classes at the top: `newsletter --help` and every
`newsletter COMMAND --help` pass through here, and must not pay for SQLAlchemy,
Alembic or the settings parser (tests/cli/test_startup.py checks it).
"""

from __future__ import annotations

import atexit
import gc
import sys
from collections.abc import Callable
from functools import cached_property, update_wrapper
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from newsletter.errors import DatabaseMissing, MissingSettings, NewsletterError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from newsletter.config import Settings

#: The commands that add people: only they may create a SQLite database. Any other
#: command given a file that is not there was run from the wrong folder (cron) or
#: with a wrong URL, and an empty new database would hide that.
CREATES_DATABASE = frozenset({"import", "subscribers add", "serve"})
#: SQLite's page cache per connection where its default (2 MiB) is wrong for a command: a
#: send reads each row about once, through several pooled connections, and with the
#: default its peak memory grew with the list (5 MB more at 100,000 readers than at 5,000).
SQLITE_PAGE_CACHE_KIB = {"send": 256}

# At exit every object still alive is frozen, so the interpreter's teardown no longer walks
# them in its garbage collections (about 0.2 s after a send, which has SQLAlchemy, pydantic
# and premailer loaded). An exit handler, not a step of each command: a process that runs
# commands in-process (tests through click's CliRunner) keeps collecting between them.
atexit.register(gc.freeze)


class App:
    """The context object handed to every command."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.command = ""  # e.g. "subscribers add"; set by `pass_app`

    @cached_property
    def engine(self) -> Engine:
        """The database, migrated; created only by the commands of CREATES_DATABASE."""
        from newsletter.db import open_database, sqlite_file

        url = self.settings.database_url
        if self.command not in CREATES_DATABASE:
            path = sqlite_file(url)
            if path is not None and not path.exists():
                raise missing_database(path)
        return open_database(url, page_cache_kib=SQLITE_PAGE_CACHE_KIB.get(self.command))

    def trial_engine(self) -> Engine:
        """For runs that record nothing (`send --preview/--to/--dry-run`): the database when
        it exists, else an empty in-memory one, so staff can try the look before any
        subscriber exists without a database file appearing."""
        from newsletter.db import scratch_database, sqlite_file

        path = sqlite_file(self.settings.database_url)
        if path is not None and not path.exists():
            return scratch_database()
        return self.engine


def missing_database(path: Path) -> DatabaseMissing:
    """The error for a SQLite file that is not there: where we looked, and from where."""
    return DatabaseMissing(
        f"no database at {path.resolve()}: NEWSLETTER_DATABASE_URL names {path}, "
        f"and the working directory is {Path.cwd()}",
        hint=(
            "Run the command from the folder that holds the database, or set "
            "NEWSLETTER_DATABASE_URL to its absolute path; `newsletter import` and "
            "`newsletter subscribers add` create a new one."
        ),
    )


F = TypeVar("F", bound=Callable[..., Any])


def pass_app(f: F) -> F:
    """Like click.make_pass_decorator(App), and records which command runs (for the
    database policy and for error messages)."""

    def new_func(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        app = ctx.find_object(App)
        if app is None:
            raise RuntimeError("no App in the click context")
        app.command = command_name(ctx)
        return ctx.invoke(f, app, *args, **kwargs)

    return update_wrapper(new_func, f)  # type: ignore[return-value]


def command_name(ctx: click.Context) -> str:
    """'subscribers add' for `newsletter subscribers add` (the program name left out)."""
    names: list[str] = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def _sentence(text: str) -> str:
    """One line, ending in a full stop unless it already ends a sentence."""
    text = " ".join(text.split())
    return text if text.endswith((".", "?", "!")) else text + "."


def error_line(exc: NewsletterError, command: str) -> str:
    """The one line a NewsletterError becomes: the message, then the hint, no nesting.

    Missing settings are named all at once, with the command that needs them and the
    .env file that was read (or that none was found in the working directory).
    """
    if isinstance(exc, MissingSettings):
        from newsletter.config import describe_env_file

        plural = len(exc.names) > 1
        them = "them" if plural else "it"
        where = describe_env_file()
        fix = (
            f"set {them} there or in the environment"
            if where.startswith("Read ")
            else f"set {them} in the environment or in a .env file there"
        )
        message = (
            f"missing setting{'s' if plural else ''} for `newsletter {command}`: "
            f"{', '.join(exc.names)}"
        )
        parts = [message, exc.detail or "", f"{where}; {fix} (see .env.example)"]
    else:
        parts = [exc.message, exc.hint or ""]
    return "Error: " + " ".join(_sentence(p) for p in parts if p.strip())


def fail(exc: NewsletterError, command: str = "") -> None:
    """Print a NewsletterError as one line (message, then the hint) and exit 1."""
    click.secho(error_line(exc, command), fg="red", err=True)
    sys.exit(1)


class NewsletterGroup(click.Group):
    """A click group that maps NewsletterError to a clean exit 1, once for all commands."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            app = ctx.obj if isinstance(ctx.obj, App) else None
            fail(exc, (app.command if app else "") or ctx.invoked_subcommand or "")
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=NewsletterGroup)
@click.version_option(package_name="newsletter")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Turn the site's new stories into one email to every subscriber."""
    if ctx.invoked_subcommand == "doctor":
        return  # doctor loads the settings itself: a malformed one is a FAIL line, not an exit
    from newsletter.config import load_settings

    ctx.obj = App(load_settings())
