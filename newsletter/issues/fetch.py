"""Fetch the feed's bytes from a file or an http(s) URL (no parsing, no DB writes).

Conditional GETs (ETag / Last-Modified), timeouts on connect, reads and the whole
download, a size cap, and a clear `FeedError` for each way a fetch can fail:
an HTML page (a site's home page, a CDN's challenge) is caught here by its
content type and root. The advice such an error gives (the page's own feed
link, a missing https://) comes from feedhints.py.
"""

from __future__ import annotations

import functools
import http.client
import io
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from newsletter.errors import FeedError
from newsletter.issues.feedhints import (
    CHALLENGE_HINT,
    html_page_hint,
    missing_file_error,
    unsupported_address_error,
)
from newsletter.issues.sanitize import clean_text, display_url

DEFAULT_USER_AGENT = "newsletter/0.1 (RSS-to-email newsletter)"
MAX_FEED_BYTES = 20 * 1024 * 1024
_CHUNK = 64 * 1024
_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.5"
)


@dataclass(frozen=True)
class FetchResult:
    data: bytes | None  # None when the server answered 304 Not Modified
    url: str  # final URL (after redirects) or the file path
    etag: str | None = None
    last_modified: str | None = None


# --------------------------------------------------------------------- fetch


def fetch_feed(
    source: str,
    *,
    timeout: float = 20.0,
    deadline: float | None = None,
    etag: str | None = None,
    last_modified: str | None = None,
    user_agent: str = DEFAULT_USER_AGENT,
) -> FetchResult:
    """The raw bytes of a feed from an http(s) URL, a file:// URL or a path.

    `timeout` bounds each wait (connect, each read); `deadline` (default three
    times `timeout`) bounds the whole fetch, headers and body included, so a
    server that trickles bytes cannot hang a cron job.
    """
    source = (source or "").strip()
    if not source:
        raise FeedError("No feed given: set NEWSLETTER_FEED_URL to a URL or a file path.")
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        budget = _Deadline(3 * timeout if deadline is None else deadline, timeout)
        return _fetch_http(source, budget, etag, last_modified, user_agent)
    if scheme == "file":
        return _read_file(Path(urllib.request.url2pathname(urlsplit(source).path)))
    if len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise unsupported_address_error(source)
    return _read_file(Path(source), source)


def _read_file(path: Path, given: str | None = None) -> FetchResult:
    if path.is_dir():
        raise FeedError(f"{path} is a directory, not a feed file.")
    if not path.exists():
        raise missing_file_error(path, given)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FEED_BYTES + 1)
    except OSError as exc:
        raise FeedError(f"Cannot read feed file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FEED_BYTES:
        raise _too_large(path)
    return FetchResult(data=data, url=str(path))


class _DeadlinePassed(TimeoutError):
    """The whole fetch ran past its deadline (raised by a socket wait)."""


class _Deadline:
    """The whole fetch's time budget: every socket wait gets at most what is left."""

    def __init__(self, seconds: float, per_wait: float) -> None:
        self.seconds = seconds
        self.per_wait = per_wait
        self.end = time.monotonic() + seconds

    def wait(self) -> float:
        """The timeout for the next socket wait; raises once the budget is spent."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise _DeadlinePassed(f"the fetch took longer than {self.seconds:g} seconds")
        return min(self.per_wait, left)

    def passed(self) -> bool:
        return time.monotonic() >= self.end


class _DeadlineSocket:
    """The connection's socket, each send and read bounded by the fetch's deadline.

    http.client reads headers and body through `makefile("rb")`; a per-read
    timeout alone lets a server sending one byte a second hold a fetch for
    as long as it likes, so every read here waits only what is left.
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline
        self._readers = 0
        self._closed = False

    def recv_into(self, buffer: Any) -> int:
        self._sock.settimeout(self._deadline.wait())
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            if self._deadline.passed():
                raise _DeadlinePassed(
                    f"the fetch took longer than {self._deadline.seconds:g} seconds"
                ) from None
            raise

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.wait())
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: object, **kwargs: object) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError(f"unsupported makefile mode {mode!r}")
        self._readers += 1
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        """Like socket.close: the fd stays open while a reader made by makefile is."""
        self._closed = True
        if not self._readers:
            self._sock.close()

    def reader_closed(self) -> None:
        self._readers -= 1
        if self._closed and not self._readers:
            self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineReader(io.RawIOBase):
    """The raw stream under the response's buffered reader."""

    def __init__(self, sock: _DeadlineSocket) -> None:
        super().__init__()
        self._owner = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._owner.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._owner.reader_closed()


