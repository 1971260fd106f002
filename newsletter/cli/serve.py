"""`newsletter serve`: the subscriber pages (unsubscribe, signup, archive) under uvicorn.

The listening socket is bound here, before uvicorn starts, so a port in use is one
line and exit 1. uvicorn's limits are set so that half-open or idle connections
cannot pile up: uvicorn itself has no timeout for a request's headers, so the HTTP
protocol below closes a connection whose request line and headers do not arrive in
time (a client that sends half a request line and then waits for ever).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

import click

from newsletter.cli.app import App, main, pass_app
from newsletter.errors import NewsletterError

if TYPE_CHECKING:  # imported when the server starts, not for --help
    import asyncio
    import socket

#: Seconds an idle keep-alive connection stays open between requests.
KEEP_ALIVE_SECONDS = 5
#: Seconds a request's line and headers may take to arrive (default of --header-timeout).
HEADER_TIMEOUT_SECONDS = 10.0
#: Largest request line plus headers accepted (h11 refuses more with 400).
MAX_HEADER_BYTES = 16 * 1024
#: Connections plus running requests at once; beyond it new requests get 503.
MAX_CONCURRENCY = 200


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers take too long.

    The deadline starts when the connection opens, and again at the first byte of each
    next request on a kept-alive connection; it ends when a request's headers are complete
    (uvicorn then starts a new request cycle).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _cycle_when_armed: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of a next request
            super().data_received(data)
            if self._deadline is not None and self.cycle is not self._cycle_when_armed:
                self._disarm()  # a new request cycle: its headers are complete

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._cycle_when_armed = self.cycle
            self._deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.cycle is self._cycle_when_armed and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a NewsletterError saying why not (in use...)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise NewsletterError(
            f"cannot listen on {host}: {exc.strerror}", hint="Check --host."
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise NewsletterError(
                f"port {port} on {host} is already in use",
                hint="Stop the program listening there, or choose another port with --port.",
            ) from None
        if exc.errno == errno.EACCES:
            raise NewsletterError(
                f"not allowed to listen on port {port}",
                hint="Ports below 1024 need privileges: use a higher port behind the proxy.",
            ) from None
        raise NewsletterError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port."
)
@click.option(
    "--header-timeout",
    default=HEADER_TIMEOUT_SECONDS,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds a request's line and headers may take before the connection is closed.",
)
@pass_app
def serve(app: App, host: str, port: int, header_timeout: float) -> None:
    """Serve one-click unsubscribe, signup with double opt-in and the web archive.

    Put it behind a reverse proxy that serves NEWSLETTER_BASE_URL over HTTPS;
    the proxy's X-Forwarded-For is trusted from 127.0.0.1 (uvicorn's
    FORWARDED_ALLOW_IPS), so the signup rate limit sees the visitor's address.
    """
    import uvicorn

    from newsletter.web.app import create_app, log_config

    app.settings.require("from_address")  # before the port and the database
    sock = bind(host, port)
    try:
        web_app = create_app(app.settings, engine=app.engine)
    except BaseException:
        sock.close()
        raise
    settings = app.settings
    if settings.smtp is None and settings.outbox is None:
        click.echo(
            "Warning: neither NEWSLETTER_SMTP_URL nor NEWSLETTER_OUTBOX is set: "
            "signups cannot be sent their confirmation email.",
            err=True,
        )
    click.echo(
        f"Serving {settings.list_title} on {_url(host, port)} "
        f"(public address {settings.base_url}); press Ctrl+C to stop."
    )
    options: dict[str, Any] = {
        "log_config": log_config(),
        "proxy_headers": True,
        "server_header": False,
        "http": header_timeout_protocol(header_timeout),
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "limit_concurrency": MAX_CONCURRENCY,
    }
    config = uvicorn.Config(web_app, host=host, port=port, **options)
    uvicorn.Server(config).run(sockets=[sock])
