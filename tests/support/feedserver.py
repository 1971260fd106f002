"""A real HTTP server on 127.0.0.1 for the feed-fetching tests (no mocks).

    with FeedServer() as server:
        server.route("/feed", body=b"<rss .../>", etag='"v1"')
        fetch_feed(server.url("/feed"))

Routes answer with a fixed status, headers and body; an ETag or
Last-Modified on a route makes it answer conditional requests with 304. Every
request's headers are recorded so tests can check what the client sent.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/rss+xml; charset=UTF-8"
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    gzip: bool = False
    #: seconds between two bytes of the body: a server that trickles its answer
    trickle: float = 0.0
    #: trickle the status line and headers too, not only the body
    trickle_headers: bool = False


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # http.server's naming
        self.server.requests.append((self.path, dict(self.headers.items())))
        route = self.server.routes.get(self.path)
        if route is None:
            self._answer(
                Route(status=404, body=b"<html>Not found</html>", content_type="text/html")
            )
        elif self._not_modified(route):
            self.send_response(304)
            if route.etag:
                self.send_header("ETag", route.etag)
            self.end_headers()
        else:
            self._answer(route)

    def _not_modified(self, route: Route) -> bool:
        if route.etag and self.headers.get("If-None-Match") == route.etag:
            return True
        since = self.headers.get("If-Modified-Since")
        return bool(route.last_modified and since == route.last_modified)

    def _answer(self, route: Route) -> None:
        body = gzip.compress(route.body) if route.gzip else route.body
        if route.trickle:
            self._trickle(route, body)
            return
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(body)))
        if route.gzip:
            self.send_header("Content-Encoding", "gzip")
        if route.etag:
            self.send_header("ETag", route.etag)
        if route.last_modified:
            self.send_header("Last-Modified", route.last_modified)
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self, route: Route, body: bytes) -> None:
        """One byte every `route.trickle` seconds until done, the client leaves or we stop."""
        head = [f"HTTP/1.1 {route.status} Trickle", f"Content-Type: {route.content_type}"]
        head += [f"Content-Length: {len(body)}", "Connection: close"]
        if route.etag:
            head.append(f"ETag: {route.etag}")
        if route.last_modified:
            head.append(f"Last-Modified: {route.last_modified}")
        head += [f"{name}: {value}" for name, value in route.headers.items()]
        header_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        self.close_connection = True
        if not route.trickle_headers:
            self.wfile.write(header_bytes)
            header_bytes = b""
        stopping = self.server.stopping
        try:
            for byte in header_bytes + body:
                if stopping.wait(route.trickle):
                    return
                self.wfile.write(bytes([byte]))
        except OSError:
            return  # the client gave up: what a deadline is for

    def log_message(self, format: str, *args: object) -> None:  # http.server's parameter name
        """Keep test output quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Route]
    requests: list[tuple[str, dict[str, str]]]
    stopping: threading.Event


class FeedServer:
    """A threaded http.server on an ephemeral port, stopped on exit.

    `tls=True` serves https with a certificate for 127.0.0.1 from a throw-away CA
    (trustme), written to `ca_file`: a client trusts it when SSL_CERT_FILE names it.
    """

    def __init__(self, *, tls: bool = False, scratch: Path | None = None) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self.scheme = "https" if tls else "http"
        self.ca_file: Path | None = None
        if tls:
            import trustme  # test dependency, only needed for TLS servers

            ca = trustme.CA()
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1").configure_cert(context)
            self.ca_file = (scratch or Path(tempfile.mkdtemp(prefix="feedserver-"))) / "ca.pem"
            ca.cert_pem.write_to_path(str(self.ca_file))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.routes = {}
        self._server.requests = []
        self._server.stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FeedServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.stopping.set()  # ends any trickling answer
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # an IPv4 server's address, never bytes
        return f"{self.scheme}://{host}:{port}{path}"

    def route(self, path: str, **options: object) -> Route:
        route = Route(**options)  # type: ignore[arg-type]
        self._server.routes[path] = route
        return route

    def redirect(self, path: str, target: str, status: int = 301) -> None:
        self.route(path, status=status, content_type="text/html", headers={"Location": target})

    @property
    def requests(self) -> list[tuple[str, dict[str, str]]]:
        return self._server.requests


class SilentServer:
    """Accepts TCP connections (the kernel's backlog does) but never answers."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(8)

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._socket.close()

    def url(self, path: str = "/feed") -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}{path}"


def closed_port_url(path: str = "/feed") -> str:
    """A URL on a port that was free a moment ago: connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