class _DeadlineHTTPConnection(http.client.HTTPConnection):
    """A connection whose connect and every later socket wait get what is left of the deadline."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        self.timeout = self._deadline.wait()  # bounds the TCP connect (and the TLS handshake)
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self._deadline)


class _DeadlineHTTPSConnection(_DeadlineHTTPConnection, http.client.HTTPSConnection):
    """The same over TLS: HTTPSConnection.connect wraps the socket before we wrap it again."""


class _DeadlineHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Opens http and https URLs on deadline-bound connections.

    A subclass of both urllib handlers, so `build_opener` leaves its own two out.
    """

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection(_DeadlineHTTPConnection), req)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection(_DeadlineHTTPSConnection), req)

    def _connection(
        self, kind: type[_DeadlineHTTPConnection]
    ) -> functools.partial[_DeadlineHTTPConnection]:
        """`kind` with this fetch's deadline bound, as urllib's do_open wants a class."""
        return functools.partial(kind, deadline=self._deadline)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never to file:, ftp: or anything else."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise FeedError(f"{display_url(req.full_url)} redirected to a non-HTTP address.")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_http(
    url: str, deadline: _Deadline, etag: str | None, last_modified: str | None, user_agent: str
) -> FetchResult:
    shown = display_url(url)
    headers = {"User-Agent": user_agent, "Accept": _ACCEPT, "Accept-Encoding": "gzip, deflate"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    opener = urllib.request.build_opener(_HttpOnlyRedirects, _DeadlineHandler(deadline))
    timeout = deadline.per_wait
    try:
        # only http(s) gets here (fetch checks the scheme, redirects are held to it too)
        request = urllib.request.Request(url, headers=headers)  # noqa: S310
        with opener.open(request, timeout=timeout) as response:
            final_url = response.geturl()
            raw = _read_capped(response, deadline, shown)
            data = _decode_body(raw, response.headers.get("Content-Encoding", ""), shown)
            answer_etag = response.headers.get("ETag")
            answer_modified = response.headers.get("Last-Modified")
            content_type = response.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 304:
            return FetchResult(
                data=None,
                url=exc.geturl() or url,
                etag=exc.headers.get("ETag") or etag,
                last_modified=exc.headers.get("Last-Modified") or last_modified,
            )
        html_page = exc.headers.get_content_type() == "text/html" if exc.headers else False
        raise FeedError(
            f"{shown} answered HTTP {exc.code} {exc.reason or ''}".rstrip() + ".",
            hint=CHALLENGE_HINT if html_page and exc.code in (403, 429, 503) else None,
        ) from None
    except urllib.error.URLError as exc:
        raise FeedError(f"Cannot reach {shown}: {_describe(exc.reason, timeout)}") from None
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise FeedError(f"Cannot read {shown}: {_describe(exc, timeout)}") from None
    except ValueError as exc:
        raise FeedError(f"Invalid feed URL {shown}: {exc}") from None
    if content_type == "text/html" and _root_element(data) not in _FEED_ROOTS:
        raise FeedError(
            f"{shown} returned an HTML page, not a feed.", hint=html_page_hint(data, final_url)
        )
    return FetchResult(data=data, url=final_url, etag=answer_etag, last_modified=answer_modified)


def _read_capped(response: Any, deadline: _Deadline, shown: str) -> bytes:
    """The body, refusing anything over MAX_FEED_BYTES or past the deadline."""
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > MAX_FEED_BYTES:
        raise _too_large(shown)
    buffer = io.BytesIO()
    while chunk := response.read(_CHUNK):
        buffer.write(chunk)
        if buffer.tell() > MAX_FEED_BYTES:
            raise _too_large(shown)
        if deadline.passed():
            raise _DeadlinePassed(f"the fetch took longer than {deadline.seconds:g} seconds")
    return buffer.getvalue()


def _decode_body(raw: bytes, encoding: str, shown: str) -> bytes:
    """Undo gzip/deflate, with the size cap applied to the *decompressed* body."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise FeedError(f"{shown} used an unsupported Content-Encoding: {encoding}.")
    wbits = zlib.MAX_WBITS | 32 if encoding != "deflate" else zlib.MAX_WBITS
    try:
        try:
            inflater = zlib.decompressobj(wbits)
            data = inflater.decompress(raw, MAX_FEED_BYTES + 1)
        except zlib.error:
            if encoding != "deflate":
                raise
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, no header
            data = inflater.decompress(raw, MAX_FEED_BYTES + 1)
    except zlib.error as exc:
        raise FeedError(f"{shown} sent a corrupt {encoding} body: {exc}.") from None
    if len(data) > MAX_FEED_BYTES:
        raise _too_large(shown)
    return data


def _describe(reason: object, timeout: float) -> str:
    """A short human reason for a network failure."""
    if isinstance(reason, _DeadlinePassed):
        return f"{reason} (timed out; the server sends too slowly)."
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} seconds (timed out)."
    if isinstance(reason, socket.gaierror):
        return "the host name could not be resolved (DNS lookup failed)."
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused."
    if isinstance(reason, ssl.SSLError):
        return f"TLS error ({getattr(reason, 'reason', None) or 'handshake failed'})."
    if isinstance(reason, OSError) and reason.strerror:
        return f"{reason.strerror}."
    return clean_text(str(reason) or type(reason).__name__) + "."


def _too_large(what: object) -> FeedError:
    return FeedError(f"{what} is larger than {MAX_FEED_BYTES // (1024 * 1024)} MB.")


_FEED_ROOTS = frozenset({"rss", "feed", "rdf", "rdf:rdf", "channel"})
_PROLOG = re.compile(
    rb"^(?:\s+|<\?[^>]*\?>|<!--.*?-->|<!DOCTYPE[^>\[]*(?:\[.*?\])?\s*>)*", re.S | re.I
)
_ROOT = re.compile(rb"<([A-Za-z][\w:.-]*)")


def _root_element(data: bytes) -> str | None:
    """The document's root element name, lower-cased (None if there is none)."""
    head = data[:65536].removeprefix(b"\xef\xbb\xbf")
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16: decode to sniff
        head = head.decode("utf-16", errors="ignore").encode("utf-8", errors="ignore")
    prolog = _PROLOG.match(head)  # it matches everywhere (all its parts are optional)
    match = _ROOT.match(head, prolog.end() if prolog else 0)
    return match.group(1).decode("ascii").lower() if match else None
