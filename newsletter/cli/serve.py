"""`newsletter serve`: the subscriber pages (unsubscribe, signup, archive) under uvicorn."""

from __future__ import annotations

import click

from newsletter.cli.app import App, main, pass_app


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port."
)
@pass_app
def serve(app: App, host: str, port: int) -> None:
    """Serve one-click unsubscribe, signup with double opt-in and the web archive.

    Put it behind a reverse proxy that serves NEWSLETTER_BASE_URL over HTTPS;
    the proxy's X-Forwarded-For is trusted from 127.0.0.1 (uvicorn's
    FORWARDED_ALLOW_IPS), so the signup rate limit sees the visitor's address.
    """
    import uvicorn

    from newsletter.web import create_app, log_config

    web_app = create_app(app.settings, engine=app.engine)
    click.echo(
        f"Serving {app.settings.list_title} on http://{host}:{port} "
        f"(public address {app.settings.base_url}); press Ctrl+C to stop."
    )
    uvicorn.run(
        web_app,
        host=host,
        port=port,
        log_config=log_config(),
        proxy_headers=True,
        server_header=False,
    )
