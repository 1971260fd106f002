"""What every command shares: settings loaded once, the database opened lazily,
and the single place where a NewsletterError becomes a message and exit code 1."""

from __future__ import annotations

import sys
from functools import cached_property
from typing import Any

import click
from sqlalchemy.engine import Engine

from newsletter.config import Settings, load_settings
from newsletter.db import open_database
from newsletter.errors import NewsletterError


class App:
    """The context object handed to every command."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def engine(self) -> Engine:
        return open_database(self.settings.database_url)


pass_app = click.make_pass_decorator(App)


def fail(exc: NewsletterError) -> None:
    """Print a NewsletterError as one line (message, then the hint) and exit 1."""
    message = " ".join(exc.message.split())
    hint = f" ({exc.hint})" if exc.hint else ""
    click.secho(f"Error: {message}{hint}", fg="red", err=True)
    sys.exit(1)


class NewsletterGroup(click.Group):
    """A click group that maps NewsletterError to a clean exit 1, once for all commands."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            fail(exc)
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
    ctx.obj = App(load_settings())
