"""`newsletter form`: print the signup form to paste into the site (a thin wrapper).

Imports only click at the top: the template engine loads when the command runs.
"""

from __future__ import annotations

import click

from newsletter.cli.app import App, main, pass_app


@main.command()
@click.option(
    "--style",
    type=click.Choice(["inline", "none"], case_sensitive=False),
    default="inline",
    show_default=True,
    help="Inline styles that inherit the site's fonts, or none (the site's own CSS).",
)
@pass_app
def form(app: App, style: str) -> None:
    """Print an HTML signup form to paste into the site (a WordPress Custom HTML block)."""
    from newsletter.subscribers.form import signup_form

    click.echo(signup_form(app.settings, style=style.lower()), nl=False)
